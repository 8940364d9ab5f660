"""`orderwatch bench`: every figure of issue 5 measured in one invocation, side by side.

Order of work: generate (or reuse) the mixed stream; K rounds of [parse-only loop, plain script,
replay on 1 worker, 2 workers, 2 processes, stage split] — interleaved so that a noisy
neighbour slows all of them rather than one; compare the alert outputs; a 1-worker replay under
py-spy (where the whole process's time goes); replays (and plain runs) of 100k, 500k and 1M
open orders for bytes per open order; the live latency run; then the tables, the JSON and
`latest.md`.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from orderwatch.bench import inputs
from orderwatch.bench.measure import (
    Measured,
    alerts_without_annotations,
    best_and_median,
    count_lines,
    parse_only,
    run_measured,
)
from orderwatch.bench.profile import profile
from orderwatch.bench.report import (
    add_ratios,
    bytes_per_order,
    git_commit,
    goals,
    machine_info,
    result_name,
    slopes,
    tree_fingerprint,
)
from orderwatch.bench.tables import markdown, print_tables

ROOT = Path(__file__).resolve().parents[2]
CONFIG = Path("examples/orderwatch.yaml")
PLAIN = Path("bench/plain_rules.py")
MODES: dict[str, list[str]] = {
    "1_worker": [],
    "2_workers": ["--workers", "2"],
    "2_processes": ["--processes", "2"],
}
RSS_NOTE = (
    "peak_rss_mib is ru_maxrss from os.wait4 on the replay process, spawned from a ~10 MiB "
    "launcher; for --processes 2 that value is the largest of the parent and its reaped "
    "children (Linux reports a maximum, not a sum), so parent_hwm_mib and children_hwm_mib "
    "give each process's VmHWM sampled from /proc every 20 ms (may miss the last 20 ms)."
)


@dataclass
class Options:
    events: int
    quick: bool
    out: Path
    work: Path
    skip_latency: bool
    skip_profile: bool
    repeat: int
    command: str


def _log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def _check(m: Measured, what: str) -> Measured:
    if m.exit_code != 0:
        raise RuntimeError(f"{what} exited {m.exit_code}: {m.stderr[-2000:] or m.stdout[-2000:]}")
    return m


def replay_argv(events: Path, out: Path, tag: str, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "orderwatch",
        "replay",
        str(events),
        "--config",
        str(CONFIG),
        "--alerts-out",
        str(out / f"{tag}.alerts.jsonl"),
        "--dead-letters",
        str(out / f"{tag}.dead.jsonl"),
        "--quiet",
        "--summary-json",
        str(out / f"{tag}.summary.json"),
        *extra,
    ]


def plain_argv(events: Path, alerts: Path) -> list[str]:
    return [
        sys.executable,
        str(PLAIN),
        str(events),
        "--config",
        str(CONFIG),
        "--alerts-out",
        str(alerts),
    ]


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _self_reported(stdout: str) -> float | None:
    m = re.search(r"([\d,]+) events/s", stdout)
    return float(m.group(1).replace(",", "")) if m else None


def throughput(events: Path, lines: int, out: Path, repeat: int) -> dict[str, Any]:
    """K interleaved rounds of the yardsticks and the three replays; outputs compared."""
    parse_s: list[float] = []
    plain_runs: list[Measured] = []
    runs: dict[str, list[Measured]] = {k: [] for k in MODES}
    summaries: dict[str, list[dict[str, Any]]] = {k: [] for k in MODES}
    hashes: list[tuple[str, str]] = []
    stage_runs: list[dict[str, Any]] = []
    for r in range(repeat):
        n, secs = parse_only(events)
        parse_s.append(secs)
        _log(f"round {r + 1}/{repeat}: parse-only {n / secs:,.0f} lines/s")
        m = _check(run_measured(plain_argv(events, out / "plain.alerts.jsonl"), cwd=ROOT), "plain")
        plain_runs.append(m)
        _log(f"round {r + 1}/{repeat}: plain script {lines / m.wall_s:,.0f} events/s")
        for key, extra in MODES.items():
            m = _check(run_measured(replay_argv(events, out, key, extra), cwd=ROOT), key)
            runs[key].append(m)
            summaries[key].append(json.loads((out / f"{key}.summary.json").read_text()))
            hashes.append((f"{key}#{r + 1}", _sha(out / f"{key}.alerts.jsonl")))
            _log(
                f"round {r + 1}/{repeat}: replay {key} {lines / m.wall_s:,.0f} events/s, "
                f"peak RSS {m.maxrss_mib:.0f} MiB"
            )
        stage_runs.append(stage_split(events, out))
        _log(f"round {r + 1}/{repeat}: stages {stage_runs[-1]['us_per_line']} us/line")
    replay: dict[str, Any] = {}
    for key, ms in runs.items():
        kids = [p for m in ms[:1] for p in m.descendants()]
        replay[key] = {
            "command": ms[0].argv[1:],
            "events_per_s": best_and_median([lines / m.wall_s for m in ms]),
            "wall_s": [m.wall_s for m in ms],
            "summary_seconds": [s["seconds"] for s in summaries[key]],
            "in_process_events_per_s": best_and_median(
                [s["lines"] / s["seconds"] for s in summaries[key]]
            ),
            "peak_rss_mib": max(m.maxrss_mib for m in ms),
            "peak_rss_mib_all": [m.maxrss_mib for m in ms],
            "parent_hwm_mib": ms[0].root_hwm_mib() if kids else None,
            "children_hwm_mib": [p.hwm_mib for p in kids],
            "children_cpu_s": [p.cpu_s for p in kids],
            "cpu_s": [m.user_s + m.sys_s for m in ms],
            "summary": summaries[key][0],
        }
    return {
        "parse_only": {
            "lines_per_s": best_and_median([lines / s for s in parse_s]),
            "seconds": parse_s,
            "how": "in the bench process: open(FILE, 'rb'), orjson.loads(line) for each line",
        },
        "plain_rules": {
            "command": plain_runs[0].argv[1:],
            "events_per_s": best_and_median([lines / m.wall_s for m in plain_runs]),
            "wall_s": [m.wall_s for m in plain_runs],
            "self_reported_events_per_s": _self_reported(plain_runs[0].stdout),
            "peak_rss_mib": max(m.maxrss_mib for m in plain_runs),
            "stdout": plain_runs[0].stdout.strip(),
        },
        "replay": replay,
        "outputs": compare_outputs(
            hashes, out / "1_worker.alerts.jsonl", out / "plain.alerts.jsonl"
        ),
        "stages": summarize_stages(stage_runs),
    }


def stage_split(events: Path, out: Path) -> dict[str, Any]:
    """One run of `orderwatch.bench.stages` (its own process, like every measured run)."""
    result = out / "stages.json"
    argv = [sys.executable, "-m", "orderwatch.bench.stages", str(events)]
    m = _check(
        run_measured([*argv, "--config", str(CONFIG), "--out", str(result)], cwd=ROOT), "stages"
    )
    return {**json.loads(result.read_text()), "peak_rss_mib": m.maxrss_mib}


def summarize_stages(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage the best (least) and median seconds over the rounds, and µs per line."""
    lines = runs[0]["lines"]
    seconds = {
        k: best_and_median([r["seconds"][k] for r in runs], higher_is_better=False)
        for k in runs[0]["seconds"]
    }
    best_total = sum(v["best"] for v in seconds.values())
    return {
        "lines": lines,
        "seconds": seconds,
        "us_per_line": {k: v["best"] / lines * 1e6 for k, v in seconds.items()},
        "events_per_s_if_alone": lines / best_total if best_total else None,
        "alert_changes": [r["alert_changes"] for r in runs],
        "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
        "how": runs[0]["how"],
    }


