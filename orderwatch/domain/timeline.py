"""An order's recent events (its 状态溯源 timeline), packed into one bytes blob per order.

Keeping the decoded event structs would cost ~300 bytes per event per open order (each with
its own strings, ints and Decimal); a packed record is ~50. Each record is a msgpack array
`[ts, kind, what, ident, amount, place, source, event_id, note]` behind a 2-byte length.
Records are only unpacked to answer the API or to word an alert.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from orderwatch.events import LogisticsEvent, OrderEvent, PaymentEvent, WmsEvent

KINDS = ("order", "payment", "wms", "logistics")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple).decode


class Entry(NamedTuple):
    ts: int
    kind: str
    what: str  # order status, payment status, WMS action or logistics node
    ident: str | None  # tracking_no, pay_no or wms_order_no
    amount: str | None
    place: str | None  # warehouse (order, WMS) or carrier (logistics)
    source: str | None
    event_id: str | None
    note: str | None  # late, repeated, illegal ...
    status: str | None  # the order's status after this event

    def describe(self) -> str:
        """One human line: `payment success P123 299.00`, `wms picked WO1 @WH-SH-01`."""
        parts = [self.kind, self.what]
        if self.kind == "order":
            parts += [
                f"amount={self.amount}" if self.amount else "",
                f"tracking={self.ident}" if self.ident else "",
                f"({self.source or 'oms'})",
            ]
        elif self.kind == "wms":
            parts += [self.ident or "", f"@{self.place}" if self.place else ""]
        else:
            parts += [self.ident or "", self.amount or "", self.place or ""]
        return " ".join(p for p in parts if p)


def pack(ts: int, ev: Any, note: str | None = None) -> bytes:
    """One record, length prefix included."""
    t = type(ev)
    if t is OrderEvent:
        row = (ts, 0, ev.status, ev.tracking_no, _amount(ev.amount), ev.warehouse)
    elif t is PaymentEvent:
        row = (ts, 1, ev.status, ev.pay_no, _amount(ev.amount), None)
    elif t is WmsEvent:
        row = (ts, 2, ev.action, ev.wms_order_no, None, ev.warehouse)
    elif t is LogisticsEvent:
        row = (ts, 3, ev.node, ev.tracking_no, None, ev.carrier)
    else:
        raise TypeError(f"not an order-scoped event: {t.__name__}")
    body = _encode((*row, ev.source, ev.event_id, note))
    return len(body).to_bytes(2, "big") + body


def append(blob: bytes, count: int, record: bytes, keep: int) -> tuple[bytes, int, str | None]:
    """`blob` (holding `count` records) plus `record`, the oldest dropped beyond `keep`.

    Returns the new blob, its record count, and the order status set by the dropped record
    when it was an order event (the status before the oldest kept one), else None.
    """
    blob += record
    count += 1
    if count <= keep:
        return blob, count, None
    size = int.from_bytes(blob[:2], "big")
    head = _row(blob, 0)
    return blob[2 + size :], count - 1, head[2] if head[1] == 0 else None


def renote(blob: bytes, record: bytes, ts: int, ev: Any, note: str) -> bytes:
    """Replace the last record (`record`, just appended) by one carrying `note`."""
    return blob[: len(blob) - len(record)] + pack(ts, ev, note)


def entries(blob: bytes, status_before: str | None) -> list[Entry]:
    """The kept events, oldest first, each with the order status after it."""
    out = []
    status = status_before
    for start in _starts(blob):
        ts, kind, what, ident, amount, place, source, event_id, note = _row(blob, start)
        if kind == 0:
            status = what
        out.append(
            Entry(ts, KINDS[kind], what, ident, amount, place, source, event_id, note, status)
        )
    return out


def _starts(blob: bytes) -> list[int]:
    starts, pos, n = [], 0, len(blob)
    while pos < n:
        starts.append(pos)
        pos += 2 + int.from_bytes(blob[pos : pos + 2], "big")
    return starts


def _row(blob: bytes, start: int) -> tuple[Any, ...]:
    size = int.from_bytes(blob[start : start + 2], "big")
    return _decode(blob[start + 2 : start + 2 + size])


def _amount(value: Any) -> str | None:
    return None if value is None else str(value)
