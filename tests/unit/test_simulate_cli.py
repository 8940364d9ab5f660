"""Tests of `orderwatch simulate` (orderwatch.simulate.cli) through the real argument parser."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from orderwatch.cli import main
from orderwatch.simulate import SCENARIOS, Simulator
from orderwatch.simulate.cli import parse_scenarios, parse_start

START = 1_794_326_400_000  # 2026-11-11T00:00:00+08:00


def test_writes_the_simulator_stream_to_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`simulate --out FILE --events N` writes exactly the Simulator's first N events."""
    out = tmp_path / "events.jsonl"
    argv = ["simulate", "--out", str(out), "--events", "2000", "--seed", "3"]
    assert main([*argv, "--scenario", "double_ship=0.1"]) == 0
    lines = out.read_bytes().splitlines()
    sim = Simulator(seed=3, start_ms=START, scenarios={"double_ship": 0.1})
    assert [orjson.loads(line) for line in lines] == list(sim.events(max_events=2000))
    assert "2000 events" in capsys.readouterr().err


def test_lists_every_scenario(capsys: pytest.CaptureFixture[str]) -> None:
    """`simulate --list-scenarios` prints one line per scenario with its description."""
    assert main(["simulate", "--list-scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(SCENARIOS)


def test_bad_scenario_or_start_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown scenario or a bad share exits with code 2 and a message (a bad --start is
    refused by the parser: see test_cli_usage)."""
    assert main(["simulate", "--scenario", "wms_lost"]) == 2
    assert "unknown scenario 'wms_lost'" in capsys.readouterr().err
    assert main(["simulate", "--scenario", "double_ship=lots"]) == 2
    assert main(["simulate", "--scenario", "double_ship=2"]) == 2


def test_an_output_that_cannot_be_written_names_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One line naming `--out`, the path and why: exit 2 when it cannot be opened (nothing was
    generated yet, like replay's outputs), 1 when writing fails on the way (a full disk)."""
    missing = tmp_path / "no" / "such" / "dir.jsonl"
    assert main(["simulate", "--events", "10", "--out", str(missing)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"orderwatch simulate: --out {missing}: cannot write: No such file or directory"
    if Path("/dev/full").exists():
        assert main(["simulate", "--events", "10", "--out", "/dev/full"]) == 1
        err = capsys.readouterr().err.strip()
        assert err == "orderwatch simulate: --out /dev/full: write failed: No space left on device"


def test_scenario_defaults_and_start_parsing() -> None:
    """NAME without a share gets a small default; --start accepts any RFC 3339 offset."""
    shares = parse_scenarios(["double_ship", "callback_storm", "wrong_offset", "status_jump=0.3"])
    assert shares == {
        "double_ship": 0.02,
        "callback_storm": 0.1,
        "wrong_offset": 0.001,
        "status_jump": 0.3,
    }
    assert parse_start(None) == START == parse_start("2026-11-10T16:00:00Z")


def test_rate_paces_the_output(tmp_path: Path) -> None:
    """--rate limits events per wall second without changing the content."""
    paced, fast = tmp_path / "paced.jsonl", tmp_path / "fast.jsonl"
    began = time.monotonic()
    assert main(["simulate", "--out", str(paced), "--events", "300", "--rate", "1000"]) == 0
    assert time.monotonic() - began >= 0.25
    assert main(["simulate", "--out", str(fast), "--events", "300"]) == 0
    assert paced.read_bytes() == fast.read_bytes()


def test_kafka_output_is_refused_as_usage(capsys: pytest.CaptureFixture[str]) -> None:
    """A kafka:// output is a usage error (exit 2) until the Kafka connector lands."""
    from orderwatch.cli import main

    assert main(["simulate", "--events", "5", "--out", "kafka://127.0.0.1:9092"]) == 2
    assert "Kafka" in capsys.readouterr().err


def test_speed_paces_events_on_the_simulated_clock(tmp_path: Path) -> None:
    """--speed 600 spreads ~10 simulated minutes of events over about a wall second."""
    from orderwatch.simulate.cli import on_sim_clock

    start = 1_000_000
    timed = [(start + i * 60_000, {"n": i}) for i in range(11)]  # one a simulated minute
    begun = time.monotonic()
    got = list(on_sim_clock(timed, start, speed=600.0))
    assert [e["n"] for e in got] == list(range(11))
    assert time.monotonic() - begun >= 0.95  # it waited for the simulated clock


def test_summary_counts_the_orders_in_the_events_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The summary's order count is the distinct order_ids of the lines written, not the orders
    the simulator has scheduled (`--events 10` said `10 events, 203 orders`)."""
    out = tmp_path / "events.jsonl"
    for n in ("10", "2000"):
        assert main(["simulate", "--out", str(out), "--events", n]) == 0
        events = [orjson.loads(line) for line in out.read_bytes().splitlines()]
        orders = {e["order_id"] for e in events if "order_id" in e}
        assert f"{n} events, {len(orders)} orders," in capsys.readouterr().err


def _simulate(*argv: str) -> subprocess.Popen[bytes]:
    """`orderwatch simulate ARGV...` in a child process (stdout piped, stderr piped)."""
    return subprocess.Popen(
        [sys.executable, "-m", "orderwatch", "simulate", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _complete_lines(data: bytes) -> list[dict[str, Any]]:
    """Every line of `data` as a JSON object; fails on a partial or broken line."""
    assert data.endswith(b"\n")
    return [orjson.loads(line) for line in data.splitlines()]


@pytest.mark.parametrize("pacing", [["--rate", "200"], ["--speed", "10"]])
def test_paced_output_reaches_the_file_promptly(tmp_path: Path, pacing: list[str]) -> None:
    """Paced lines are flushed whenever the run waits for the clock: they arrive long before
    4,096 events (one write batch) exist (before, `--rate 50` wrote nothing for 80 s)."""
    out = tmp_path / "events.jsonl"
    proc = _simulate("--events", "0", *pacing, "--out", str(out))
    try:
        deadline = time.monotonic() + 5.0
        while not (out.exists() and out.stat().st_size):
            assert time.monotonic() < deadline, "no line reached the file in 5 s"
            time.sleep(0.05)
        assert 1 <= len(_complete_lines(out.read_bytes())) < 2_000
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


def test_paced_output_reaches_stdout_promptly() -> None:
    """The same through a pipe: `--rate 200` lines can be read within seconds."""
    proc = _simulate("--events", "0", "--rate", "200")
    assert proc.stdout is not None
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 5.0)
        assert ready, "no line reached stdout in 5 s"
        first = os.read(proc.stdout.fileno(), 1 << 20)
        assert first.count(b"\n") < 2_000
        orjson.loads(first.splitlines()[0])
    finally:
        proc.terminate()
        proc.communicate(timeout=10)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
@pytest.mark.parametrize("pacing", [["--rate", "200"], []])
def test_a_stop_signal_keeps_every_event_generated(
    tmp_path: Path, sig: signal.Signals, pacing: list[str]
) -> None:
    """SIGTERM or Ctrl-C ends an endless run with exit 0, whole lines written and the summary
    counting them (before, SIGTERM lost the batch and could cut a line in two)."""
    out = tmp_path / "events.jsonl"
    proc = _simulate("--events", "0", *pacing, "--out", str(out))
    time.sleep(1.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    events = _complete_lines(out.read_bytes())
    assert len(events) >= (50 if pacing else 4_096)
    assert f"orderwatch simulate: {len(events)} events, ".encode() in err
