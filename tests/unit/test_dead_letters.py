"""The daemon's dead-letter file: it may be deleted, rotated or unwritable; the daemon goes on
and no record is silently lost (a failed write used to stop the daemon, a deleted file to
swallow every later record)."""

from __future__ import annotations

import json
from pathlib import Path

from orderwatch.connectors.sinks import DeadLetterSink, dead_letter_json
from orderwatch.events import Decoder, Rejected


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
