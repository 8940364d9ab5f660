"""Building blocks for tests: events as JSON lines, configs, and a one-shard replay."""

from __future__ import annotations

import functools
import pickle
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import orjson

from orderwatch.config import Config, validate_config
from orderwatch.domain import packing, timeline
from orderwatch.domain.alert import AlertChange
from orderwatch.domain.order import OrderRec, new_order
from orderwatch.domain.packing import Packer
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from orderwatch.events import (
    AccessLogEvent,
    Decoded,
    Decoder,
    OrderEvent,
    OrderScoped,
    PaymentEvent,
    Rejected,
    WmsEvent,
)

CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 11, 0, 0, tzinfo=CST)
BASE = int(T0.timestamp() * 1000)
SEC, MIN, HOUR = 1000, 60_000, 3_600_000

CONTRACT_RULES: dict[str, Any] = {
    "stuck": [
        {
            "name": "paid_not_allocated",
            "statuses": ["paid"],
            "max_dwell": "30m",
            "severity": "warning",
        },
        {
            "name": "paid_not_shipped",
            "statuses": ["paid", "allocated", "label_printed"],
            "max_dwell": "2h",
            "severity": "critical",
        },
        {
            "name": "logistics_stalled",
            "statuses": ["shipped", "in_transit"],
            "max_dwell": "48h",
            "since": "last_update",
            "severity": "critical",
        },
    ],
    "gaps": {
        "paid_without_wms": {"within": "10m", "severity": "critical"},
        "wms_without_payment": {"within": "10m", "severity": "warning"},
        "payment_not_applied": {"within": "5m", "severity": "critical"},
    },
    "anomalies": {"severity": "warning"},
}


def config(rules: dict[str, Any] | None = None, **top: Any) -> Config:
    return validate_config({"rules": rules if rules is not None else CONTRACT_RULES, **top})


def iso(ms: int, tz: timezone = CST) -> str:
    return datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")


def event(
    kind: str, at: int, order_id: str | None = None, *, ts: Any = None, **fields: Any
) -> bytes:
    """One JSON line; `at` is ms after T0, rendered as RFC 3339 +08:00 unless `ts` is given."""
    body: dict[str, Any] = {"type": kind, "ts": ts if ts is not None else iso(BASE + at)}
    if order_id is not None:
        body["order_id"] = order_id
    body.update(fields)
    return orjson.dumps(body)


def order(at: int, oid: str, status: str, **kw: Any) -> bytes:
    return event("order", at, oid, status=status, **kw)


def payment(at: int, oid: str, pay_no: str = "P1", status: str = "success", **kw: Any) -> bytes:
    return event("payment", at, oid, pay_no=pay_no, status=status, **kw)


def wms(at: int, oid: str, action: str = "outbound_created", **kw: Any) -> bytes:
    return event("wms", at, oid, action=action, **kw)


def scan(at: int, oid: str, node: str = "in_transit", **kw: Any) -> bytes:
    return event("logistics", at, oid, node=node, **kw)


def decoded_only(d: Decoded | Rejected) -> Decoded:
    """`d`, which the test expects to be valid."""
    assert isinstance(d, Decoded), d
    return d


def order_scoped(d: Decoded | Rejected) -> tuple[int, OrderScoped]:
    """`(ts_ms, event)` of a decoded order-scoped event; fails on anything else."""
    assert isinstance(d, Decoded) and not isinstance(d.event, AccessLogEvent), d
    return d.ts_ms, d.event


def decode_all(lines: list[bytes], cfg: Config | None = None) -> list[Decoded]:
    cfg = cfg or config()
    dec = Decoder(cfg.status_map)
    out = []
    for i, raw in enumerate(lines):
        d = dec.decode(raw, "test", str(i + 1))
        assert isinstance(d, Decoded), d
        out.append(d)
    return out


def track(
    lines: list[bytes],
    cfg: Config | None = None,
    *,
    until: int | None = None,
    tracker: ShardTracker | None = None,
) -> list[AlertChange]:
    """Feed lines into one tracker, then move the watermark to `until` (ms after T0; what is
    due before it fires) or to the end of the input (what is due at or before it fires)."""
    cfg = cfg or config()
    tracker = tracker or ShardTracker(RuleSet.from_config(cfg))
    events = decode_all(lines, cfg)
    for d in events:
        tracker.ingest(*order_scoped(d))
    if until is not None:
        return tracker.advance(BASE + until)
    return tracker.advance(max(d.ts_ms for d in events), final=True)


_PACK_IDLE = ShardTracker._pack_idle  # as defined, even while a test patches it


def pack_everything(tracker: ShardTracker) -> None:
    """Pack every unpacked order now, busy or not (the most packing `pack_after` could do)."""
    tracker._busy.clear()
    _PACK_IDLE(tracker)


def summary(alerts: list[AlertChange]) -> list[tuple[str, str, str, int, int | None]]:
    """(status, rule, order, startsAt, endsAt) relative to T0, sorted like the replay file."""
    return [
        (
            a.status,
            a.labels["rule"],
            a.labels.get("order_id", ""),
            a.starts_at - BASE,
            None if a.ends_at is None else a.ends_at - BASE,
        )
        for a in sorted(alerts, key=AlertChange.sort_key)
    ]


def utc_iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


# --- packed orders ---------------------------------------------------------------------------


def typical_order(i: int) -> OrderRec:
    """An order as a shop has thousands of: created, paid, pushed to the warehouse."""
    oid, t = f"PS2026111100{i:06d}", BASE + 37 * i
    rec = new_order(oid, t, slot=i)
    rec.status, rec.channel, rec.warehouse = "allocated", "tmall", f"WH-SH-0{i % 4}"
    rec.payable, rec.paid_at, rec.wms_at = 100 * (i % 500), t + 5000, t + 30_000
    rec.pay_nos, rec.paid = (f"P20261111{i:010d}",), (100 * (i % 500),)
    events: list[OrderScoped] = [
        OrderEvent(t, oid, "created", f"ord-{i}-1", "tmall", None, Decimal(i % 500), source="oms"),
        PaymentEvent(t + 5000, oid, f"P20261111{i:010d}", "success", Decimal(i % 500), f"pay-{i}"),
        WmsEvent(t + 30_000, oid, "outbound_created", f"WO{i:08d}", "WH-SH-01", f"wms-{i}"),
    ]
    for ev in events:
        record = timeline.pack(int(ev.ts), ev)
        rec.log, rec.log_n, _ = timeline.append(rec.log, rec.log_n, record, 20)
    rec.due = t + 3_600_000
    return rec


def trained(packer: Packer) -> list[bytes]:
    """Pack enough orders for `packer` to train its dictionary, and wait until it is in;
    their (raw) blobs."""
    blobs = [packer.pack(typical_order(i)) for i in range(packing.TRAIN_ON)]
    packer.settle()
    return blobs


@functools.cache
def _trained_state() -> bytes:
    packer = Packer()
    trained(packer)
    return pickle.dumps(packer)


def trained_packer(compress: bool = True) -> Packer:
    """A fresh packer that compresses from the first order (its dictionary learnt elsewhere).
    Stands in for `Packer(compress)` in tests; `compress` is ignored."""
    packer: Packer = pickle.loads(_trained_state())
    return packer
