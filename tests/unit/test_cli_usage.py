"""The command line as users meet it: bad numbers and flag combinations are usage errors
(exit 2, naming the flag) before any work starts (`--workers 0` used to replay nothing and
exit 0, `--batch-size 0` to hang), and the replay summary is the one the README shows."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from orderwatch.cli import main

SAMPLE = "examples/sample-events.jsonl"
_ISO = "an ISO 8601 time with a UTC offset, e.g. 2026-11-11T00:00:00+08:00"


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["replay", SAMPLE, "--workers", "0"], "--workers"),
        (["replay", SAMPLE, "--workers", "-1"], "--workers"),
        (["replay", SAMPLE, "--workers", "two"], "--workers"),
        (["replay", SAMPLE, "--batch-size", "0"], "--batch-size"),
        (["replay", SAMPLE, "--processes", "0"], "--processes"),
        (["run", "--workers", "0"], "--workers"),
        (["run", "--process-id", "1"], "--process-id needs --addresses"),
        (["run", "--addresses", "h1:1,h2:2"], "--process-id must be 0..1"),
        (["run", "--addresses", "h1:1,h2:2", "--process-id", "2"], "--process-id must be 0..1"),
        (["run", "--addresses", "h1:1", "--process-id", "0", "--processes", "2"], "--processes"),
        (["simulate", "--rate", "0"], "--rate"),
        (["simulate", "--rate", "-1"], "--rate"),
        (["simulate", "--speed", "0"], "--speed"),
        (["simulate", "--events", "-5"], "--events"),
        (["simulate", "--orders-per-minute", "0"], "--orders-per-minute"),
        # each was a message naming neither the flag nor the form expected, or none at all
        (["simulate", "--start", "garbage"], f"--start: 'garbage' is not {_ISO}"),
        (["simulate", "--start", "2026-11-11T00:00:00+25:00"], "--start: '2026-11-11T00:00"),
        (["simulate", "--start", "2026-11-11T00:00:00"], "--start: '2026-11-11T00:00:00' has no"),
        (["simulate", "--start", "2026-11-11"], "--start: '2026-11-11' has no UTC offset"),
        (["simulate", "--rate", "nan"], "--rate: expected a finite number, got 'nan'"),
        (["simulate", "--speed", "inf"], "--speed: expected a finite number, got 'inf'"),
        (["simulate", "--orders-per-minute", "nan"], "--orders-per-minute: expected a finite"),
        (["simulate", "--events", "1e3"], "--events: expected a whole number, got '1e3'"),
        (["replay", SAMPLE, "--workers", "1.5"], "--workers: expected a whole number"),
        (["replay", SAMPLE, "--addresses", "foo", "--process-id", "0"], "'foo' is not host:port"),
        (["replay", SAMPLE, "--addresses", "h:1,h:x", "--process-id", "0"], "'h:x' is not host"),
        (["run", "--addresses", "h:1,:2", "--process-id", "0"], "--addresses: ':2' is not host"),
        (["bench", "--events", "0"], "--events: must be at least 1000, got 0"),
        (["bench", "--events", "999"], "--events: must be at least 1000, got 999"),
        (["bench", "--repeat", "0"], "--repeat: must be at least 1, got 0"),
    ],
)
def test_bad_usage_exits_2_naming_the_flag(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert named in capsys.readouterr().err


def test_good_numbers_still_work(tmp_path: Path) -> None:
    out = f"{tmp_path}/a.jsonl"
    args = ["replay", SAMPLE, "--quiet", "--workers", "2", "--batch-size", "3"]
    assert main([*args, "--alerts-out", out, "--dead-letters", f"{tmp_path}/d.jsonl"]) == 0
    assert main(["simulate", "--events", "3", "--rate", "1e9", "--out", f"{tmp_path}/s"]) == 0


def test_replay_summary_is_the_readme_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """README "Replay a recorded stream" shows the summary of the sample; keep it true
    (timings aside)."""
    args = ["replay", SAMPLE, "--config", "examples/orderwatch.yaml"]
    assert main([*args, "--alerts-out", f"{tmp_path}/a", "--dead-letters", f"{tmp_path}/d"]) == 0
    printed = capsys.readouterr().out.splitlines()
    readme = Path("README.md").read_text()
    block = re.search(r"```\n( +replay summary.*?)\n```", readme, re.S)
    assert block is not None

    def rows(lines: list[str]) -> list[str]:
        # the timed rows also set the count column's width (events/s may be 9,999 or 10,000)
        timed = ("│ seconds", "│ events/s")
        return [
            " ".join(ln.split()) for ln in lines if ln.startswith("│") and not ln.startswith(timed)
        ]

    assert rows(printed) == rows(block.group(1).splitlines())
    assert len(rows(printed)) == 23


def test_the_command_leaves_a_replay_with_all_it_printed_and_wrote(tmp_path: Path) -> None:
    """`orderwatch replay` ends without the interpreter's teardown (`cli.entry`): what it
    printed (piped, so block-buffered) and wrote is all there, and so is its exit code."""
    args = ["replay", SAMPLE, "--config", "examples/orderwatch.yaml"]
    here = tmp_path / "here.jsonl"
    assert main([*args, "--quiet", "--alerts-out", str(here), "--dead-letters", "/dev/null"]) == 0
    alerts, summary = tmp_path / "a.jsonl", tmp_path / "summary.json"
    argv = [*args, "--alerts-out", str(alerts), "--dead-letters", str(tmp_path / "d.jsonl")]
    done = subprocess.run(
        [sys.executable, "-m", "orderwatch", *argv, "--summary-json", str(summary)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "replay summary" in done.stdout
    assert "dead letters:" in done.stdout
    assert done.stdout.rstrip().endswith("d.jsonl")  # its last line, wrapped at 80 columns
    assert alerts.read_bytes() == here.read_bytes() != b""
    assert '"lines":' in summary.read_text()
    missing = subprocess.run(
        [sys.executable, "-m", "orderwatch", "replay", str(tmp_path / "none.jsonl")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "no such file" in missing.stderr


def test_a_replay_leaves_the_daemons_dead_letters_alone(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its default dead-letter file was the daemon's own, emptied at the start of a backtest
    run with the production config."""
    state = tmp_path / "state"
    state.mkdir()
    daemons = state / "dead-letters.jsonl"
    daemons.write_text('{"reason":"malformed_json"}\n')
    events = tmp_path / "ev.jsonl"
    events.write_text(
        'not json\n{"type":"order","ts":1794326400000,"order_id":"A","status":"paid"}\n'
    )
    config = tmp_path / "c.yaml"
    config.write_text(f"state: {{dir: {state}}}\n")
    assert main(["replay", str(events), "--config", str(config), "--quiet"]) == 0
    assert daemons.read_text() == '{"reason":"malformed_json"}\n'
    (dead,) = (state / "replay-dead-letters.jsonl").read_text().splitlines()
    assert '"position":"1"' in dead.replace(" ", "")


@pytest.mark.parametrize("flag", ["--alerts-out", "--dead-letters", "--summary-json"])
def test_an_output_that_cannot_be_written_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str
) -> None:
    """It was a FileNotFoundError traceback (exit 1), after the whole replay for the summary."""
    blocked = tmp_path / "file"
    blocked.write_text("")
    target = blocked / "out.jsonl"  # below a file: no directory can be made there
    outputs = {"--alerts-out": str(tmp_path / "a"), "--dead-letters": str(tmp_path / "d")}
    outputs[flag] = str(target)
    assert main(["replay", SAMPLE, *(x for kv in outputs.items() for x in kv), "--quiet"]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"orderwatch: {target}: cannot write: ")
