"""Building blocks of simulated order journeys: per-order state, ids and event builders.

Every event is a plain JSON-ready ``dict`` shaped as in CONTRACT §1 (``type``, ``event_id``,
``ts`` first). :class:`Context` owns the deterministic counters (event ids, pay_no, WMS order
numbers, tracking numbers) and one ``random.Random`` shared by all journeys; since the generator
drives journeys in a fixed order, the whole stream is a pure function of the seed and arguments.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from random import Random
from typing import Any, Final

from orderwatch.simulate.scenarios import NAIVE_TIMESTAMP, ScenarioPlan
from orderwatch.simulate.timefmt import IsoFormatter, beijing, naive_beijing, utc

Event = dict[str, Any]
#: Ground-truth mark attached to a signature event: (scenario name, order_id or route).
Mark = tuple[str, str]
#: One scheduled event: (true event time in epoch ms, event, optional ground-truth mark).
Step = tuple[int, Event, Mark | None]


# Journey kinds (the fault-free mix of CONTRACT §2 life cycles).
NORMAL: Final = 0
UNPAID: Final = 1
PRESALE: Final = 2
REFUND_EARLY: Final = 3  # paid -> refund_requested -> refunded, before allocation
REFUND_RETURN: Final = 4  # delivery refused: logistics `returned`, then refunded
CANCEL_PAID: Final = 5  # paid -> cancelled before allocation
CANCEL_ALLOCATED: Final = 6  # allocated -> cancelled, WMS `cancelled`

#: (kind, share of fault-free orders); the rest are NORMAL.
KIND_MIX: Final[tuple[tuple[int, float], ...]] = (
    (UNPAID, 0.08),
    (PRESALE, 0.03),
    (REFUND_EARLY, 0.005),
    (REFUND_RETURN, 0.005),
    (CANCEL_PAID, 0.005),
    (CANCEL_ALLOCATED, 0.005),
)

#: Relative weights of the default channels; any other channel gets weight 1.
CHANNEL_WEIGHTS: Final[dict[str, float]] = {
    "tmall": 3.0,
    "jd": 2.0,
    "douyin": 2.0,
    "pdd": 1.5,
    "miniapp": 1.0,
    "pos": 0.5,
}
_CHANNEL_PREFIX: Final[dict[str, str]] = {
    "tmall": "TM",
    "jd": "JD",
    "douyin": "DY",
    "pdd": "PD",
    "miniapp": "MP",
    "pos": "PS",
}
#: Channel-native names for `paid` (CONTRACT §1 default status map) and their sending channel.
NATIVE_PAID: Final[dict[str, str]] = {"tmall": "WAIT_SELLER_SEND_GOODS", "pos": "已付款"}
#: The status_map entries those names need (the simulator source adds them by itself).
SIMULATOR_STATUS_MAP: Final[dict[str, str]] = {name: "paid" for name in NATIVE_PAID.values()}
#: Share of those channels' orders whose `paid` event uses the native name.
NATIVE_PAID_SHARE: Final = 0.15
#: Share of orders whose order-event amounts are JSON numbers instead of decimal strings.
NUMERIC_AMOUNT_SHARE: Final = 0.05
#: Share of paid orders whose first payment attempt fails (another pay_no, status `failed`).
FAILED_ATTEMPT_SHARE: Final = 0.02
#: Share of paid orders whose callback comes a few seconds after the `paid` order event.
CALLBACK_AFTER_PAID_SHARE: Final = 0.15
#: Expected number of carrier `exception` scans per shipment (one scan in transit goes wrong).
EXCEPTION_SCAN_SHARE: Final = 0.01
#: The reconciliation difference of the seed story (对账差 37.8 元), in cents.
MISMATCH_CENTS: Final = 3_780

#: Carriers and their relative weights; a JD order ships with JD logistics.
CARRIERS: Final[tuple[tuple[str, float], ...]] = (
    ("SF", 3.0),
    ("ZTO", 3.0),
    ("YTO", 2.0),
    ("STO", 1.0),
    ("EMS", 0.5),
    ("JD", 1.0),
)


def amount_value(cents: int, as_number: bool) -> str | int | float:
    """An amount as a decimal string ``"299.00"`` or, if ``as_number``, a JSON number."""
    if as_number:
        return cents // 100 if cents % 100 == 0 else cents / 100
    return f"{cents // 100}.{cents % 100:02d}"


def _not_started(j: Journey, ctx: Context, now: int) -> int | None:
    raise RuntimeError(f"journey {j.order_id} was never started")


class Journey:
    """One simulated order: its fixed attributes and where it is in its life cycle.

    This is all the simulator keeps per open order between two steps (a few hundred bytes):
    ``phase`` is the function (from :mod:`orderwatch.simulate.journeys`) that runs the next step,
    and ``t1``/``t2`` hold the one or two future instants that step needs.
    """

    __slots__ = (
        "carrier",
        "cents",
        "channel",
        "fault",
        "kind",
        "numeric",
        "order_id",
        "paid_cents",
        "paid_status",
        "pay_no",
        "phase",
        "source",
        "t1",
        "t2",
        "tracking",
        "warehouse",
        "wno",
    )

    def __init__(
        self,
        *,
        order_id: str,
        channel: str,
        cents: int,
        kind: int,
        fault: str | None,
        warehouse: str,
        carrier: str,
        numeric: bool,
        paid_status: str,
        source: str,
    ) -> None:
        self.order_id = order_id
        self.channel = channel
        self.cents = cents
        self.kind = kind
        self.fault = fault
        self.warehouse = warehouse
        self.carrier = carrier
        self.numeric = numeric
        self.paid_status = paid_status
        self.source = source
        self.phase: Callable[[Journey, Context, int], int | None] = _not_started
        self.t1 = 0
        self.t2 = 0
        self.pay_no = ""
        self.paid_cents = 0
        self.wno = ""
        self.tracking = ""


class Context:
    """Deterministic id counters, timestamp formatters and event builders shared by journeys."""

    def __init__(
        self,
        *,
        seed: int,
        start_ms: int,
        plan: ScenarioPlan,
        warehouses: Sequence[str],
    ) -> None:
        self.rng = Random(f"{seed}:journeys")
        #: Events produced by the step being run; the generator drains it after every step.
        self.out: list[Step] = []
        self.plan = plan
        self.warehouses = tuple(warehouses)
        tag_rng = Random(f"{seed}:ids")
        self._tag = f"{tag_rng.getrandbits(32):08x}"
        self._n_event = 0
        self._n_pay = 0
        self._n_wms = 0
        self._n_track = tag_rng.randrange(10**6)
        #: The start date, ``yyyymmdd`` in Beijing time (used in order and payment numbers).
        self.day = _yyyymmdd(start_ms)
        self.fmt_local: IsoFormatter = beijing()
        self.fmt_utc: IsoFormatter = utc()
        self.fmt_naive: IsoFormatter = naive_beijing()

    # ---- ids ---------------------------------------------------------------------------------
    def event_id(self, prefix: str) -> str:
        """A stream-unique event id such as ``pay-1a2b3c4d-42``."""
        self._n_event += 1
        return f"{prefix}-{self._tag}-{self._n_event}"

    def pay_no(self) -> str:
        """A payment-gateway transaction number."""
        self._n_pay += 1
        return f"P{self.day}{self._tag[:4]}{self._n_pay:010d}"

    def wms_order_no(self) -> str:
        """A WMS outbound order number."""
        self._n_wms += 1
        return f"WO{self.day[2:]}{self._n_wms:08d}"

    def tracking_no(self, carrier: str) -> str:
        """A unique, random-looking waybill number of ``carrier``."""
        self._n_track += 1
        # 7_919_317 is coprime with 10**12: a bijection, so numbers never repeat.
        digits = (self._n_track * 7_919_317) % 10**12
        return f"{carrier}{digits:012d}"

    # ---- event builders ----------------------------------------------------------------------
    def order(self, ts: int, o: Journey, status: str, **extra: Any) -> Event:
        """An OMS/ERP status-change event."""
        ev: Event = {
            "type": "order",
            "event_id": self.event_id("ord"),
            "ts": self.fmt_local(ts),
            "order_id": o.order_id,
            "status": status,
            "channel": o.channel,
            "source": o.source,
        }
        if extra:
            ev.update(extra)
        return ev

    def amount(self, o: Journey) -> str | int | float:
        """The order's payable amount in the order's representation."""
        return amount_value(o.cents, o.numeric)

    def payment(
        self,
        ts: int,
        o: Journey,
        pay_no: str,
        status: str,
        cents: int,
        fmt: IsoFormatter | None = None,
    ) -> Event:
        """A payment-gateway callback (UTC ``Z`` unless ``fmt`` says otherwise)."""
        return {
            "type": "payment",
            "event_id": self.event_id("pay"),
            "ts": (fmt or self.fmt_utc)(ts),
            "order_id": o.order_id,
            "pay_no": pay_no,
            "status": status,
            "amount": amount_value(cents, False),
        }

    def wms(self, ts: int, o: Journey, action: str, wms_order_no: str) -> Event:
        """A warehouse event (naive timestamps for the ``naive_timestamp`` fault)."""
        fmt = self.fmt_naive if o.fault == NAIVE_TIMESTAMP else self.fmt_local
        return {
            "type": "wms",
            "event_id": self.event_id("wms"),
            "ts": fmt(ts),
            "order_id": o.order_id,
            "action": action,
            "wms_order_no": wms_order_no,
            "warehouse": o.warehouse,
        }

    def logistics(self, ts: int, o: Journey, node: str, tracking_no: str) -> Event:
        """A carrier scan, stamped in epoch milliseconds."""
        return {
            "type": "logistics",
            "event_id": self.event_id("lgs"),
            "ts": ts,
            "order_id": o.order_id,
            "tracking_no": tracking_no,
            "carrier": o.carrier,
            "node": node,
        }


def order_id_prefix(channel: str) -> str:
    """A two-letter order-number prefix for ``channel``."""
    known = _CHANNEL_PREFIX.get(channel)
    if known:
        return known
    letters = "".join(c for c in channel.upper() if c.isascii() and c.isalnum())
    return (letters + "OR")[:2]


def _yyyymmdd(epoch_ms: int) -> str:
    return beijing()(epoch_ms)[:10].replace("-", "")
