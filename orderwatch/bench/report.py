"""The result of `orderwatch bench`: machine description, ratios, JSON, and the tables.

Everything here is pure bookkeeping on numbers already measured, so it can be tested with fake
measurements. Throughput ratios compare best with best and median with median of the same run.
"""

from __future__ import annotations

import hashlib
import platform
import socket
import subprocess
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

#: The issue's goals (issue 5), shown beside the figures; never asserted anywhere.
GOALS = {
    "replay_1_worker_x_parse_only": 0.25,
    "replay_2_processes_x_parse_only": 0.45,
    "bytes_per_open_order": 400,
    "latency_p99_ms": 1000,
    "latency_p99_ms_busy": 1000,  # the same goal, under load
    "latency_p99_ms_busy_default_lateness": 1000,  # and with the lateness a daemon runs with
    "latency_p99_ms_recovery_on": 1000,  # and in what a promotion holds
}
REPLAYS = ("1_worker", "2_workers", "2_processes")
MIB = 1024 * 1024


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def _field(text: str, key: str) -> str | None:
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name.strip() == key:
            return value.strip()
    return None


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def machine_info(cpuinfo: str | None = None, meminfo: str | None = None) -> dict[str, Any]:
    """CPU model, cores, memory, OS, Python and library versions of this machine."""
    import os

    cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    meminfo = _read("/proc/meminfo") if meminfo is None else meminfo
    mem_kib = _field(meminfo, "MemTotal")
    os_release = _read("/etc/os-release")
    pretty = _field(os_release.replace("=", ":"), "PRETTY_NAME")
    return {
        "hostname": socket.gethostname().split(".")[0],
        "cpu_model": _field(cpuinfo, "model name") or platform.processor() or None,
        "cores": os.cpu_count(),
        "memory_mib": int(mem_kib.split()[0]) // 1024 if mem_kib else None,
        "os": (pretty or "").strip('"') or platform.platform(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bytewax": _version("bytewax"),
        "orjson": _version("orjson"),
    }


def git_commit(repo: Path) -> str | None:
    """`git rev-parse --short HEAD`, with `-dirty` when the work tree has uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        )
        if head.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=repo,
            capture_output=True,
            text=True,
        )
    except OSError:
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def tree_fingerprint(repo: Path) -> str | None:
    """A hash of HEAD and the uncommitted diff: compared at the start and end of a run, because
    other people edit this work tree while the bench runs, and a changed engine mid-run would
    make the rounds measure different code."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True)
        diff = subprocess.run(["git", "diff", "HEAD"], cwd=repo, capture_output=True)
    except OSError:
        return None
    if head.returncode != 0:
        return None
    return hashlib.sha256(head.stdout + diff.stdout).hexdigest()[:16]


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(rate: dict[str, Any], parse: dict[str, Any], plain: dict[str, Any]) -> dict[str, Any]:
    """A throughput (`{"best", "median"}`) as ratios to the two yardsticks of the same run."""
    return {
        "x_parse_only": {k: ratio(rate.get(k), parse.get(k)) for k in ("best", "median")},
        "x_plain": {k: ratio(rate.get(k), plain.get(k)) for k in ("best", "median")},
    }


def bytes_per_order(rss1_mib: float, rss2_mib: float, orders1: int, orders2: int) -> float:
    """(peak RSS₂ − peak RSS₁) / (N₂ − N₁), in bytes."""
    if orders2 == orders1:
        raise ValueError("the two runs need different numbers of orders")
    return (rss2_mib - rss1_mib) * MIB / (orders2 - orders1)


def slopes(rss_mib: list[float], orders: list[int]) -> dict[str, Any]:
    """Bytes per order over the last step (the two largest runs: the figure), over the whole
    span, and over each step between runs.

    The last step is the figure because it is the state of a shard in steady use. A shard's
    dict and lists double at their own sizes, and a step of 2× holds exactly one doubling of
    each, so it carries their amortised cost, where a wider span holds three or four
    (100k → 1M: 3.3 doublings' worth of orders). And the smallest run is still warming up:
    each shard packs its first orders raw until its zstd dictionary is trained, and at
    100,000 orders a third of the packed orders are still raw at the end (~4.6 MiB more).
    """
    steps = [
        bytes_per_order(rss_mib[i], rss_mib[i + 1], orders[i], orders[i + 1])
        for i in range(len(orders) - 1)
    ]
    return {
        "bytes_per_order": steps[-1],
        "span": [orders[-2], orders[-1]],
        "whole_span": bytes_per_order(rss_mib[0], rss_mib[-1], orders[0], orders[-1]),
        "steps": steps,
    }


def add_ratios(result: dict[str, Any]) -> dict[str, Any]:
    """Fill `ratios` of the plain script and of every replay from the figures in `result`."""
    parse = result["yardsticks"]["parse_only"]["lines_per_s"]
    plain = result["yardsticks"]["plain_rules"]["events_per_s"]
    result["yardsticks"]["plain_rules"]["ratios"] = ratios(plain, parse, plain)
    for entry in result["replay"].values():
        entry["ratios"] = ratios(entry["events_per_s"], parse, plain)
    return result


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """Each goal of the issue beside the figure it is about (best-of ratios)."""
    rep = result["replay"]
    one = rep.get("1_worker", {}).get("ratios", {}).get("x_parse_only", {}).get("best")
    two = rep.get("2_processes", {}).get("ratios", {}).get("x_parse_only", {}).get("best")
    bpo = result.get("open_orders", {}).get("orderwatch", {}).get("bytes_per_order")
    p99 = result.get("latency", {}).get("api", {}).get("p99_ms")
    got = {
        "replay_1_worker_x_parse_only": one,
        "replay_2_processes_x_parse_only": two,
        "bytes_per_open_order": bpo,
        "latency_p99_ms": p99,
        "latency_p99_ms_busy": _slower(result.get("busy_latency", {})),
        "latency_p99_ms_busy_default_lateness": _slower(
            result.get("busy_latency_default_lateness", {})
        ),
        "latency_p99_ms_recovery_on": _slower(result.get("recovery_latency", {})),
    }
    out: dict[str, Any] = {}
    for key, goal in GOALS.items():
        value = got[key]
        lower_is_better = not key.startswith("replay_")
        met = None if value is None else (value <= goal if lower_is_better else value >= goal)
        out[key] = {"goal": goal, "value": value, "met": met}
    return out


def _slower(run: dict[str, Any]) -> float | None:
    """A live run's p99: the later of its two sightings, as an alert is only as early as its
    slower channel (None when either is missing)."""
    both = [run.get(k, {}).get("p99_ms") for k in ("api", "console")]
    return None if None in both else max(both)


def result_name(when: datetime, hostname: str) -> str:
    """`<YYYY-MM-DD>-<short-hostname>.json`."""
    return f"{when:%Y-%m-%d}-{hostname.split('.')[0]}.json"