def profile_replay(events: Path, out: Path) -> dict[str, Any]:
    """One more 1-worker replay, under py-spy; it must write the measured replays' alerts."""
    p = profile(replay_argv(events, out, "profile", []), out / "profile.raw.txt")
    p["same_alerts"] = _sha(out / "profile.alerts.jsonl") == _sha(out / "1_worker.alerts.jsonl")
    return p


def compare_outputs(hashes: list[tuple[str, str]], replay: Path, plain: Path) -> dict[str, Any]:
    """Replays byte-identical to each other, and equal to the plain script's minus annotations."""
    same_replays = len({h for _, h in hashes}) == 1
    ours, theirs = alerts_without_annotations(replay), alerts_without_annotations(plain)
    same_plain = ours == theirs
    if same_replays and same_plain:
        detail = (
            f"{len(hashes)} replay outputs byte-identical, and equal to the plain "
            f"script's without annotations; {len(ours):,} alert changes"
        )
    else:
        first = next(
            (i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b),
            min(len(ours), len(theirs)),
        )
        detail = (
            f"replays byte-identical: {'yes' if same_replays else 'no'}; equal to plain: "
            f"{'yes' if same_plain else 'no'} (replay {len(ours):,} vs plain "
            f"{len(theirs):,} alert changes, first difference at change #{first})"
        )
    return {
        "identical": same_replays and same_plain,
        "replays_identical": same_replays,
        "equal_to_plain": same_plain,
        "alert_changes": len(ours),
        "sha256": dict(hashes),
        "detail": detail,
    }


