"""Inputs of `orderwatch bench`: the mixed simulator stream and the open-orders streams.

Both are cached in the work directory next to a `<file>.params.json` that records how they were
made; a file is reused only when those parameters (and its size) match, so changing `--events`
or this generator's version regenerates it.
"""

from __future__ import annotations

import heapq
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from orderwatch.simulate.timefmt import beijing, utc

#: The fault mix of the benchmark stream: every scenario the simulator has except
#: `wrong_offset` (an 8 h jump of the watermark would make the replay mostly late events).
SCENARIOS: dict[str, float] = {
    "wms_push_lost": 0.01,
    "callback_delay": 0.01,
    "logistics_stall": 0.01,
    "double_ship": 0.005,
    "ship_without_tracking": 0.005,
    "status_jump": 0.005,
    "amount_mismatch": 0.005,
    "duplicate_callback": 0.02,
    "duplicate_payment": 0.005,
    "unpaid_shipment": 0.005,
    "naive_timestamp": 0.002,
    "callback_storm": 0.05,
    "allocation_backlog": 0.05,
}
ORDERS_PER_MINUTE = 600
#: Bump when the open-orders generator changes, so cached files are regenerated.
OPEN_ORDERS_VERSION = 1
#: 2026-11-11T00:00:00+08:00 in epoch ms: the simulator's default start, for the same look.
START_MS = 1_762_790_400_000
#: Open orders are created over 90 minutes: below the 2 h `paid_not_shipped` of the example
#: config, and each order is allocated 60 s after creation, so no rule fires and none ends.
OPEN_SPAN_MS = 90 * 60_000
_CHANNELS = ("tmall", "jd", "douyin", "pdd")
_WAREHOUSES = ("WH-SH-01", "WH-GZ-02", "WH-BJ-03", "WH-CD-04")


def simulate_argv(events: int, out: Path) -> list[str]:
    """The `orderwatch simulate` command that writes the mixed stream."""
    argv = [sys.executable, "-m", "orderwatch", "simulate", "--events", str(events)]
    argv += ["--orders-per-minute", str(ORDERS_PER_MINUTE)]
    for name, share in SCENARIOS.items():
        argv += ["--scenario", f"{name}={share}"]
    return [*argv, "--out", str(out)]


def _cached(path: Path, params: dict[str, Any]) -> bool:
    meta = path.with_name(path.name + ".params.json")
    if not path.is_file() or not meta.is_file():
        return False
    try:
        saved = json.loads(meta.read_text())
    except ValueError:
        return False
    return bool(saved.get("params") == params and saved.get("bytes") == path.stat().st_size)


def _remember(path: Path, params: dict[str, Any], extra: dict[str, Any]) -> None:
    meta = path.with_name(path.name + ".params.json")
    meta.write_text(json.dumps({"params": params, "bytes": path.stat().st_size, **extra}))


def ensure_mixed(work: Path, events: int) -> tuple[Path, dict[str, Any]]:
    """The mixed stream of `events` events in `work` (generated unless cached) and its recipe."""
    work.mkdir(parents=True, exist_ok=True)
    path = work / f"mixed-{events}.jsonl"
    argv = simulate_argv(events, path)
    # The interpreter path is left out of the cache key: a new venv makes the same stream.
    params = {"argv": argv[1:], "kind": "mixed"}
    reused = _cached(path, params)
    info: dict[str, Any] = {"path": str(path), "command": argv, "reused": reused}
    if not reused:
        done = subprocess.run(argv, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"simulate failed: {done.stderr.strip()}")
        _remember(path, params, {"simulator": done.stderr.strip()})
    meta = json.loads(path.with_name(path.name + ".params.json").read_text())
    info["simulator"] = meta.get("simulator", "")
    info["bytes"] = path.stat().st_size
    return path, info


