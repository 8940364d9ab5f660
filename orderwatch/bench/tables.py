"""The bench result as tables: rich on the terminal, Markdown for `bench/results/latest.md`.

Both are built from the same rows, taken from the result dictionary alone (so a result JSON
can be re-rendered later).
"""

from __future__ import annotations

from typing import Any

Rows = list[list[str]]
LABELS = {
    "1_worker": "replay, 1 worker",
    "2_workers": "replay, 2 workers",
    "2_processes": "replay, 2 processes",
}


LEGEND = """\
events/s = input lines ÷ wall seconds of the whole process (start-up, sorting the alert file
included); *in-process /s* = the replay's own summary (`lines ÷ seconds`) or the plain script's
own figure; × = ratio to the yardstick of the same run, best (median) when repeated; peak RSS =
`ru_maxrss` of the process (`os.wait4`), for 2 processes the largest one, then the parent's and
each worker's VmHWM sampled from /proc; bytes / order = (peak RSS₂ − peak RSS₁) ÷ (N₂ − N₁)
between the two largest inputs whose orders all stay open (a 2× step), each step between
neighbours and the whole span beside it;
bytes / firing alert and bytes / waiting event the same over alerts still firing at the end of
replays in which no order reaches the warehouse, and over events held unapplied by the replay's
router and trackers (`python -m orderwatch.bench.waiting`, a lateness beyond the input's span)
after the first fifth and all of the mixed input's lines; latency = from the moment the
watermark passes an alert's deadline to its first sighting; where the time goes = `python -m
orderwatch.bench.stages`: the replay's own steps called in one thread without bytewax, each over
the whole input before the next, seconds best (median) of the rounds; its last row is the
1-worker replay's wall time per line, and the difference what bytewax, start-up and the alert
file add; samples = one more 1-worker replay under `py-spy record` (250 Hz): each sample counts
for the area of its deepest frame that has one, µs / line = that share of the measured 1-worker
replay's time; own = samples whose innermost Python frame is the function (C calls it makes
included), with callees = samples with the function anywhere on the stack.
"""


def _num(v: float | None, fmt: str = ",.0f") -> str:
    return "—" if v is None else format(v, fmt)


def _ratio(r: dict[str, Any]) -> str:
    best, median = r.get("best"), r.get("median")
    if best is None:
        return "—"
    shown, other = f"{best:.2f}", "" if median is None else f"{median:.2f}"
    return shown if other in ("", shown) else f"{shown} ({other})"


def throughput_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    head = [
        "run",
        "events/s (best)",
        "median",
        "in-process /s",
        "× parse-only",
        "× plain",
        "peak RSS MiB",
    ]
    ys = result["yardsticks"]
    parse, plain = ys["parse_only"], ys["plain_rules"]
    rows: Rows = [
        [
            "orjson parse-only loop",
            _num(parse["lines_per_s"]["best"]),
            _num(parse["lines_per_s"]["median"]),
            "—",
            "1.00",
            "—",
            "—",
        ],
        [
            "bench/plain_rules.py",
            _num(plain["events_per_s"]["best"]),
            _num(plain["events_per_s"]["median"]),
            _num(plain.get("self_reported_events_per_s")),
            _ratio(plain["ratios"]["x_parse_only"]),
            "1.00",
            _num(plain["peak_rss_mib"], ".0f"),
        ],
    ]
    for key, entry in result["replay"].items():
        rss = _num(entry["peak_rss_mib"], ".0f")
        kids = entry.get("children_hwm_mib") or []
        if kids:
            parts = " + ".join(f"{k:.0f}" for k in kids)
            rss = f"{rss} (parent {_num(entry.get('parent_hwm_mib'), '.0f')}; {parts})"
        rows.append(
            [
                LABELS.get(key, key),
                _num(entry["events_per_s"]["best"]),
                _num(entry["events_per_s"]["median"]),
                _num(entry["in_process_events_per_s"]["best"]),
                _ratio(entry["ratios"]["x_parse_only"]),
                _ratio(entry["ratios"]["x_plain"]),
                rss,
            ]
        )
    return head, rows


