"""A sampling profile of a whole replay process (py-spy), summed up for the bench.

py-spy reads the replay's Python stacks from outside (ptrace) a few hundred times a second, so
the replay runs unchanged: bytewax, its Rust engine and the alert file included, which the
stage split (`orderwatch.bench.stages`) leaves out. Each sample is one stack, root first.

A sample counts for the area of its deepest frame that belongs to one (read leaf first): a
sample in `heapq` called by the tracker is the tracker's. Bytewax's engine is Rust and has no
Python frames: a sample whose deepest known frame is `run_flow`, the call that hands the
dataflow to bytewax, is time spent in the engine between Python steps.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# Area of a frame by its file (py-spy shows paths from the package root); first match wins.
AREAS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("read", ("orderwatch/connectors/files.py", "orderwatch/connectors/raw.py")),
    ("decode_route", ("orderwatch/events.py", "orderwatch/pipelines/route.py")),
    ("track", ("orderwatch/domain/", "orderwatch/pipelines/orders.py")),
    (
        "alert_output",
        ("orderwatch/connectors/sinks.py", "orderwatch/alerts/", "orderwatch/replay.py"),
    ),
    ("bytewax", ("bytewax/", "orderwatch/cluster.py")),
)
OTHER = "other"  # start-up: imports, config, building the flow
AREA_NAMES = (*(name for name, _ in AREAS), OTHER)
DEFAULT_RATE_HZ = 250
TOP_FUNCTIONS = 15

Frame = tuple[str, str]  # (function, file)
Stacks = list[tuple[list[Frame], int]]


class ProfileError(RuntimeError):
    """py-spy is missing, or could not profile the command."""


def pyspy_path() -> str:
    """The py-spy next to this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("py-spy")
    found = str(beside) if beside.exists() else shutil.which("py-spy")
    if found is None:
        raise ProfileError("py-spy not found: `make setup` installs it (or: pip install py-spy)")
    return found


def parse_frame(text: str) -> Frame:
    """`ShardTracker._apply (orderwatch/domain/tracker.py)` → (function, file)."""
    function, sep, rest = text.rpartition(" (")
    if not sep or not rest.endswith(")"):
        return text, ""
    return function, rest[:-1]


def read_stacks(text: str) -> Stacks:
    """py-spy's raw (collapsed) format: one `frame;frame;… count` per line, root first."""
    stacks: Stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        stacks.append(([parse_frame(f) for f in stack.split(";")], int(count)))
    return stacks


def area_of(stack: list[Frame]) -> str:
    for _, file in reversed(stack):
        for name, prefixes in AREAS:
            if file.startswith(prefixes):
                return name
    return OTHER


def _label(frame: Frame) -> str:
    return f"{frame[0]} ({frame[1]})" if frame[1] else frame[0]


def shares(stacks: Stacks, top: int = TOP_FUNCTIONS) -> dict[str, Any]:
    """Shares of all samples: per area, and per function its own ("self": the sample's leaf)
    and in all (on the stack at all, once per sample however deep the recursion)."""
    total = sum(n for _, n in stacks)
    areas: Counter[str] = Counter(dict.fromkeys(AREA_NAMES, 0))
    own: Counter[str] = Counter()
    within: Counter[str] = Counter()
    for stack, n in stacks:
        areas[area_of(stack)] += n
        if stack:
            own[_label(stack[-1])] += n
        for label in {_label(f) for f in stack}:
            within[label] += n

    def of_all(n: int) -> float:
        return n / total if total else 0.0

    return {
        "samples": total,
        "areas": {name: of_all(n) for name, n in areas.items()},
        "functions": [
            {"function": label, "self": of_all(n), "total": of_all(within[label])}
            for label, n in own.most_common(top)
        ],
    }


_COUNTS = re.compile(r"Samples: (\d+) Errors: (\d+)")


def record(argv: list[str], raw: Path, rate_hz: int = DEFAULT_RATE_HZ) -> dict[str, Any]:
    """Run `argv` under `py-spy record` writing raw stacks to `raw`; what py-spy said."""
    spy = [pyspy_path(), "record", "--format", "raw", "--nolineno", "--rate", str(rate_hz)]
    started = time.perf_counter()
    done = subprocess.run(
        [*spy, "--output", str(raw), "--", *argv], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - started
    if done.returncode != 0 or not raw.exists():
        raise ProfileError(
            f"py-spy record exited {done.returncode}: {(done.stderr or done.stdout)[-2000:]}"
        )
    counts = _COUNTS.search(done.stdout + done.stderr)  # py-spy reports on stdout
    return {
        "command": argv[1:],
        "rate_hz": rate_hz,
        "wall_s": wall,
        "errors": int(counts.group(2)) if counts else None,
        "raw": str(raw),
    }


def profile(argv: list[str], raw: Path, rate_hz: int = DEFAULT_RATE_HZ) -> dict[str, Any]:
    """Record `argv` and sum up its samples."""
    run = record(argv, raw, rate_hz)
    return {**run, **shares(read_stacks(raw.read_text()))}
