"""Measurement primitives of `orderwatch bench`: measured subprocesses, the parse-only loop, stats.

Every figure that involves a process (replay, the plain script) comes from `run_measured`, which
goes through `launch.py` so that peak RSS is the child's own (see that module for why).
"""

from __future__ import annotations

import json
import math
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

LAUNCHER = Path(__file__).with_name("launch.py")


@dataclass
class Proc:
    """One process of a measured tree, as sampled from /proc."""

    pid: int
    parent: int
    hwm_mib: float
    command: str
    cpu_s: float | None = None  # user + system, as last sampled


@dataclass
class Measured:
    """A finished command: wall time, exit code, peak RSS (wait4) and the sampled tree."""

    argv: list[str]
    wall_s: float
    exit_code: int
    maxrss_mib: float
    user_s: float = 0.0
    sys_s: float = 0.0
    procs: list[Proc] = field(default_factory=list)
    stdout: str = ""
    stderr: str = ""

    def descendants(self) -> list[Proc]:
        """The processes the command itself spawned (e.g. the cluster of `--processes 2`),
        cluster processes by their `--process-id`, others by pid."""
        root = min((p.pid for p in self.procs if p.parent == 0), default=None)
        return sorted((p for p in self.procs if p.pid != root), key=_cluster_order)

    def root_hwm_mib(self) -> float | None:
        roots = [p.hwm_mib for p in self.procs if p.parent == 0]
        return roots[0] if roots else None


def _cluster_order(p: Proc) -> tuple[int, int]:
    m = re.search(r"--process-id (\d+)", p.command)
    return (int(m.group(1)), p.pid) if m else (1 << 30, p.pid)


def run_measured(argv: Sequence[str], *, cwd: Path | None = None) -> Measured:
    """Run `argv` to completion through the launcher; stdout/stderr are captured as text."""
    with tempfile.TemporaryDirectory(prefix="orderwatch-bench-") as tmp:
        result = Path(tmp) / "result.json"
        out, err = Path(tmp) / "out", Path(tmp) / "err"
        with out.open("wb") as fo, err.open("wb") as fe:
            # The launcher runs by file path (not -m) so it imports nothing from orderwatch.
            code = subprocess.call(
                [sys.executable, str(LAUNCHER), str(result), "--", *argv],
                stdout=fo,
                stderr=fe,
                cwd=cwd,
            )
        stdout, stderr = out.read_text(errors="replace"), err.read_text(errors="replace")
        if code != 0 or not result.exists():
            raise RuntimeError(f"launcher failed ({code}) for {list(argv)}: {stderr[-2000:]}")
        r = json.loads(result.read_text())
    return Measured(
        argv=list(argv),
        wall_s=r["wall_s"],
        exit_code=r["exit_code"],
        maxrss_mib=r["maxrss_kib"] / 1024,
        user_s=r["user_s"],
        sys_s=r["sys_s"],
        procs=[
            Proc(p["pid"], p["parent"], p["hwm_kib"] / 1024, p["command"], p.get("cpu_s"))
            for p in r["processes"]
        ],
        stdout=stdout,
        stderr=stderr,
    )


def parse_only(path: Path) -> tuple[int, float]:
    """The parse-only yardstick: read `path`, `orjson.loads` every line; (lines, seconds).

    Runs in this process on purpose: it is a loop of a few lines with nothing to start up, and
    a subprocess would add interpreter start-up to a figure that is meant as a ceiling.
    """
    loads = orjson.loads
    lines = 0
    started = time.perf_counter()
    with path.open("rb") as f:
        for line in f:
            lines += 1
            try:
                loads(line)
            except orjson.JSONDecodeError:  # costs its parse attempt, like in the real reader
                continue
    return lines, time.perf_counter() - started


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def best_and_median(values: Sequence[float], *, higher_is_better: bool = True) -> dict[str, Any]:
    """`{"best", "median", "all"}` of repeated measurements (best = max or min)."""
    if not values:
        return {"best": None, "median": None, "all": []}
    best = max(values) if higher_is_better else min(values)
    return {"best": best, "median": statistics.median(values), "all": list(values)}


def count_lines(path: Path) -> int:
    """Lines in `path` (a last line without a newline counts)."""
    n = 0
    last = b"\n"
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def alerts_without_annotations(path: Path) -> list[dict[str, Any]]:
    """The alert changes of an `--alerts-out` file with `annotations` dropped (for comparison)."""
    out: list[dict[str, Any]] = []
    with path.open("rb") as f:
        for line in f:
            if line.strip():
                d = orjson.loads(line)
                d.pop("annotations", None)
                out.append(d)
    return out