def open_order_events(
    orders: int, *, start_ms: int = START_MS, pushed: bool = True
) -> Iterator[dict[str, Any]]:
    """Five events per order, none terminal, in time order: `orders` orders left open.

    created → payment success (+5 s) → paid (+6 s) → WMS outbound_created (+30 s) → allocated
    (+60 s). Timestamps are written the way the simulator's systems write them (Beijing offset
    for OMS and WMS, `Z` for the payment gateway), ids look like the simulator's.

    `pushed=False` leaves out the WMS event: the warehouse never hears of any order (漏发 for
    every one, an alert storm), so `paid_without_wms` fires for each order paid more than
    10 minutes before the last event, and keeps firing.
    """
    local, zulu = beijing(), utc()
    step = OPEN_SPAN_MS / max(orders, 1)

    def stream(kind: int, offset_ms: int) -> Iterator[tuple[int, int, int]]:
        # Each stream is in time order by itself; heapq.merge interleaves the five lazily.
        return ((start_ms + int(i * step) + offset_ms, kind, i) for i in range(orders))

    offsets = {0: 0, 1: 5_000, 2: 6_000, 3: 30_000, 4: 60_000}
    if not pushed:
        del offsets[3]
    for n, (ts, kind, i) in enumerate(heapq.merge(*(stream(k, o) for k, o in offsets.items()))):
        oid = f"OB20261111{i:08d}"
        eid = f"e{kind}-b0e0b0e0-{n}"
        channel = _CHANNELS[i % len(_CHANNELS)]
        warehouse = _WAREHOUSES[i % len(_WAREHOUSES)]
        amount = f"{100 + i % 900}.00"
        if kind == 0:
            yield {
                "type": "order",
                "event_id": eid,
                "ts": local(ts),
                "order_id": oid,
                "status": "created",
                "channel": channel,
                "source": "oms",
                "amount": amount,
                "buyer_id": f"U{i:09d}",
            }
        elif kind == 1:
            yield {
                "type": "payment",
                "event_id": eid,
                "ts": zulu(ts),
                "order_id": oid,
                "pay_no": f"P20261111b0e0{i:010d}",
                "status": "success",
                "amount": amount,
            }
        elif kind == 2:
            yield {
                "type": "order",
                "event_id": eid,
                "ts": local(ts),
                "order_id": oid,
                "status": "paid",
                "channel": channel,
                "source": "oms",
                "amount": amount,
            }
        elif kind == 3:
            yield {
                "type": "wms",
                "event_id": eid,
                "ts": local(ts),
                "order_id": oid,
                "action": "outbound_created",
                "wms_order_no": f"WO261111{i:08d}",
                "warehouse": warehouse,
            }
        else:
            yield {
                "type": "order",
                "event_id": eid,
                "ts": local(ts),
                "order_id": oid,
                "status": "allocated",
                "channel": channel,
                "source": "oms",
                "warehouse": warehouse,
            }


def write_open_orders(path: Path, orders: int, *, pushed: bool = True) -> int:
    """Write `open_order_events(orders, pushed=...)` as JSON lines; the number of lines."""
    dumps, option = orjson.dumps, orjson.OPT_APPEND_NEWLINE
    lines = 0
    buf: list[bytes] = []
    with path.open("wb") as f:
        for event in open_order_events(orders, pushed=pushed):
            buf.append(dumps(event, option=option))
            if len(buf) >= 8192:
                f.write(b"".join(buf))
                lines += len(buf)
                buf.clear()
        f.write(b"".join(buf))
        lines += len(buf)
    return lines


def ensure_open_orders(
    work: Path, orders: int, *, pushed: bool = True
) -> tuple[Path, dict[str, Any]]:
    """The open-orders stream of `orders` orders in `work` (generated unless cached);
    `pushed=False`: the one where no order reaches the warehouse."""
    work.mkdir(parents=True, exist_ok=True)
    kind = "open_orders" if pushed else "unpushed_orders"
    path = work / f"{kind.replace('_', '-')}-{orders}.jsonl"
    params = {"kind": kind, "orders": orders, "version": OPEN_ORDERS_VERSION}
    reused = _cached(path, params)
    if not reused:
        write_open_orders(path, orders, pushed=pushed)
        _remember(path, params, {})
    return path, {
        "path": str(path),
        "orders": orders,
        "reused": reused,
        "bytes": path.stat().st_size,
        "events_per_order": 5 if pushed else 4,
    }
