"""`orderwatch bench` bookkeeping: fast, deterministic parts only (no timings asserted)."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from bench.plain_rules import run as plain_run
from orderwatch.bench.inputs import ensure_open_orders, open_order_events, simulate_argv
from orderwatch.bench.latency import (
    _FIRING,
    DEFAULT_LATENESS_MS,
    LATENESS_MS,
    PRELOAD_SPAN_MS,
    busy_order,
    daemon_config,
    delays_ms,
    due_s,
    preload,
    spread,
    summarize,
    vm_rss_mib,
)
from orderwatch.bench.measure import (
    Measured,
    Proc,
    best_and_median,
    count_lines,
    percentile,
    run_measured,
)
from orderwatch.bench.profile import parse_frame, read_stacks, shares
from orderwatch.bench.report import (
    add_ratios,
    bytes_per_order,
    goals,
    machine_info,
    ratios,
    result_name,
    slopes,
)
from orderwatch.bench.run import compare_outputs, still_firing
from orderwatch.bench.stages import feed
from orderwatch.bench.tables import markdown
from orderwatch.bench.waiting import hold

ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"completed", "cancelled", "refunded", "closed"}


# ---- percentiles and repeats -------------------------------------------------------------------
def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 50) == 3.0
    assert percentile(values, 100) == 5.0
    assert percentile(values, 25) == 2.0
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))
    with pytest.raises(ValueError):
        percentile(values, 101)


def test_best_and_median() -> None:
    assert best_and_median([3.0, 1.0, 2.0]) == {"best": 3.0, "median": 2.0, "all": [3.0, 1.0, 2.0]}
    assert best_and_median([3.0, 1.0], higher_is_better=False)["best"] == 1.0
    assert best_and_median([])["best"] is None


# ---- inputs ------------------------------------------------------------------------------------
def test_open_orders_are_exactly_n_orders_none_terminal_in_time_order() -> None:
    events = list(open_order_events(300))
    assert len(events) == 5 * 300
    by_order: dict[str, list[dict[str, Any]]] = {}
    for ev in events:
        by_order.setdefault(ev["order_id"], []).append(ev)
    assert len(by_order) == 300
    for evs in by_order.values():
        kinds = [(e["type"], e.get("status") or e.get("action")) for e in evs]
        assert kinds == [
            ("order", "created"),
            ("payment", "success"),
            ("order", "paid"),
            ("wms", "outbound_created"),
            ("order", "allocated"),
        ]
    statuses = {e["status"] for e in events if e["type"] == "order"}
    assert not statuses & TERMINAL
    assert len({e["event_id"] for e in events}) == len(events)


def test_open_orders_fire_nothing_and_stay_open_in_the_plain_script() -> None:
    cfg = yaml.safe_load((ROOT / "examples" / "orderwatch.yaml").read_text())
    lines = [orjson.dumps(e) for e in open_order_events(200)]
    rejected: Counter[str] = Counter()
    assert plain_run(lines, cfg, rejected) == []
    assert not rejected


def test_unpushed_orders_leave_out_the_warehouse_and_fire_paid_without_wms_only() -> None:
    """The alert-storm stream: the open-orders stream without its WMS events, so the plain
    script fires `paid_without_wms` for every order paid 10 min or more before the end."""
    events = list(open_order_events(200, pushed=False))
    assert len(events) == 4 * 200 and not [e for e in events if e["type"] == "wms"]
    cfg = yaml.safe_load((ROOT / "examples" / "orderwatch.yaml").read_text())
    alerts = plain_run([orjson.dumps(e) for e in events], cfg)
    assert {a["labels"]["rule"] for a in alerts} == {"paid_without_wms"}
    assert {a["status"] for a in alerts} == {"firing"}

    # due 10 min after the payment; the input ends at its last event
    def ms(ts: str) -> int:
        return int(datetime.fromisoformat(ts).timestamp() * 1000)

    end = max(ms(e["ts"]) for e in events)
    paid = [e for e in events if e["type"] == "payment"]
    due = [p for p in paid if ms(p["ts"]) + 10 * 60_000 <= end]
    assert 0 < len(due) < len(paid)
    assert len(alerts) == len(due)


def test_still_firing_counts_firings_less_resolutions() -> None:
    counts = {"paid_without_wms firing": 7, "paid_without_wms resolved": 2, "x firing": 1}
    assert still_firing(counts) == 6


def test_open_orders_file_is_cached_by_parameters(tmp_path: Path) -> None:
    path, info = ensure_open_orders(tmp_path, 50)
    assert not info["reused"] and count_lines(path) == 250
    assert ensure_open_orders(tmp_path, 50)[1]["reused"]
    storm, info = ensure_open_orders(tmp_path, 50, pushed=False)  # another file, not a reuse
    assert storm != path and not info["reused"] and count_lines(storm) == 200
    path.write_bytes(b"truncated\n")  # a changed file is not trusted
    assert not ensure_open_orders(tmp_path, 50)[1]["reused"]
    assert count_lines(path) == 250


def test_waiting_run_holds_every_event_of_its_lines_and_applies_none(tmp_path: Path) -> None:
    """`bench.waiting` keeps the events of exactly its first N lines buffered and applies
    none, though most of these orders go 10 minutes unpushed; a dead letter does not wait."""
    path, _ = ensure_open_orders(tmp_path, 200, pushed=False)
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join([*lines[:100], b"not json\n", *lines[100:]]))
    held = hold(path, ROOT / "examples" / "orderwatch.yaml", 501)
    assert held == {**held, "lines": 501, "waiting": 500, "orders": 0, "alert_changes": 0}
    assert hold(path, ROOT / "examples" / "orderwatch.yaml", 10_000)["waiting"] == 800


def test_simulate_command_has_every_scenario_of_the_mix() -> None:
    argv = simulate_argv(1000, Path("x.jsonl"))
    assert argv[1:6] == ["-m", "orderwatch", "simulate", "--events", "1000"]
    assert "callback_storm=0.05" in argv and "naive_timestamp=0.002" in argv
    assert argv[-2:] == ["--out", "x.jsonl"]


def test_count_lines_counts_a_last_line_without_newline(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"1\n2\n3")
    (tmp_path / "b").write_bytes(b"")
    assert count_lines(tmp_path / "a") == 3
    assert count_lines(tmp_path / "b") == 0


# ---- result and ratios -------------------------------------------------------------------------
CPUINFO = (
    "processor\t: 0\nmodel name\t: Test CPU 9000\n\nprocessor\t: 1\nmodel name\t: Test CPU 9000\n"
)
MEMINFO = "MemTotal:       2097152 kB\nMemFree:         1000 kB\n"


def test_machine_info_has_the_fields_the_readme_promises() -> None:
    m = machine_info(CPUINFO, MEMINFO)
    assert m["cpu_model"] == "Test CPU 9000"
    assert m["memory_mib"] == 2048
    for key in ("hostname", "cores", "os", "kernel", "python", "bytewax", "orjson"):
        assert m[key], key


def fake_result() -> dict[str, Any]:
    """A result as `run_bench` assembles it, with round numbers instead of measurements."""
    replay = {
        key: {
            "events_per_s": {"best": rate, "median": rate / 2},
            "in_process_events_per_s": {"best": rate * 1.2, "median": rate},
            "peak_rss_mib": 100.0,
            "parent_hwm_mib": 40.0 if kids else None,
            "children_hwm_mib": kids,
        }
        for key, rate, kids in (
            ("1_worker", 250_000.0, []),
            ("2_workers", 300_000.0, []),
            ("2_processes", 500_000.0, [90.0, 80.0]),
        )
    }
    replay["2_processes"]["children_cpu_s"] = [7.5, 6.25]
    return {
        "date": "2026-11-23",
        "machine": machine_info(CPUINFO, MEMINFO),
        "git_commit": "abc1234-dirty",
        "parameters": {"command": "orderwatch bench", "repeat": 2},
        "input": {"lines": 1_100_000, "bytes": 200 * 2**20},
        "yardsticks": {
            "parse_only": {"lines_per_s": {"best": 1_000_000.0, "median": 500_000.0}},
            "plain_rules": {
                "events_per_s": {"best": 125_000.0, "median": 100_000.0},
                "self_reported_events_per_s": 130_000.0,
                "peak_rss_mib": 900.0,
            },
        },
        "replay": replay,
        "outputs": {"identical": False, "detail": "equal to plain: no", "alert_changes": 12},
        "stages": {
            "us_per_line": {"read": 0.3, "decode_route": 0.9, "track": 1.8},
            "seconds": {
                k: {"best": v, "median": v * 2}
                for k, v in (("read", 0.33), ("decode_route", 0.99), ("track", 1.98))
            },
            "events_per_s_if_alone": 333_333.0,
            "alert_changes": [12, 11],
        },
        "profile": {
            "samples": 2000,
            "rate_hz": 250,
            "errors": 0,
            "wall_s": 4.5,
            "same_alerts": True,
            "raw": "bench/work/out/profile.raw.txt",
            "areas": {"read": 0.1, "track": 0.5, "bytewax": 0.25, "other": 0.15},
            "functions": [
                {"function": "f (orderwatch/domain/tracker.py)", "self": 0.125, "total": 0.5}
            ],
        },
        "open_orders": {
            "orders": [100_000, 300_000, 500_000],
            "orderwatch": {
                "peak_rss_mib": [100.0, 160.0, 230.0],
                "bytes_per_order": 367.0016,
                "span": [300_000, 500_000],
                "whole_span": 340.7872,
                "steps": [314.5728, 367.0016],
            },
            "plain": {
                "peak_rss_mib": [300.0, 700.0, 1100.0],
                "bytes_per_order": 2097.152,
                "span": [300_000, 500_000],
                "whole_span": 2097.152,
                "steps": [2097.152, 2097.152],
            },
        },
        "alert_storm": {
            "orders": [100_000, 300_000],
            "firing_at_end": [90_000, 270_000],
            "peak_rss_mib": [300.0, 700.0],
            "bytes_per_firing_alert": 2330.169,
        },
        "waiting_events": {
            "lines": [220_000, 1_100_000],
            "waiting": [120_000, 600_000],
            "peak_rss_mib": [150.0, 400.0],
            "bytes_per_waiting_event": 546.133,
        },
        "latency": {
            "api": {"count": 10, "missing": 0, "p50_ms": 120.0, "p99_ms": 1200.0, "max_ms": 1300},
            "console": {"count": 9, "missing": 1, "p50_ms": 100.0, "p99_ms": 200.0, "max_ms": 210},
            "notifier": "not measured: notifiers not built yet",
            "exit_code": 0,
        },
        "storm_latency": {
            "console": {
                "count": 29_000,
                "missing": 1000,
                "p50_ms": 40.0,
                "p99_ms": 90.4,
                "max_ms": 131,
            },
            "firing_at_end": 30_000,
            "daemon_rss_mib": 231.4,
            "scrape_ms": {"polls": 1500, "p50": 0.62, "p99": 12.25, "max": 66.0},
            "poll_errors": 1,
        },
        "busy_latency": {
            "api": {"count": 300, "missing": 0, "p50_ms": 60.0, "p99_ms": 140.0, "max_ms": 150},
            "console": {"count": 300, "missing": 0, "p50_ms": 50.0, "p99_ms": 90.0, "max_ms": 95},
            "busy_events_per_s": 50_000,
            "daemon_cores": 0.456,
        },
        "busy_latency_default_lateness": {
            "api": {"count": 580, "missing": 0, "p50_ms": 40.0, "p99_ms": 80.0, "max_ms": 99},
            "console": {"count": 580, "missing": 0, "p50_ms": 30.0, "p99_ms": 70.0, "max_ms": 90},
            "busy_events_per_s": 10_000,
            "lateness_ms": 60_000,
            "daemon_cores": 0.25,
        },
        "recovery_latency": {
            "api": {"count": 590, "missing": 10, "p50_ms": 50.0, "p99_ms": 700.0, "max_ms": 900},
            "console": {
                "count": 600,
                "missing": 0,
                "p50_ms": 40.0,
                "p99_ms": 1100.0,
                "max_ms": 1500,
            },
            "console_over_1s": 8,
            "open_orders": 1_000_000,
            "catch_up_s": 24.6,
            "daemon_rss_mib": 410.2,
            "state_mib": 404.4,
            "exit_code": 0,
            "parameters": {"snapshot_interval": "30s (the default)"},
        },
    }


def test_ratios_are_computed_from_the_given_numbers() -> None:
    r = add_ratios(fake_result())
    one = r["replay"]["1_worker"]["ratios"]
    assert one["x_parse_only"] == {"best": 0.25, "median": 0.25}
    assert one["x_plain"] == {"best": 2.0, "median": 1.25}
    assert r["yardsticks"]["plain_rules"]["ratios"]["x_parse_only"]["best"] == 0.125
    assert r["replay"]["2_processes"]["ratios"]["x_parse_only"]["best"] == 0.5
    assert ratios({"best": 1.0}, {"best": 0.0}, {})["x_parse_only"]["best"] is None


def test_goals_compare_each_figure_with_the_issue() -> None:
    g = goals(add_ratios(fake_result()))
    assert g["replay_1_worker_x_parse_only"] == {"goal": 0.25, "value": 0.25, "met": True}
    assert g["replay_2_processes_x_parse_only"]["met"] is True
    assert g["bytes_per_open_order"]["met"] is True
    assert g["latency_p99_ms"] == {"goal": 1000, "value": 1200.0, "met": False}
    assert g["latency_p99_ms_busy"] == {"goal": 1000, "value": 140.0, "met": True}
    # with recovery on, the slower of the two sightings counts: the console's 1,100 ms
    assert g["latency_p99_ms_recovery_on"] == {"goal": 1000, "value": 1100.0, "met": False}
    quicker = fake_result()
    quicker["recovery_latency"]["console"]["p99_ms"] = 650.0
    g = goals(add_ratios(quicker))
    assert g["latency_p99_ms_recovery_on"] == {"goal": 1000, "value": 700.0, "met": True}
    del quicker["recovery_latency"]
    assert goals(add_ratios(quicker))["latency_p99_ms_recovery_on"]["met"] is None


def test_bytes_per_order_is_the_slope_of_two_runs() -> None:
    assert bytes_per_order(100.0, 160.0, 100_000, 300_000) == pytest.approx(314.5728)
    with pytest.raises(ValueError):
        bytes_per_order(1.0, 2.0, 5, 5)
    # each step: 60 MiB per 200k orders, then 90 MiB per 200k; the figure is the last step
    s = slopes([100.0, 160.0, 250.0], [100_000, 300_000, 500_000])
    assert s["steps"] == pytest.approx([60 * 2**20 / 200_000, 90 * 2**20 / 200_000])
    assert s["bytes_per_order"] == pytest.approx(90 * 2**20 / 200_000)
    assert s["span"] == [300_000, 500_000]
    assert s["whole_span"] == pytest.approx(150 * 2**20 / 400_000)
    assert slopes([100.0, 160.0], [100_000, 300_000])["bytes_per_order"] == s["steps"][0]


def test_result_name_and_markdown() -> None:
    from datetime import datetime

    assert result_name(datetime(2026, 11, 23, 9), "vm.example.com") == "2026-11-23-vm.json"
    md = markdown(add_ratios(fake_result()))
    assert "| replay, 1 worker | 250,000 | 125,000 | 300,000 | 0.25 | 2.00 (1.25) |" in md
    assert "100 (parent 40; 90 + 80)" in md
    assert "outputs identical: no" in md
    assert "9 (1 missing)" in md
    assert "| orderwatch replay, 1 worker | 100.0 | 160.0 | 230.0 | 367 | 315 / 367 | 341 |" in md
    assert "bytes / order, 300,000 → 500,000 | each step | 100,000 → 500,000 |" in md
    assert "| orderwatch replay, 1 worker | 90,000 | 270,000 | 300.0 | 700.0 | 2,330 |" in md
    assert "| waiting, first 220,000 lines | waiting, first 1,100,000 lines |" in md
    assert "| router + shard trackers, 1 thread | 120,000 | 600,000 | 150.0 | 400.0 | 546 |" in md
    assert "not measured: notifiers not built yet" in md
    assert (
        "| console, 漏发 storm (30,000 firing at the end, daemon RSS 231 MiB) "
        "| 29,000 (1,000 missing) | 40 | 90 |" in md
    )
    assert (
        "| GET /metrics round trip during the storm | 1,500 polls (1 failed) | 0.6 | 12.2 | 66 |"
        in md
    )
    assert (
        "| GET /v1/alerts, recovery on, 1,000,000 orders open | 590 (10 missing) | 50 | 700 |" in md
    )
    assert "| console, recovery on, 1,000,000 orders open | 600 | 40 | 1,100 | 1,500 |" in md
    assert (
        "| GET /v1/alerts, under load (50,000 events/s, daemon 0.46 cores) | 300 | 60 | 140 |" in md
    )
    slow = "console, under load (10,000 events/s, lateness 60 s, daemon 0.25 cores)"
    assert f"| {slow} | 580 | 30 | 70 | 90 |" in md
    assert (
        "recovery on: 1,000,000 preloaded orders read in 25 s before the feed; snapshots every "
        "30s (the default); 8 alerts over 1 s on the console; daemon RSS 410 MiB, state "
        "directory 404 MiB at the end; exit code 0" in md
    )
    assert "Test CPU 9000" in md and "abc1234-dirty" in md
    # where the time goes: shares of the sum, and what the whole replay adds (4 µs at 250k/s)
    assert "| decode + route to shards | 0.90 | 30% | 0.99 (1.98) |" in md
    assert "| sum | 3.00 | 100% | = 333,333 events/s |" in md
    assert "| replay, 1 worker (whole process) | 4.00 |  | +1.00 µs |" in md
    assert "stage split: 12, 11 alert changes (NOT the same as the replays)" in md
    assert "CPU seconds each (first round): process 0 7.50, process 1 6.25" in md
    # sampled shares, as µs of the 1-worker replay's 4 µs per line
    assert "| shard trackers (the rules) | 50.0% | 2.00 |" in md
    assert "| bytewax (engine between steps, operators) | 25.0% | 1.00 |" in md
    assert "| f (orderwatch/domain/tracker.py) | 12.5% | 50.0% |" in md
    assert "profile: 2,000 samples at 250 Hz (0 unreadable)" in md
    assert "the same as the replays'" in md
    empty = fake_result()
    empty["profile"].update(
        samples=0, functions=[], areas=dict.fromkeys(empty["profile"]["areas"], 0.0)
    )
    assert "profile: 0 samples at 250 Hz" in markdown(add_ratios(empty))


COLLAPSED = """\
<module> (orderwatch/__main__.py);run_flow (orderwatch/cluster.py) 3
<module> (orderwatch/__main__.py);run_flow (orderwatch/cluster.py);on_batch (orderwatch/pipelines/orders.py);_apply (orderwatch/domain/tracker.py) 5
<module> (orderwatch/__main__.py);run_flow (orderwatch/cluster.py);route (orderwatch/pipelines/route.py);decode_lines (orderwatch/events.py) 2
<module> (orderwatch/__main__.py);_find_and_load (<frozen importlib._bootstrap>) 1
<module> (orderwatch/__main__.py);run_flow (orderwatch/cluster.py);f (orderwatch/domain/x.py);f (orderwatch/domain/x.py);heappush (heapq.py) 1
<module> (orderwatch/__main__.py);run_flow (orderwatch/cluster.py);g (orderwatch/domain/x.py);g (orderwatch/domain/x.py) 1
a line that is not a stack
"""  # noqa: E501


def test_profile_sums_collapsed_stacks_by_area_and_function() -> None:
    assert parse_frame("sort.<locals>.key (orderwatch/replay.py)") == (
        "sort.<locals>.key",
        "orderwatch/replay.py",
    )
    assert parse_frame("<frozen runpy>") == ("<frozen runpy>", "")
    stacks = read_stacks(COLLAPSED)
    assert [n for _, n in stacks] == [3, 5, 2, 1, 1, 1]
    p = shares(stacks, top=3)
    assert p["samples"] == 13
    # the deepest frame with an area decides: heapq called from the domain is tracking
    assert p["areas"] == {
        "read": 0,
        "decode_route": 2 / 13,
        "track": 7 / 13,
        "alert_output": 0,
        "bytewax": 3 / 13,
        "other": 1 / 13,
    }
    assert p["functions"] == [
        {"function": "_apply (orderwatch/domain/tracker.py)", "self": 5 / 13, "total": 5 / 13},
        {"function": "run_flow (orderwatch/cluster.py)", "self": 3 / 13, "total": 12 / 13},
        {"function": "decode_lines (orderwatch/events.py)", "self": 2 / 13, "total": 2 / 13},
    ]
    whole = {f["function"]: f for f in shares(stacks, top=10)["functions"]}
    assert whole["heappush (heapq.py)"] == {
        "function": "heappush (heapq.py)",
        "self": 1 / 13,
        "total": 1 / 13,
    }
    # a recursive function counts once per sample
    assert whole["g (orderwatch/domain/x.py)"]["total"] == 1 / 13
    assert shares([], top=3) == {
        "samples": 0,
        "areas": dict.fromkeys(p["areas"], 0.0),
        "functions": [],
    }


def test_outputs_compared_byte_for_byte_and_without_annotations(tmp_path: Path) -> None:
    a = {"status": "firing", "labels": {"rule": "r"}, "annotations": {"summary": "ours"}}
    b = {**a, "annotations": {"summary": "theirs"}}
    (tmp_path / "r.jsonl").write_bytes(orjson.dumps(a) + b"\n")
    (tmp_path / "p.jsonl").write_bytes(orjson.dumps(b) + b"\n")
    same = compare_outputs([("1", "h"), ("2", "h")], tmp_path / "r.jsonl", tmp_path / "p.jsonl")
    assert same["identical"] and same["alert_changes"] == 1
    diff = compare_outputs([("1", "h"), ("2", "x")], tmp_path / "r.jsonl", tmp_path / "p.jsonl")
    assert not diff["identical"] and not diff["replays_identical"] and diff["equal_to_plain"]
    (tmp_path / "p.jsonl").write_bytes(b"")
    assert not compare_outputs([("1", "h")], tmp_path / "r.jsonl", tmp_path / "p.jsonl")[
        "identical"
    ]


# ---- latency arithmetic ------------------------------------------------------------------------
def test_latency_from_recorded_timestamps() -> None:
    ts = 1_800_000_000_000
    assert due_s(ts) == 1_800_000_002.5  # ts + 2 s dwell + 500 ms lateness
    due = {"a": 100.0, "b": 200.0, "c": 300.0}
    seen = {"a": 100.1, "b": 200.3, "x": 5.0}
    assert delays_ms(due, seen) == pytest.approx([100.0, 300.0])
    s = summarize(due, seen)
    assert s["count"] == 2 and s["missing"] == 1
    assert s["p50_ms"] == pytest.approx(200.0)
    assert s["p99_ms"] == pytest.approx(298.0)
    assert s["max_ms"] == pytest.approx(300.0)
    assert summarize(due, {})["p99_ms"] is None


def test_orders_are_spread_evenly_over_the_ticks() -> None:
    """10 orders/s at 100 ticks/s: one every 10th tick from the first; 1,000/s at 200: five."""

    def ticks(n: int, per_tick: float) -> list[int]:
        owed, out = 1.0, []
        for _ in range(n):
            new, owed = spread(owed, per_tick)
            out.append(new)
        return out

    trickle = ticks(100, 10 / 100)
    assert [i for i, n in enumerate(trickle) if n] == list(range(0, 100, 10))
    assert set(trickle) == {0, 1}
    assert ticks(200, 1000 / 200) == [1] + [5] * 199
    assert sum(ticks(1000, 3 / 7)) == 429  # 1 + 999 * 3/7, rounded down


def test_vm_rss_is_read_for_a_live_process_and_none_for_a_gone_one() -> None:
    mine = vm_rss_mib(os.getpid())
    assert mine is not None and 1 < mine < 64 * 1024
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert vm_rss_mib(gone.pid) is None


def test_console_lines_are_recognised() -> None:
    line = "🟠 FIRING   warning  lat L000042 at 2026-11-23 09:00:00 +08:00: stuck in paid for 2s"
    m = _FIRING.search(line)
    assert m and m.group(1) == "L000042"
    assert not _FIRING.search("✅ RESOLVED warning  lat L000042 at …")


def test_daemon_config_validates() -> None:
    from orderwatch.config import validate_config

    cfg = daemon_config(Path("/tmp/e.jsonl"), Path("/tmp/state"), 18080)
    validated = validate_config(cfg)
    assert validated.http.port == 18080
    assert not validated.state.recovery
    recovering = validate_config(daemon_config(Path("/tmp/e.jsonl"), Path("/s"), 1, True))
    assert recovering.state.recovery and recovering.state.snapshot_interval == 30_000
    assert validated.lateness == LATENESS_MS
    slow = daemon_config(Path("/e.jsonl"), Path("/s"), 1, lateness_ms=DEFAULT_LATENESS_MS)
    assert validate_config(slow).lateness == validate_config({}).lateness  # the config default


def test_the_load_of_a_busy_run_takes_every_tracker_step_and_fires_nothing() -> None:
    """`busy_order`: valid events of all four order-scoped types, for one order each, through
    the real router and trackers under the busy run's rules: payments counted, outbounds
    counted, statuses moved, and not one alert change, even once the watermark is days on."""
    from orderwatch.config import validate_config
    from orderwatch.connectors.raw import RawChunk
    from orderwatch.domain.rules import GAP_RULES, RuleSet
    from orderwatch.pipelines.orders import flow_steps
    from orderwatch.pipelines.route import DEAD_LETTER_KEY
    from orderwatch.runtime import Runtime

    ts = 1_790_000_000_000
    lines = [line for i in range(50) for line in busy_order(ts + i, f"B{i:09d}")]
    assert len(lines) == 250
    cfg = validate_config(daemon_config(Path("/tmp/e.jsonl"), Path("/tmp/s"), 1, reconcile=True))
    assert RuleSet.from_config(cfg).gaps.keys() == set(GAP_RULES)
    runtime = Runtime(shards=cfg.engine.shards)
    router, build_shard = flow_steps(cfg, runtime, live=False)
    routed = router.route(RawChunk("load", 1, lines))
    assert all(key != DEAD_LETTER_KEY for key, _ in routed)
    shards: dict[str, Any] = {}
    alerts = feed(shards, routed, build_shard)
    alerts += sum(len(logic.on_eof()[0]) for logic in shards.values())  # all applied now
    stats = [logic.tracker.stats for logic in shards.values()]
    assert sum(st.status_counts["allocated"] for st in stats) == 50
    days_on = ts + 3 * 86_400_000  # past every deadline the rules have (gaps: 30 minutes)
    alerts += sum(len(logic.tracker.advance(days_on, final=True)) for logic in shards.values())
    assert alerts == 0
    assert sum(sum(st.payments.values()) for st in stats) == 50
    assert sum(sum(st.wms_outbounds.values()) for st in stats) == 50


def test_preloaded_orders_are_open_distinct_and_in_time_order(tmp_path: Path) -> None:
    """What the recovery run holds open: valid order events, each order once, `created`
    only (no rule of the run watches it), stamped in time order over the 30 s before now."""
    from orderwatch.events import Decoder

    path = tmp_path / "events.jsonl"
    now = 1_790_000_000_000
    preload(path, 2_500, now, chunk=1_000)  # three chunks, the last one short
    lines = path.read_bytes().splitlines()
    assert len(lines) == 2_500
    events, rejected = Decoder().decode_lines(lines, "preload")
    assert not rejected and len(events) == 2_500
    stamps = [ts for ts, _ in events]
    assert stamps == sorted(stamps)
    assert now - PRELOAD_SPAN_MS <= stamps[0] and stamps[-1] < now
    assert {ev.status for _, ev in events} == {"created"}
    assert len({ev.order_id for _, ev in events}) == 2_500
    preload(path, 0, now)
    assert path.read_bytes() == b""


# ---- the launcher ------------------------------------------------------------------------------
def test_launcher_reports_exit_code_and_peak_rss_of_the_child() -> None:
    m = run_measured([sys.executable, "-c", "import sys; print('hi'); sys.exit(3)"])
    assert m.exit_code == 3
    assert m.stdout.strip() == "hi"
    assert m.maxrss_mib > 1 and m.wall_s > 0


def test_launcher_samples_cpu_time_and_orders_cluster_processes() -> None:
    """CPU time per process; the children of a cluster listed by `--process-id`, not pid."""
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    m = run_measured([sys.executable, "-c", burn])
    (root,) = m.procs
    assert root.cpu_s is not None and 0.25 <= root.cpu_s < 5
    procs = [
        Proc(10, 0, 1.0, "orderwatch replay --processes 2"),
        Proc(11, 10, 1.0, "orderwatch replay --process-id 1"),
        Proc(12, 10, 1.0, "orderwatch replay --process-id 0"),
        Proc(13, 10, 1.0, "sh -c true"),
    ]
    kids = Measured(argv=[], wall_s=1, exit_code=0, maxrss_mib=1, procs=procs).descendants()
    assert [p.pid for p in kids] == [12, 11, 13]


def test_a_work_tree_changed_during_the_run_is_flagged() -> None:
    r = add_ratios(fake_result())
    assert "WARNING" not in markdown(r)
    r["code"] = {"changed_during_run": True, "git_commit_at_end": "def5678"}
    assert "WARNING: the work tree changed during the run (now def5678)" in markdown(r)
