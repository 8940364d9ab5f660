"""What orderwatch remembers about one order: a compact record with `__slots__`.

Times are epoch ms ints, statuses/channels/warehouses interned strings. `flags` packs the
per-order bits (one-shot anomalies fired, gap rules evaluated or firing, stuck rules
evaluated or firing) into one int.
"""

from __future__ import annotations

from typing import Any

from orderwatch.domain.money import Money

# flags layout
ANOMALY_BIT = 0  # bits 0-4: anomaly kinds fired (in rules.ANOMALIES order)
PRESALE = 1 << 5  # passed through deposit_paid: two payments expected
COLLECTED = 1 << 6  # pay-to-collect measured
PAID_ANY = 1 << 7  # at least one successful payment (a deposit counts)
AMOUNT_OK = 1 << 11  # amounts checked and equal; cleared when payable or payments change
GAP_DONE_BIT = 8  # bits 8-10: gap rule evaluated (in rules.GAP_RULES order)
GAP_FIRING_BIT = 12  # bits 12-14: gap rule firing
STUCK_BIT = 16  # rule i: done = 16 + 2i, firing = 17 + 2i


def stuck_done(i: int) -> int:
    return 1 << (STUCK_BIT + 2 * i)


def stuck_firing(i: int) -> int:
    return 1 << (STUCK_BIT + 2 * i + 1)


class OrderRec:
    """One tracked order.

    `log` is its recent timeline packed by `domain.timeline` (`log_n` records); `log_status`
    is the order status before the oldest kept record.
    """

    __slots__ = (
        "channel",
        "closed_at",
        "due",
        "eids",
        "entered",
        "flags",
        "last_update",
        "log",
        "log_n",
        "log_status",
        "oid",
        "paid_at",
        "pay_ts",
        "payable",
        "payments",
        "refund_from",
        "refunded",
        "seen",
        "since",
        "status",
        "tracking",
        "warehouse",
        "wms_at",
    )

    def __init__(self, oid: str, ts: int) -> None:
        # The id object the shard's dict holds: heap entries and alerts share it rather than
        # keeping the copy each later event decoded (~70 bytes per open order).
        self.oid = oid
        self.status: str | None = None  # None: known only from payment/WMS/logistics so far
        self.since: int = ts  # when the current status was entered
        self.refund_from: str | None = None
        self.entered: list[int | None] | None = None  # per stuck rule: entered its status set
        self.last_update: int | None = None  # last order/WMS/logistics event
        self.seen: int = ts  # last event of any kind
        self.channel: str | None = None
        self.warehouse: str | None = None
        self.payable: Money | None = None  # in cents
        self.tracking: str | None = None
        self.paid_at: int | None = None  # fully paid: first success, or balance of a presale
        self.pay_ts: int | None = None  # start of pay-to-collect: payment or `paid`, first
        # successful payments not refunded, flat: (pay_no, cents, pay_no, cents, ...)
        self.payments: tuple[Any, ...] = ()
        self.refunded: tuple[str, ...] | None = None  # refunded pay_nos: final, never count again
        self.wms_at: int | None = None  # first WMS event other than `cancelled`
        self.closed_at: int | None = None  # cancelled / refunded / closed
        self.flags: int = 0
        self.eids: bytes = b""  # 8-byte hashes of the event_ids seen (redeliveries are dropped)
        self.due: int | None = None  # due time of this order's live deadline-heap entry
        self.log: bytes = b""
        self.log_n: int = 0
        self.log_status: str | None = None

    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, s) for s in OrderRec.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(OrderRec.__slots__, state, strict=True):
            setattr(self, name, value)


def payment_list(rec: OrderRec) -> list[tuple[str, Money | None]]:
    """The order's live successful payments: (pay_no, cents)."""
    p = rec.payments
    return list(zip(p[0::2], p[1::2], strict=True))


def has_payment(rec: OrderRec, pay_no: str) -> bool:
    return pay_no in rec.payments[0::2]


def add_payment(rec: OrderRec, pay_no: str, cents: Money | None) -> None:
    rec.payments = (*rec.payments, pay_no, cents)


def remove_payment(rec: OrderRec, pay_no: str) -> None:
    rec.payments = tuple(x for pair in payment_list(rec) if pair[0] != pay_no for x in pair)
