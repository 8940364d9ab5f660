"""An order's recent events (its 状态溯源 timeline), packed into one bytes blob per order.

Keeping the decoded event structs would cost ~300 bytes per event per open order (each with
its own strings, ints and Decimal); a packed record is ~45. Each record is a msgpack array
`[ts, kind, what, ident, amount, place, source, event_id, note]`, trailing nils left out,
`what` as its index in the kind's closed vocabulary. Records are simply concatenated: the
blob plus an array header for their count decodes in one call. Records are only unpacked to
answer the API, to word an alert, or to drop the oldest one.
"""

from __future__ import annotations

from typing import Any, NamedTuple, get_args, get_type_hints

import msgspec

from orderwatch.domain.lifecycle import STATUSES
from orderwatch.events import LogisticsEvent, OrderEvent, PaymentEvent, WmsEvent

KINDS = ("order", "payment", "wms", "logistics")
#: Per kind, the values `what` can take (order statuses are canonical once decoded). Their
#: order is part of the snapshot format: append only.
WHATS: tuple[tuple[str, ...], ...] = (
    STATUSES,
    get_args(get_type_hints(PaymentEvent)["status"]),
    get_args(get_type_hints(WmsEvent)["action"]),
    get_args(get_type_hints(LogisticsEvent)["node"]),
)
_CODES = tuple({w: i for i, w in enumerate(words)} for words in WHATS)
_ORDER_CODES, _PAYMENT_CODES, _WMS_CODES, _LOGISTICS_CODES = _CODES
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(tuple).decode
_FIELDS = 9
_EVENT_ID = 7  # position of event_id in a record


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
                f"({self.source})" if self.source else "",  # none given: none invented
            ]
        elif self.kind == "wms":
            parts += [self.ident or "", f"@{self.place}" if self.place else ""]
        else:
            parts += [self.ident or "", self.amount or "", self.place or ""]
        return " ".join(p for p in parts if p)


def pack(ts: int, ev: Any, note: str | None = None) -> bytes:
    """One record."""
    t = type(ev)  # (the vocabulary look-ups inline: this runs for every event)
    if t is OrderEvent:
        amount = None if ev.amount is None else str(ev.amount)
        what = _ORDER_CODES.get(ev.status, ev.status)
        row = [ts, 0, what, ev.tracking_no, amount, ev.warehouse]
    elif t is PaymentEvent:
        amount = None if ev.amount is None else str(ev.amount)
        row = [ts, 1, _PAYMENT_CODES.get(ev.status, ev.status), ev.pay_no, amount, None]
    elif t is WmsEvent:
        row = [ts, 2, _WMS_CODES.get(ev.action, ev.action), ev.wms_order_no, None, ev.warehouse]
    elif t is LogisticsEvent:
        row = [ts, 3, _LOGISTICS_CODES.get(ev.node, ev.node), ev.tracking_no, None, ev.carrier]
    else:
        raise TypeError(f"not an order-scoped event: {t.__name__}")
    if note is None and ev.event_id is not None:  # the common case: nothing to trim
        row += (ev.source, ev.event_id)
        return _encode(row)
    row += (ev.source, ev.event_id, note)
    while row[-1] is None:
        row.pop()
    return _encode(row)


class Dropped(NamedTuple):
    """What the timeline forgets when its oldest record goes."""

    status: str | None  # the order status it set (an order event), else None
    event_id: str | None
    ts: int


def append(blob: bytes, count: int, record: bytes, keep: int) -> tuple[bytes, int, Dropped | None]:
    """`blob` (holding `count` records) plus `record`, the oldest dropped beyond `keep`.

    Returns the new blob, its record count, and what the dropped record held, if one was.
    """
    blob += record
    count += 1
    if count <= keep:
        return blob, count, None
    head = _rows(blob, count)[0]
    # msgspec writes every value in its shortest form, so the head re-encodes to its size
    status = _word(head[1], head[2]) if head[1] == 0 else None
    event_id = head[_EVENT_ID] if len(head) > _EVENT_ID else None
    return blob[len(_encode(head)) :], count - 1, Dropped(status, event_id, head[0])


def holds_event(blob: bytes, count: int, event_id: str, ts: int, horizon: int) -> bool:
    """Does a record within `horizon` of event time of `ts` carry `event_id`? (A byte search
    first: most events are new.)"""
    try:
        # msgpack keeps a str as its UTF-8 bytes. find(), not `in`: bytes.__contains__ first
        # tries its operand as an int and builds a TypeError to discard (~1,800 instructions)
        if blob.find(event_id.encode()) < 0:
            return False
    except UnicodeEncodeError:
        pass
    return any(e == event_id and abs(ts - t) <= horizon for t, e in event_ids(blob, count))


def event_ids(blob: bytes, count: int) -> list[tuple[int, str]]:
    """`(ts, event_id)` of each record that carries an event id."""
    rows = _rows(blob, count)
    return [
        (row[0], row[_EVENT_ID])
        for row in rows
        if len(row) > _EVENT_ID and row[_EVENT_ID] is not None
    ]


def renote(blob: bytes, record: bytes, ts: int, ev: Any, note: str) -> bytes:
    """Replace the last record (`record`, just appended) by one carrying `note`."""
    return blob[: len(blob) - len(record)] + pack(ts, ev, note)


def entries(blob: bytes, count: int, status_before: str | None) -> list[Entry]:
    """The `count` kept events, oldest first, each with the order status after it."""
    out = []
    status = status_before
    for row in _rows(blob, count):
        full: list[Any] = [*row, *(None,) * (_FIELDS - len(row))]
        ts, kind, code, ident, amount, place, source, event_id, note = full
        what = _word(kind, code)
        if kind == 0:
            status = what
        out.append(
            Entry(ts, KINDS[kind], what, ident, amount, place, source, event_id, note, status)
        )
    return out


def _rows(blob: bytes, count: int) -> tuple[Any, ...]:
    header = bytes((0x90 | count,)) if count < 16 else b"\xdd" + count.to_bytes(4, "big")
    return _decode(header + blob)


def _word(kind: int, what: int | str) -> str:
    return WHATS[kind][what] if type(what) is int else str(what)
