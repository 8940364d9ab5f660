"""The order dataflow through bytewax: 1 and 2 workers, bad input, and the replay CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource, run_main
from hypothesis import given, settings
from hypothesis import strategies as st

from orderwatch.connectors.raw import RawChunk
from orderwatch.domain.alert import AlertChange
from orderwatch.pipelines.orders import Outputs, build_flow
from orderwatch.replay import sort_alert_file
from orderwatch.runtime import Runtime
from orderwatch.simulate import Simulator
from tests.factories import BASE, HOUR
from tests.strategies import rules_config, streams
from tests.unit.test_properties import reference

CFG = rules_config()


@pytest.fixture(params=[1, 2], ids=["1-worker", "2-workers"])
def workers(request: pytest.FixtureRequest) -> int:
    return int(request.param)


def run_flow(
    lines: list[bytes], *, workers: int = 1, batch: int = 50
) -> tuple[list[AlertChange], list[Any], Runtime]:
    chunks = [RawChunk("test", i + 1, lines[i : i + batch]) for i in range(0, len(lines), batch)]
    alerts: list[tuple[str, AlertChange]] = []
    dead: list[Any] = []
    runtime = Runtime(shards=CFG.engine.shards)
    flow = build_flow(
        CFG,
        [TestingSource(chunks)],
        Outputs(TestingSink(alerts), TestingSink(dead)),
        runtime,
        live=False,
    )
    if workers == 1:
        run_main(flow)
    else:
        cli_main(flow, workers_per_process=workers)
    return sorted((a for _, a in alerts), key=AlertChange.sort_key), [d for _, d in dead], runtime


FAULTS = {
    "wms_push_lost": 0.05,
    "callback_delay": 0.05,
    "double_ship": 0.05,
    "status_jump": 0.05,
    "amount_mismatch": 0.05,
    "duplicate_callback": 0.1,
    "duplicate_payment": 0.05,
    "unpaid_shipment": 0.05,
    "logistics_stall": 0.05,
}


def simulated(orders_per_minute: float, hours: float, seed: int = 3) -> list[bytes]:
    """A deterministic realistic stream with faults (the product's simulator)."""
    sim = Simulator(
        seed=seed,
        start_ms=BASE,
        orders_per_minute=orders_per_minute,
        scenarios=FAULTS,
        orders_until_ms=BASE + int(hours * HOUR),
        access_logs_per_second=0.2,
    )
    return [orjson.dumps(e) for e in sim.events(until_ms=BASE + int((hours + 30) * HOUR))]


SAMPLE = simulated(2, 1)


def test_dataflow_matches_the_reference(workers: int) -> None:
    """Through bytewax the alerts are those of the one-tracker reference."""
    got, dead, runtime = run_flow(SAMPLE, workers=workers)
    assert got == reference(SAMPLE)
    assert dead == []
    assert len(runtime.trackers) == CFG.engine.shards


@settings(max_examples=8, deadline=None)
@given(lines=streams(max_orders=20), batch=st.integers(1, 100))
def test_any_batch_size_through_bytewax(lines: list[bytes], batch: int) -> None:
    """Batch size never changes the alerts."""
    assert run_flow(lines, batch=batch)[0] == reference(lines)


BAD_LINES = [
    (b'{"type":"order","ts":1794326400000,"order_id":"Z1"', "malformed_json"),
    (b'{"type":"order","ts":1794326400000,"status":"paid"}', "missing_field"),
    (b'{"type":"coupon","ts":1794326400000,"order_id":"Z2"}', "unknown_type"),
    (
        b'{"type":"order","ts":1794326400000,"order_id":"Z3","status":"teleported"}',
        "unknown_status",
    ),
    (
        b'{"type":"order","ts":"2026-11-11T00:00:00","order_id":"Z4","status":"paid"}',
        "naive_timestamp",
    ),
    (
        b'{"type":"order","ts":1794326400000,"order_id":"Z5","status":"paid","x":"'
        + b"y" * 70_000
        + b'"}',
        "oversized",
    ),
]


def test_bad_input_goes_to_dead_letters_and_loses_nothing_else(workers: int) -> None:
    """Bad lines land in the dead-letter output with reason and position; alerts are unchanged."""
    mixed = list(SAMPLE)
    positions = {}
    for k, (raw, reason) in enumerate(BAD_LINES):
        at = min(len(mixed), 3 + k * 7)
        mixed.insert(at, raw)
        positions[reason] = at + 1
    got, dead, _ = run_flow(mixed, workers=workers, batch=9)
    assert got == reference(SAMPLE)
    assert sorted(d.reason for d in dead) == sorted(r for _, r in BAD_LINES)
    for d in dead:
        assert d.source == "test"
    # positions are the 1-based line numbers in the mixed stream
    assert {d.reason: int(d.position) for d in dead} == positions


def _replay(events: Path, out: Path, *args: str, config: Path) -> str:
    """Run `orderwatch replay`; what it printed (timely prints connect retries to stdout)."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "orderwatch",
            "replay",
            str(events),
            "--config",
            str(config),
            "--alerts-out",
            str(out),
            "--dead-letters",
            str(out) + ".dead",
            "--quiet",
            *args,
        ],
        check=True,
        timeout=240,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return done.stdout


@pytest.fixture(scope="module")
def big_stream(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few thousand simulated orders with faults, as a file."""
    path = tmp_path_factory.mktemp("stream") / "events.jsonl"
    path.write_bytes(b"\n".join(simulated(6, 3, seed=5)) + b"\n")
    return path


@pytest.fixture(scope="module")
def rules_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import yaml

    from tests.strategies import RULES, STATUS_MAP

    path = tmp_path_factory.mktemp("cfg") / "rules.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "rules": RULES,
                "lateness": "60s",
                "engine": {"terminal_retention": "30m"},
                "status_map": STATUS_MAP,
            }
        )
    )
    return path


