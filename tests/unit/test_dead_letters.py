"""The daemon's dead-letter file: it may be deleted, rotated or unwritable; the daemon goes on
and no record is silently lost (a failed write used to stop the daemon, a deleted file to
swallow every later record)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from structlog.testing import capture_logs

from orderwatch.connectors import sinks
from orderwatch.connectors.sinks import DeadLetterSink, dead_letter_json
from orderwatch.events import Decoder, Rejected
from orderwatch.logs import RateLimited


def bad(n: int, reason: str = "malformed_json") -> Rejected:
    return Rejected(reason, "detail", "file:e.jsonl", str(n), b"{oops %d" % n)


def positions(path: Path) -> list[str]:
    return [json.loads(line)["position"] for line in path.read_text().splitlines()]


def test_a_deleted_or_rotated_file_is_started_again_at_its_path(tmp_path: Path) -> None:
    path = tmp_path / "state" / "dead-letters.jsonl"
    part = DeadLetterSink(path).build_part("dl", "dead-letters", None)
    part.write_batch([bad(1)])
    path.unlink()
    part.write_batch([bad(2)])
    assert positions(path) == ["2"]
    path.rename(tmp_path / "state" / "dead-letters.jsonl.1")
    part.write_batch([bad(3)])
    part.close()
    assert positions(path) == ["3"]
    assert positions(tmp_path / "state" / "dead-letters.jsonl.1") == ["2"]


def test_records_wait_while_the_file_cannot_be_written(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    path.mkdir()  # something in the way: an OSError on every write
    part = DeadLetterSink(path).build_part("dl", "dead-letters", None)
    part.write_batch([bad(1)])
    part.write_batch([bad(2)])
    path.rmdir()
    part.write_batch([bad(3)])
    part.close()
    assert positions(path) == ["1", "2", "3"]


def test_an_oversized_line_is_marked_truncated() -> None:
    cut = Decoder(max_bytes=256).decode(b'{"pad":"' + b"x" * 5000 + b'"}', "s", "1")
    assert isinstance(cut, Rejected) and cut.reason == "oversized"
    assert dead_letter_json(cut)["truncated"] is True
    assert "truncated" not in dead_letter_json(bad(1))


def test_the_daemon_logs_rejections_rate_limited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CONTRACT §1: bad input "is logged at a rate-limited level"; nothing logged it. The first
    of each reason is logged, then one line per interval with the count held back, and a
    replay (which sums them up) logs none."""
    clock = [1000.0]
    monkeypatch.setattr("orderwatch.logs.time", SimpleNamespace(monotonic=lambda: clock[0]))
    monkeypatch.setattr(sinks, "_rejections", RateLimited(sinks.log, interval=10.0))
    daemon = DeadLetterSink(tmp_path / "d.jsonl", log_them=True).build_part("dl", "d", None)
    replay = DeadLetterSink(tmp_path / "r.jsonl").build_part("dl", "r", None)
    with capture_logs() as logged:
        daemon.write_batch([bad(i) for i in range(500)] + [bad(7, "unknown_status")] * 3)
        replay.write_batch([bad(i, "oversized") for i in range(5)])
        clock[0] += 9
        daemon.write_batch([bad(600)])
        clock[0] += 2
        daemon.write_batch([bad(601)])
    assert [(e["reason"], e["position"], e.get("suppressed_since_last")) for e in logged] == [
        ("malformed_json", "0", None),
        ("unknown_status", "7", None),
        ("malformed_json", "601", 500),
    ]
    assert {e["log_level"] for e in logged} == {"warning"}
    assert all("raw" not in e and e["file"] == str(tmp_path / "d.jsonl") for e in logged)
    daemon.close()
    replay.close()
    assert len(positions(tmp_path / "d.jsonl")) == 505


def test_a_failing_index_loses_no_dead_letter_and_stops_nothing(tmp_path: Path) -> None:
    """The per-order index is a view: whatever goes wrong there, the file gets every record."""

    class Broken:
        def add(self, record: object) -> None:
            raise RuntimeError("bug")

    path = tmp_path / "d.jsonl"
    part = DeadLetterSink(path, index=Broken()).build_part("dl", "d", None)  # type: ignore[arg-type]
    with capture_logs() as logged:
        part.write_batch([bad(1), bad(2)])
        part.write_batch([bad(3)])
    part.close()
    assert positions(path) == ["1", "2", "3"]
    assert [e["event"] for e in logged] == ["dead letter not indexed for its order's timeline"]
    assert logged[0]["error"] == "RuntimeError('bug')"