def memory_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    oo = result.get("open_orders")
    if not oo:
        return [], []
    sizes = oo["orders"]
    head = ["open orders", *(f"peak RSS, {n:,} (MiB)" for n in sizes)]
    head.append(f"bytes / order, {sizes[-2]:,} → {sizes[-1]:,}")
    steps = len(sizes) > 2
    if steps:
        head += ["each step", f"{sizes[0]:,} → {sizes[-1]:,}"]
    rows: Rows = []
    for key, label in (("orderwatch", "orderwatch replay, 1 worker"), ("plain", "plain_rules.py")):
        e = oo[key]
        row = [label, *(_num(v, ".1f") for v in e["peak_rss_mib"]), _num(e["bytes_per_order"])]
        if steps:
            row.append(" / ".join(_num(v) for v in e.get("steps", [])))
            row.append(_num(e.get("whole_span")))
        rows.append(row)
    return head, rows


def storm_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    st = result.get("alert_storm")
    if not st:
        return [], []
    sizes = st["orders"]
    head = [
        "no order pushed to WMS",
        *(f"firing, {n:,} orders" for n in sizes),
        *(f"peak RSS, {n:,} (MiB)" for n in sizes),
        "bytes / firing alert",
    ]
    row = [
        "orderwatch replay, 1 worker",
        *(_num(v) for v in st["firing_at_end"]),
        *(_num(v, ".1f") for v in st["peak_rss_mib"]),
        _num(st["bytes_per_firing_alert"]),
    ]
    return head, [row]


def waiting_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    w = result.get("waiting_events")
    if not w:
        return [], []
    head = [
        "events waiting for the watermark",
        *(f"waiting, first {n:,} lines" for n in w["lines"]),
        *(f"peak RSS, {n:,} lines (MiB)" for n in w["lines"]),
        "bytes / waiting event",
    ]
    row = [
        "router + shard trackers, 1 thread",
        *(_num(v) for v in w["waiting"]),
        *(_num(v, ".1f") for v in w["peak_rss_mib"]),
        _num(w["bytes_per_waiting_event"]),
    ]
    return head, [row]


STAGE_LABELS = {
    "read": "read lines (file source)",
    "decode_route": "decode + route to shards",
    "track": "shard trackers (the rules)",
}


def stage_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    st = result.get("stages")
    if not st:
        return [], []
    head = ["where the time goes (1 thread, no bytewax)", "µs / line", "share", "seconds"]
    per_line = st["us_per_line"]
    total = sum(per_line.values())
    rows: Rows = [
        [
            STAGE_LABELS.get(k, k),
            f"{us:.2f}",
            f"{us / total:.0%}",
            _ratio(st["seconds"][k]),
        ]
        for k, us in per_line.items()
    ]
    rows.append(["sum", f"{total:.2f}", "100%", f"= {_num(st['events_per_s_if_alone'])} events/s"])
    one = result["replay"].get("1_worker", {}).get("events_per_s", {}).get("best")
    if one:
        whole = 1e6 / one
        rows.append(
            ["replay, 1 worker (whole process)", f"{whole:.2f}", "", f"{whole - total:+.2f} µs"]
        )
    return head, rows


PROFILE_LABELS = {
    **STAGE_LABELS,
    "alert_output": "alert file (write, then sort)",
    "bytewax": "bytewax (engine between steps, operators)",
    "other": "start-up (imports, config, building the flow)",
}


def _profiled(result: dict[str, Any]) -> dict[str, Any] | None:
    p = result.get("profile")  # shown even with no samples: a profile that saw nothing is news
    return p if p and not p.get("skipped") else None


def profile_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    """Per area of the code, its share of a 1-worker replay's samples and the µs per line that
    share is of the measured (unprofiled) 1-worker replay."""
    p = _profiled(result)
    if p is None:
        return [], []
    head = ["where a 1-worker replay's samples fall (py-spy)", "share", "≈ µs / line"]
    one = result["replay"].get("1_worker", {}).get("events_per_s", {}).get("best")
    per_line = 1e6 / one if one else None
    rows: Rows = [
        [
            PROFILE_LABELS.get(area, area),
            f"{share:.1%}",
            "—" if per_line is None else f"{share * per_line:.2f}",
        ]
        for area, share in p["areas"].items()
    ]
    return head, rows


