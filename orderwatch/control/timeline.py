"""An order's tracked timeline (状态溯源) as JSON, read from the shard that owns the order.

The tracker belongs to a dataflow worker thread; this module only reads it: the record's
fields are plain values and its log is copied before it is walked.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from orderwatch.domain.alert import AlertChange, rfc3339_ms
from orderwatch.domain.money import show
from orderwatch.domain.order import OrderRec, payment_list
from orderwatch.domain.timeline import Entry, entries
from orderwatch.domain.tracker import ShardTracker
from orderwatch.pipelines.route import shard_keys, shard_of
from orderwatch.runtime import Runtime


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_iso(ms: int, zone: str) -> str:
    """Epoch ms as RFC 3339 in the display zone (`2026-01-20T08:00:00.000+08:00`)."""
    return datetime.fromtimestamp(ms / 1000, _zone(zone)).isoformat(timespec="milliseconds")


def _times(out: dict[str, Any], name: str, ms: int | None, zone: str) -> None:
    out[name] = None if ms is None else rfc3339_ms(ms)
    out[f"{name}_local"] = None if ms is None else local_iso(ms, zone)


def shard_key(runtime: Runtime, order_id: str) -> str:
    return shard_keys(runtime.shards)[shard_of(order_id, runtime.shards)]


def find_order(runtime: Runtime, order_id: str) -> tuple[str, ShardTracker | None, OrderRec | None]:
    """The order's shard key, that shard's tracker in this process, and the order's record."""
    key = shard_key(runtime, order_id)
    tracker = runtime.trackers.get(key)
    rec = tracker.record(order_id) if tracker is not None else None
    return key, tracker, rec


def _event(e: Entry, zone: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": e.kind,
        "what": e.what,
        "source": e.source,
        "event_id": e.event_id,
        "description": e.describe(),
        "status_after": e.status,
        "note": e.note,
        "ident": e.ident,
        "amount": e.amount,
        "place": e.place,
    }
    _times(out, "ts", e.ts, zone)
    return out


def timeline(
    order_id: str,
    rec: OrderRec,
    tracker: ShardTracker,
    known: list[AlertChange],
    zone: str,
    watermark: int | None,
) -> dict[str, Any]:
    """Everything orderwatch knows about one order, oldest event first; `known` is what the
    alert store remembers of it (`AlertStore.for_order`), `watermark` its shard's now."""
    log = entries(rec.log, rec.log_n, rec.log_status)
    out: dict[str, Any] = {
        "order_id": order_id,
        "status": rec.status or "unknown",
        "channel": rec.channel,
        "warehouse": rec.warehouse,
        "payable": None if rec.payable is None else show(rec.payable),
        "tracking": rec.tracking,
        "payments": {k: None if v is None else show(v) for k, v in payment_list(rec)},
        "timezone": zone,
    }
    _times(out, "since", rec.since if rec.status else None, zone)
    _times(out, "paid_at", rec.paid_at, zone)
    _times(out, "wms_at", rec.wms_at, zone)
    _times(out, "closed_at", rec.closed_at, zone)
    _times(out, "last_update", rec.last_update, zone)
    _times(out, "last_seen", rec.seen, zone)
    _times(out, "watermark", watermark, zone)
    out["alerts"] = [a.to_json() for a in known if a.status == "firing" and not a.one_shot]
    out["anomalies"] = [a.to_json() for a in known if a.one_shot]
    out["resolved_alerts"] = [a.to_json() for a in known if a.status == "resolved"]
    out["events_kept"] = tracker.rules.timeline_events
    out["events"] = [_event(e, zone) for e in log]
    return out
