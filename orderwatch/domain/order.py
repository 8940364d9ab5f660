"""What orderwatch remembers about one order: a compact record with `__slots__`.

Times are epoch ms ints, statuses/channels/warehouses interned strings. `flags` packs the
per-order bits (one-shot anomalies fired, gap rules evaluated or firing, stuck rules
evaluated or firing) into one int.
"""

from __future__ import annotations

import msgspec

from orderwatch.domain.money import Money

# flags layout
ANOMALY_BIT = 0  # bits 0-4: anomaly kinds fired (in rules.ANOMALIES order)
PRESALE = 1 << 5  # passed through deposit_paid: two payments expected
COLLECTED = 1 << 6  # pay-to-collect measured
PAID_ANY = 1 << 7  # at least one successful payment (a deposit counts)
AMOUNT_OK = 1 << 11  # amounts checked and equal; cleared when payable or payments change
GAP_DONE_BIT = 8  # bits 8-10: gap rule evaluated (in rules.GAP_RULES order)
GAP_FIRING_BIT = 12  # bits 12-14: gap rule firing
APPLIED = 1 << 15  # was in a status past created/deposit_paid: a payment was applied once
SHIPPED_SEEN = 1 << 16  # a `shipped` order event was applied: `tracking` is now the shipped one
WMS_CANCELLED = 1 << 17  # the WMS cancelled the outbound (and has not sent it out since)
WMS_SHIPPED = 1 << 18  # the WMS reported the parcel shipped: the goods left
STUCK_BIT = 19  # rule i: done = 19 + 2i, firing = 20 + 2i


def stuck_done(i: int) -> int:
    return 1 << (STUCK_BIT + 2 * i)


def stuck_firing(i: int) -> int:
    return 1 << (STUCK_BIT + 2 * i + 1)


class OrderRec(msgspec.Struct, array_like=True, gc=False):
    """One tracked order.

    `log` is its recent timeline packed by `domain.timeline` (`log_n` records); `log_status`
    is the order status before the oldest kept record. A msgspec struct: it packs into one
    msgpack array (`domain.packing`) at C speed, and without cycles needs no GC header (gc=False).
    """

    since: int  # when the current status was entered
    seen: int  # last event of any kind
    status: str | None = None  # None: known only from payment/WMS/logistics so far
    refund_from: str | None = None
    entered: list[int | None] | None = None  # per stuck rule: entered its status set
    last_update: int | None = None  # last order/WMS/logistics event
    channel: str | None = None
    warehouse: str | None = None
    payable: Money | None = None  # in cents
    # before the first `shipped`: the latest number an order event named (a re-printed label
    # replaces it); from then on the number it shipped under (a logistics scan only fills it in)
    tracking: str | None = None
    paid_at: int | None = None  # fully paid: first success, or balance of a presale
    pay_ts: int | None = None  # start of pay-to-collect: payment or `paid`, first
    # successful payments not refunded: their pay_nos and amounts (cents), in arrival order
    pay_nos: tuple[str, ...] = ()
    paid: tuple[Money | None, ...] = ()
    refunded: tuple[str, ...] | None = None  # refunded pay_nos: final, never count again
    wms_at: int | None = None  # first WMS event other than `cancelled` (or first since one)
    closed_at: int | None = None  # cancelled / refunded / closed
    flags: int = 0
    # the event_ids seen that the timeline no longer holds, with their times (`dedup.event_entry`;
    # it keeps the recent ones itself, so most orders need none): redeliveries are dropped
    # by either
    eids: bytes = b""
    log: bytes = b""
    log_n: int = 0
    log_status: str | None = None
    slot: int = 0  # its place in the shard's slot table (`ShardTracker._slots`)
    # Not part of the packed form (`Packer.pack` stores `due` in front, leaves both out):
    due: int | None = None  # due time of this order's live deadline-heap entry
    # The dict's key object (the slot table holds the same one): alerts and timelines use it
    # rather than keeping the copy of the id each later event decoded.
    oid: str | None = None


def new_order(oid: str, ts: int, slot: int = 0) -> OrderRec:
    return OrderRec(ts, ts, slot=slot, oid=oid)


def payment_list(rec: OrderRec) -> list[tuple[str, Money | None]]:
    """The order's live successful payments: (pay_no, cents)."""
    return list(zip(rec.pay_nos, rec.paid, strict=True))


def has_payment(rec: OrderRec, pay_no: str) -> bool:
    return pay_no in rec.pay_nos


def add_payment(rec: OrderRec, pay_no: str, cents: Money | None) -> None:
    rec.pay_nos = (*rec.pay_nos, pay_no)
    rec.paid = (*rec.paid, cents)


def remove_payment(rec: OrderRec, pay_no: str) -> None:
    kept = [pair for pair in payment_list(rec) if pair[0] != pay_no]
    rec.pay_nos = tuple(p for p, _ in kept)
    rec.paid = tuple(c for _, c in kept)