def test_replay_cli_is_identical_for_workers_processes_and_batches(
    big_stream: Path, rules_file: Path, tmp_path: Path
) -> None:
    """`orderwatch replay` writes byte-identical files for 1 worker, 2 workers, 2 processes."""
    base = tmp_path / "one.jsonl"
    _replay(big_stream, base, config=rules_file)
    content = base.read_bytes()
    assert content.count(b"\n") > 50
    for name, args in [
        ("two-workers", ["--workers", "2", "--batch-size", "7"]),
        ("two-processes", ["--processes", "2", "--batch-size", "333"]),
    ]:
        out = tmp_path / f"{name}.jsonl"
        printed = _replay(big_stream, out, *args, config=rules_file)
        assert out.read_bytes() == content, name
        # process 1 waited for process 0 to listen instead of paying timely's 1 s retry
        assert "error connecting" not in printed, printed


def test_bench_stage_split_does_the_replays_work(
    big_stream: Path, rules_file: Path, tmp_path: Path
) -> None:
    """`orderwatch.bench.stages` runs the replay's own steps: the same alerts, every line."""
    out = tmp_path / "a.jsonl"
    _replay(big_stream, out, config=rules_file)
    result = tmp_path / "stages.json"
    argv = [sys.executable, "-m", "orderwatch.bench.stages", str(big_stream)]
    subprocess.run(
        [*argv, "--config", str(rules_file), "--out", str(result)],
        check=True,
        timeout=240,
    )
    split = orjson.loads(result.read_bytes())
    replayed = out.read_bytes().count(b"\n")
    assert replayed > 50
    assert split["alert_changes"] == replayed
    assert split["lines"] == big_stream.read_bytes().count(b"\n")
    assert set(split["seconds"]) == {"read", "decode_route", "track"}
    assert all(s > 0 for s in split["seconds"].values())


def test_bench_profile_samples_a_real_replay(
    big_stream: Path, rules_file: Path, tmp_path: Path
) -> None:
    """py-spy samples a real replay from outside: it runs unchanged, and its samples land in
    the areas of the code that do the work."""
    from orderwatch.bench.profile import AREA_NAMES, profile

    plain = tmp_path / "plain.jsonl"
    _replay(big_stream, plain, config=rules_file)
    sampled = tmp_path / "sampled.jsonl"
    argv = [sys.executable, "-m", "orderwatch", "replay", str(big_stream), "--quiet"]
    argv += ["--config", str(rules_file), "--alerts-out", str(sampled)]
    argv += ["--dead-letters", str(tmp_path / "dead.jsonl")]
    p = profile(argv, tmp_path / "raw.txt", rate_hz=500)
    assert sampled.read_bytes() == plain.read_bytes()
    assert p["samples"] > 50, p
    assert p["errors"] is not None and p["errors"] < p["samples"] / 10, p
    assert set(p["areas"]) == set(AREA_NAMES)
    assert sum(p["areas"].values()) == pytest.approx(1.0)
    assert p["areas"]["track"] > 0 and p["areas"]["decode_route"] > 0, p["areas"]
    names = [f["function"] for f in p["functions"]]
    assert any("orderwatch/domain/tracker.py" in n for n in names), names
    assert all(0 < f["self"] <= f["total"] <= 1 for f in p["functions"])


def test_replay_output_lines_follow_the_contract(
    big_stream: Path, rules_file: Path, tmp_path: Path
) -> None:
    """Each line has status, labels, annotations, startsAt, endsAt and fingerprint."""
    out = tmp_path / "a.jsonl"
    _replay(big_stream, out, config=rules_file)
    for line in out.read_bytes().splitlines():
        a = orjson.loads(line)
        assert set(a) == {"status", "labels", "annotations", "startsAt", "endsAt", "fingerprint"}
        assert a["status"] in ("firing", "resolved")
        assert a["startsAt"].endswith("Z")
        assert {"alertname", "rule", "severity", "order_id"} <= set(a["labels"])
        if a["status"] == "resolved":
            assert a["endsAt"] >= a["startsAt"]


def test_sorting_the_alert_file_keeps_every_line_whole(tmp_path: Path) -> None:
    """Canonical order: time of the change, fingerprint, firing before resolved; every line
    kept byte for byte, a last line without its newline included."""

    def line(status: str, at: str, fp: str) -> bytes:
        ends = at if status == "resolved" else None
        starts = "2026-11-11T00:00:00.000Z" if status == "resolved" else at
        a = {"status": status, "startsAt": starts, "endsAt": ends, "fingerprint": fp}
        return orjson.dumps(a)

    first = line("firing", "2026-11-11T00:01:00.000Z", "aa")
    second = line("firing", "2026-11-11T00:02:00.000Z", "aa")
    same_time_later_fp = line("firing", "2026-11-11T00:02:00.000Z", "bb")
    resolved_at_same_time = line("resolved", "2026-11-11T00:02:00.000Z", "bb")
    path = tmp_path / "alerts.jsonl"
    path.write_bytes(
        b"\n".join([resolved_at_same_time, same_time_later_fp, second, first])  # no final \n
    )
    sort_alert_file(path)
    assert path.read_bytes() == b"".join(
        x + b"\n" for x in (first, second, same_time_later_fp, resolved_at_same_time)
    )