def function_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    p = _profiled(result)
    if p is None:
        return [], []
    head = ["function (py-spy, heaviest own time)", "own", "with callees"]
    return head, [[f["function"], f"{f['self']:.1%}", f"{f['total']:.1%}"] for f in p["functions"]]


def latency_rows(result: dict[str, Any]) -> tuple[list[str], Rows]:
    lat = result.get("latency") or {}
    head = ["alert latency after the watermark", "alerts", "p50 ms", "p99 ms", "max ms"]
    if not lat or lat.get("skipped"):
        return head, [["(skipped)", "", "", "", ""]]
    rows = _sightings(lat)
    rows.append(["notifier HTTP request", lat["notifier"], "", "", ""])
    for key, lateness in (
        ("busy_latency", ""),
        ("busy_latency_default_lateness", ", lateness 60 s"),
    ):
        busy = result.get(key) or {}
        if busy and not busy.get("skipped"):
            cores = busy.get("daemon_cores")
            load = f"{busy['busy_events_per_s']:,.0f} events/s{lateness}" + (
                "" if cores is None else f", daemon {cores:.2f} cores"
            )
            rows += _sightings(busy, f"under load ({load})")
    storm = result.get("storm_latency") or {}
    if storm and not storm.get("skipped"):
        c, h = storm["console"], storm["scrape_ms"]
        count = f"{c['count']:,}" + (f" ({c['missing']:,} missing)" if c["missing"] else "")
        rss = storm.get("daemon_rss_mib")
        held = "" if rss is None else f", daemon RSS {rss:,.0f} MiB"
        label = f"console, 漏发 storm ({storm['firing_at_end']:,} firing at the end{held})"
        rows.append([label, count, _num(c["p50_ms"]), _num(c["p99_ms"]), _num(c["max_ms"])])
        polls = f"{h['polls']:,} polls" + (
            f" ({storm['poll_errors']} failed)" if storm["poll_errors"] else ""
        )
        trip = "GET /metrics round trip during the storm"
        rows.append([trip, polls, _num(h["p50"], ".1f"), _num(h["p99"], ".1f"), _num(h["max"])])
    rec = result.get("recovery_latency") or {}
    if rec and not rec.get("skipped"):
        rows += _sightings(rec, f"recovery on, {rec['open_orders']:,} orders open")
    return head, rows


def _sightings(run: dict[str, Any], condition: str | None = None) -> Rows:
    """A live run's API and console rows, labelled with what the run was under, if anything
    but the plain trickle."""
    rows: Rows = []
    labels = ("GET /v1/alerts", "console (stdout)" if condition is None else "console")
    for key, label in zip(("api", "console"), labels, strict=True):
        s = run[key]
        count = f"{s['count']:,}" + (f" ({s['missing']:,} missing)" if s["missing"] else "")
        shown = label if condition is None else f"{label}, {condition}"
        rows.append([shown, count, _num(s["p50_ms"]), _num(s["p99_ms"]), _num(s["max_ms"])])
    return rows