def open_orders(work: Path, out: Path, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Peak RSS of replay and plain script on inputs of N open orders; bytes per open order."""
    ours: list[Measured] = []
    theirs: list[Measured] = []
    summaries: list[dict[str, Any]] = []
    inputs_info = []
    for n in sizes:
        path, info = inputs.ensure_open_orders(work, n)
        inputs_info.append(info)
        m = _check(run_measured(replay_argv(path, out, f"open-{n}", []), cwd=ROOT), "open replay")
        ours.append(m)
        summaries.append(json.loads((out / f"open-{n}.summary.json").read_text()))
        theirs.append(
            _check(
                run_measured(plain_argv(path, out / f"open-{n}.plain.jsonl"), cwd=ROOT),
                "open plain",
            )
        )
        _log(
            f"open orders {n:,}: replay {ours[-1].maxrss_mib:.0f} MiB, "
            f"plain {theirs[-1].maxrss_mib:.0f} MiB"
        )
    orders = list(sizes)
    return {
        "orders": orders,
        "inputs": inputs_info,
        "orderwatch": {
            "peak_rss_mib": [m.maxrss_mib for m in ours],
            **slopes([m.maxrss_mib for m in ours], orders),
            "orders_still_tracked": [s["orders_open"] for s in summaries],
            "alert_changes": [sum(s["alerts"].values()) for s in summaries],
            "command": ours[0].argv[1:],
        },
        "plain": {
            "peak_rss_mib": [m.maxrss_mib for m in theirs],
            **slopes([m.maxrss_mib for m in theirs], orders),
            "command": theirs[0].argv[1:],
            "note": "the plain script keeps every decoded event until it has sorted them, so "
            "its figure includes the input as well as the per-order state",
        },
    }


def still_firing(alerts: dict[str, int]) -> int:
    """Alerts firing at the end of a replay, from its summary's `"<rule> <status>"` counts."""
    fired = sum(n for k, n in alerts.items() if k.endswith(" firing"))
    return fired - sum(n for k, n in alerts.items() if k.endswith(" resolved"))


def alert_storm(work: Path, out: Path, sizes: tuple[int, ...]) -> dict[str, Any]:
    """Peak RSS of replays in which no order reaches the warehouse, so a `paid_without_wms`
    alert fires for nearly every order and never resolves: bytes per firing alert, the order
    it is about included. What a 漏发 storm at a promotion peak holds in memory.

    The replays leave their alert file unsorted (`--no-sort`): sorting it reads every line
    into memory once the flow has ended, which is the replay's cost, not the state's."""
    runs: list[Measured] = []
    firing: list[int] = []
    inputs_info = []
    for n in sizes:
        path, info = inputs.ensure_open_orders(work, n, pushed=False)
        inputs_info.append(info)
        runs.append(
            _check(
                run_measured(replay_argv(path, out, f"storm-{n}", ["--no-sort"]), cwd=ROOT),
                "storm",
            )
        )
        summary = json.loads((out / f"storm-{n}.summary.json").read_text())
        firing.append(still_firing(summary["alerts"]))
        _log(f"alert storm {n:,} orders: {firing[-1]:,} firing, {runs[-1].maxrss_mib:.0f} MiB")
    rss = [m.maxrss_mib for m in runs]
    return {
        "orders": list(sizes),
        "inputs": inputs_info,
        "firing_at_end": firing,
        "peak_rss_mib": rss,
        "bytes_per_firing_alert": bytes_per_order(rss[0], rss[-1], firing[0], firing[-1]),
        "command": runs[0].argv[1:],
    }


def waiting_events(events: Path, out: Path, lines: tuple[int, ...]) -> dict[str, Any]:
    """Peak RSS of runs that keep the first N lines of the mixed input waiting for the
    watermark (`orderwatch.bench.waiting`): bytes per waiting event, the figure that sizes a
    live daemon's `lateness` × rate."""
    runs: list[Measured] = []
    held: list[dict[str, Any]] = []
    for n in lines:
        result = out / f"waiting-{n}.json"
        argv = [sys.executable, "-m", "orderwatch.bench.waiting", str(events), "--lines", str(n)]
        argv += ["--config", str(CONFIG), "--out", str(result)]
        runs.append(_check(run_measured(argv, cwd=ROOT), "waiting"))
        held.append(json.loads(result.read_text()))
        _log(f"waiting events: {held[-1]['waiting']:,} held, {runs[-1].maxrss_mib:.0f} MiB")
    rss = [m.maxrss_mib for m in runs]
    waiting = [h["waiting"] for h in held]
    return {
        "lines": list(lines),
        "waiting": waiting,
        "orders_applied": [h["orders"] for h in held],
        "peak_rss_mib": rss,
        "bytes_per_waiting_event": bytes_per_order(rss[0], rss[-1], waiting[0], waiting[-1]),
        "command": runs[0].argv[1:],
    }


def run_bench(opts: Options) -> int:
    started = time.time()
    tree_at_start = tree_fingerprint(ROOT)
    when = datetime.now().astimezone()
    out_runs = opts.work / "out"
    out_runs.mkdir(parents=True, exist_ok=True)
    _log(f"input: {opts.events:,} events in {opts.work}")
    events, info = inputs.ensure_mixed(opts.work, opts.events)
    info["lines"] = count_lines(events)
    _log(f"input {'reused' if info['reused'] else 'generated'}: {info['lines']:,} lines")
    result: dict[str, Any] = {
        "schema": 1,
        "date": when.date().isoformat(),
        "started_at": when.isoformat(timespec="seconds"),
        "machine": machine_info(),
        "git_commit": git_commit(ROOT),
        "parameters": {
            "command": opts.command,
            "events": opts.events,
            "quick": opts.quick,
            "repeat": opts.repeat,
            "config": str(CONFIG),
            "work": str(opts.work),
            "ratios": "best / best and median / median of the same run",
        },
        "input": info,
    }
    t = throughput(events, info["lines"], out_runs, opts.repeat)
    result["yardsticks"] = {"parse_only": t["parse_only"], "plain_rules": t["plain_rules"]}
    result["replay"] = t["replay"]
    result["rss_note"] = RSS_NOTE
    result["outputs"] = t["outputs"]
    result["stages"] = t["stages"]
    _log(f"outputs identical: {'yes' if t['outputs']['identical'] else 'no'}")
    if opts.skip_profile:
        result["profile"] = {"skipped": True}
    else:
        _log("profile of a 1-worker replay (py-spy)")
        result["profile"] = profile_replay(events, out_runs)
    # Up to the millions a promotion holds open. The figure is the last step, 500k -> 1M: a
    # step of 2x holds one doubling of each of a shard's dicts and lists (closer sizes swing
    # with where the doublings fall: 278 vs 451 B at 100k-300k-500k), and no warm-up
    # (`slopes`); the other step and the whole span are reported beside it.
    sizes = (20_000, 100_000) if opts.quick else (100_000, 500_000, 1_000_000)
    result["open_orders"] = open_orders(opts.work, out_runs, sizes)
    result["alert_storm"] = alert_storm(opts.work, out_runs, sizes[:2])
    held = (info["lines"] // 5, info["lines"])
    result["waiting_events"] = waiting_events(events, out_runs, held)
    if opts.skip_latency:
        result["latency"] = {"skipped": True}
    else:
        from orderwatch.bench.latency import (
            DEFAULT_LATENESS_MS,
            RECOVERY_OPEN_ORDERS,
            run_busy_latency,
            run_latency,
            run_recovery_latency,
            run_storm_latency,
        )

        _log("live latency run")
        result["latency"] = run_latency(seconds=10 if opts.quick else 30)
        _log("live latency run under load (50,000 events/s)")
        result["busy_latency"] = run_busy_latency(seconds=10 if opts.quick else 30)
        # The runs here use a 500 ms lateness to be short; a daemon runs with 60 s unless told,
        # and holds that much of its input waiting (it once cost a core at 10,000 events/s).
        # (Not in a quick run: nothing comes due in its first minute.)
        if opts.quick:
            result["busy_latency_default_lateness"] = {"skipped": True}
        else:
            _log("live latency run under load with the default lateness (10,000 events/s, 60 s)")
            result["busy_latency_default_lateness"] = run_busy_latency(
                seconds=120, busy_events_per_s=10_000, lateness_ms=DEFAULT_LATENESS_MS
            )
        _log("live latency run in a 漏发 storm (1,000 new alerts/s)")
        result["storm_latency"] = run_storm_latency(seconds=10 if opts.quick else 30)
        opened = 100_000 if opts.quick else RECOVERY_OPEN_ORDERS
        _log(f"live latency run with recovery on and {opened:,} orders open")
        result["recovery_latency"] = run_recovery_latency(opened, seconds=10 if opts.quick else 60)
    add_ratios(result)
    result["goals"] = goals(result)
    result["duration_s"] = round(time.time() - started, 1)
    tree_at_end = tree_fingerprint(ROOT)
    result["code"] = {
        "at_start": tree_at_start,
        "at_end": tree_at_end,
        "git_commit_at_end": git_commit(ROOT),
        "changed_during_run": tree_at_start != tree_at_end,
    }
    opts.out.mkdir(parents=True, exist_ok=True)
    path = opts.out / result_name(when, result["machine"]["hostname"])
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    (opts.out / "latest.md").write_text(markdown(result))
    print_tables(result)
    print(f"results: {path} and {opts.out / 'latest.md'}")
    return 0