def footer(result: dict[str, Any]) -> list[str]:
    m, out = result["machine"], result["outputs"]
    lines = [
        f"outputs identical: {'yes' if out['identical'] else 'no'} ({out['detail']})",
        f"input: {result['input']['lines']:,} lines, {result['input']['bytes'] / 2**20:.0f} MiB "
        f"(simulator, all fault scenarios); repeats: {result['parameters']['repeat']}",
        f"machine: {m['cpu_model']}, {m['cores']} cores, {m['memory_mib']:,} MiB, {m['os']}, "
        f"Python {m['python']}, bytewax {m['bytewax']}; commit {result['git_commit']}",
    ]
    st = result.get("stages")
    if st:
        same = set(st["alert_changes"]) == {out.get("alert_changes")}
        lines.append(
            f"stage split: {', '.join(f'{n:,}' for n in st['alert_changes'])} alert changes "
            f"({'the same as' if same else 'NOT the same as'} the replays)"
        )
    p = _profiled(result)
    if p is not None:
        lines.append(
            f"profile: {p['samples']:,} samples at {p['rate_hz']} Hz ({p['errors']} unreadable), "
            f"profiled replay {p['wall_s']:.1f} s, alerts "
            f"{'the same as' if p.get('same_alerts') else 'NOT the same as'} the replays'; "
            f"stacks: {p['raw']} (collapsed format: speedscope.app or flamegraph.pl read it)"
        )
    cpu = (result["replay"].get("2_processes") or {}).get("children_cpu_s") or []
    if cpu and None not in cpu:
        shares = ", ".join(f"process {i} {c:.2f}" for i, c in enumerate(cpu))
        lines.append(f"2 processes, CPU seconds each (first round): {shares}")
    if (result.get("code") or {}).get("changed_during_run"):
        lines.append(
            "WARNING: the work tree changed during the run (now "
            f"{result['code']['git_commit_at_end']}): figures may mix two versions"
        )
    rec = result.get("recovery_latency") or {}
    if rec and not rec.get("skipped"):
        lines.append(
            f"recovery on: {rec['open_orders']:,} preloaded orders read in "
            f"{_num(rec['catch_up_s'])} s before the feed; snapshots every "
            f"{rec['parameters']['snapshot_interval']}; "
            f"{rec['console_over_1s']} alerts over 1 s on the console; daemon RSS "
            f"{_num(rec['daemon_rss_mib'])} MiB, state directory {rec['state_mib']:,.0f} MiB "
            f"at the end; exit code {rec['exit_code']}"
        )
    lat = result.get("latency") or {}
    if lat and not lat.get("skipped"):
        lines.append(f"daemon exit code after SIGTERM: {lat['exit_code']}")
        if lat.get("poll_errors"):
            first = (lat.get("poll_error_samples") or ["?"])[0]
            lines.append(
                f"API polls that failed: {lat['poll_errors']} of "
                f"{lat['poll_errors'] + lat['polls']} (first: {first})"
            )
    return lines


def markdown(result: dict[str, Any]) -> str:
    def table(head: list[str], rows: Rows) -> str:
        if not head:
            return ""
        out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
        return "\n".join(out) + "\n"

    parts = [
        f"# orderwatch bench, {result['date']} on {result['machine']['hostname']}\n",
        f"`{result['parameters']['command']}`\n",
    ]
    for head, rows in (
        throughput_rows(result),
        stage_rows(result),
        profile_rows(result),
        function_rows(result),
        memory_rows(result),
        storm_rows(result),
        waiting_rows(result),
        latency_rows(result),
    ):
        if head:
            parts.append(table(head, rows))
    parts.append("\n".join(f"- {line}" for line in footer(result)) + "\n")
    parts.append(LEGEND)
    return "\n".join(parts)


def print_tables(result: dict[str, Any]) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    # Piped output would be cut to 80 columns; the table needs about 120.
    console = Console(width=None if sys.stdout.isatty() else 130)
    for title, (head, rows) in (
        ("throughput (events/s = lines ÷ wall seconds of the process)", throughput_rows(result)),
        ("where the time goes", stage_rows(result)),
        ("where the time goes, sampled", profile_rows(result)),
        ("heaviest functions", function_rows(result)),
        ("memory per open order", memory_rows(result)),
        ("memory per firing alert (the order it is about included)", storm_rows(result)),
        ("memory per event waiting for the watermark (lateness × rate)", waiting_rows(result)),
        ("live alert latency", latency_rows(result)),
    ):
        if not head:
            continue
        t = Table(title=title, title_justify="left")
        for i, h in enumerate(head):
            t.add_column(h, justify="left" if i == 0 else "right")
        for r in rows:
            t.add_row(*r)
        console.print(t)
    for line in footer(result):
        console.print(line, highlight=False)
