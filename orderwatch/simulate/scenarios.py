"""Fault scenarios of the traffic simulator: names, descriptions, and how they are switched on.

A scenario is switched on by name with a number (``Simulator(scenarios={name: value})``):

- **Per-order faults** (everything but the two below): ``value`` is the share of *all* new orders
  (0..1) that get the fault. Each order gets at most one per-order fault, so the shares must add
  up to at most 1. A faulted order otherwise follows the ordinary paid journey, so the fault's
  alerts are not mixed with those of presale, refund or unpaid journeys.
- **Window faults** (``callback_storm``, ``allocation_backlog``): ``value`` is the share of
  simulated time (0..1] covered by fault windows. The first window opens a few minutes after the
  start so that even a short run shows it; later ones follow at random gaps sized so that, on
  average, ``value`` of the time is inside a window.

Ground truth (``Simulator.injected``) is recorded when the fault's signature event is emitted.
The descriptions below are what ``orderwatch simulate --list-scenarios`` prints.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator, Mapping
from random import Random
from typing import Final

from orderwatch.simulate.timefmt import MINUTE_MS

WMS_PUSH_LOST: Final = "wms_push_lost"
CALLBACK_STORM: Final = "callback_storm"
CALLBACK_DELAY: Final = "callback_delay"
LOGISTICS_STALL: Final = "logistics_stall"
DOUBLE_SHIP: Final = "double_ship"
SHIP_WITHOUT_TRACKING: Final = "ship_without_tracking"
STATUS_JUMP: Final = "status_jump"
AMOUNT_MISMATCH: Final = "amount_mismatch"
DUPLICATE_CALLBACK: Final = "duplicate_callback"
DUPLICATE_PAYMENT: Final = "duplicate_payment"
UNPAID_SHIPMENT: Final = "unpaid_shipment"
NAIVE_TIMESTAMP: Final = "naive_timestamp"
WRONG_OFFSET: Final = "wrong_offset"
ALLOCATION_BACKLOG: Final = "allocation_backlog"

#: Scenario name -> one-line description.
SCENARIOS: Final[Mapping[str, str]] = {
    WMS_PUSH_LOST: "漏发: order paid, the push to the WMS is lost; it sits in `paid` for 3-6 h "
    "until a manual re-push (paid_without_wms, paid_not_allocated, paid_not_shipped)",
    CALLBACK_STORM: "回调积压: windows of 3-8 min where /api/pay/callback QPS is x20 with 1-5 s "
    "latency and 5xx/504 replies; order payment callbacks in the window are delayed 2-8 min",
    CALLBACK_DELAY: "paid but still 待付款: the callback comes 6-15 min after creation and the "
    "order's `paid` update lags it by 6-8 min (payment_not_applied)",
    LOGISTICS_STALL: "物流停滞: after the first in_transit scan no event at all for 50-80 h, then "
    "delivery resumes (logistics_stalled)",
    DOUBLE_SHIP: "双击发货: a second `shipped` with a different tracking_no 2-30 s later "
    "(conflicting_tracking)",
    SHIP_WITHOUT_TRACKING: "状态错乱: `shipped` with no tracking_no (shipped_without_tracking)",
    STATUS_JUMP: "状态跳变: a stale ERP sync sets `paid` after `delivered`, fixed minutes later "
    "(illegal_transition)",
    AMOUNT_MISMATCH: "对账差异: the successful payment differs from the payable amount, usually by "
    "37.80 (amount_mismatch)",
    DUPLICATE_CALLBACK: "重复回调: the payment callback is re-sent 1-3 times with the same "
    "event_id (must be deduplicated, no alert)",
    DUPLICATE_PAYMENT: "重复支付: a second successful payment with another pay_no 5 s-2 min later "
    "(duplicate_payment)",
    UNPAID_SHIPMENT: "WMS outbound for an order that is never paid; closed 20-30 min later "
    "(wms_without_payment)",
    NAIVE_TIMESTAMP: "时区事故: a legacy WMS (last warehouse) stamps Beijing time with no offset; "
    "its events are rejected as naive_timestamp (so paid_without_wms may follow)",
    WRONG_OFFSET: "时区事故: the payment gateway stamps Beijing wall-clock with `Z` (8 h in the "
    "future); keep the share tiny (<= 0.001), it drags the watermark",
    ALLOCATION_BACKLOG: "待分仓积压: windows of 10-20 min in which every allocated order waits "
    "10-30 min for label printing (allocation backlog breaker)",
}

#: Per-order faults, in the canonical order used to split the unit interval.
ORDER_FAULTS: Final[tuple[str, ...]] = (
    WMS_PUSH_LOST,
    CALLBACK_DELAY,
    LOGISTICS_STALL,
    DOUBLE_SHIP,
    SHIP_WITHOUT_TRACKING,
    STATUS_JUMP,
    AMOUNT_MISMATCH,
    DUPLICATE_CALLBACK,
    DUPLICATE_PAYMENT,
    UNPAID_SHIPMENT,
    NAIVE_TIMESTAMP,
    WRONG_OFFSET,
)

#: Faults that open time windows; their value is a share of simulated time.
WINDOW_FAULTS: Final[tuple[str, ...]] = (CALLBACK_STORM, ALLOCATION_BACKLOG)

#: The route whose traffic ``callback_storm`` multiplies (its ground truth in ``injected``).
PAY_CALLBACK_ROUTE: Final = "/api/pay/callback"


class WindowSchedule:
    """Deterministic fault windows ``[start, end)`` generated lazily as time advances."""

    __slots__ = ("_ends", "_first", "_length", "_mean_gap_factor", "_rng", "_starts")

    def __init__(
        self,
        rng: Random,
        start_ms: int,
        share: float,
        *,
        first_delay_ms: tuple[int, int],
        length_ms: tuple[int, int],
    ) -> None:
        self._rng = rng
        self._length = length_ms
        # mean gap = mean length * (1 - share) / share, so that ``share`` of time is covered.
        self._mean_gap_factor = (1.0 - share) / share
        lo, hi = first_delay_ms
        self._first = start_ms + lo + int(rng.random() * (hi - lo))
        self._starts: list[int] = []
        self._ends: list[int] = []

    def _extend(self) -> None:
        lo, hi = self._length
        length = lo + int(self._rng.random() * (hi - lo))
        if self._ends:
            gap = int(length * self._mean_gap_factor * (0.5 + self._rng.random()))
            begin = self._ends[-1] + gap
        else:
            begin = self._first
        self._starts.append(begin)
        self._ends.append(begin + length)

    def active(self, t_ms: int) -> bool:
        """Whether ``t_ms`` falls inside a fault window."""
        while not self._ends or self._ends[-1] <= t_ms:
            self._extend()
        i = bisect_right(self._starts, t_ms) - 1
        return i >= 0 and t_ms < self._ends[i]

    def windows(self) -> Iterator[tuple[int, int]]:
        """All windows in time order (an endless iterator)."""
        i = 0
        while True:
            while i >= len(self._starts):
                self._extend()
            yield self._starts[i], self._ends[i]
            i += 1

    def opened_before(self, t_ms: int) -> list[tuple[int, int]]:
        """The windows generated so far that start at or before ``t_ms``."""
        n = bisect_right(self._starts, t_ms)
        return list(zip(self._starts[:n], self._ends[:n], strict=True))


def check_name(name: str) -> str:
    """A scenario's name, or ValueError listing the known ones."""
    if name not in SCENARIOS:
        raise ValueError(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return name


def check_share(value: float) -> float:
    """A scenario's share (0..1), or ValueError."""
    if not isinstance(value, int | float) or not 0.0 <= value <= 1.0:  # also rejects nan
        raise ValueError(f"share must be within 0..1, got {value!r}")
    return value


def check_order_total(values: Mapping[str, float]) -> Mapping[str, float]:
    """The per-order faults pick one fault per order: their shares add up to at most 1."""
    total = sum(values.get(name, 0.0) for name in ORDER_FAULTS)
    if total > 1.0 + 1e-9:
        raise ValueError(f"the per-order scenario shares add up to {total:g}, more than 1")
    return values


class ScenarioPlan:
    """Validated scenario switches: per-order fault picking and the fault-window schedules."""

    def __init__(self, scenarios: Mapping[str, float] | None, *, seed: int, start_ms: int) -> None:
        values = dict(scenarios or {})
        for name, value in values.items():
            check_name(name)
            try:
                check_share(value)
            except ValueError as exc:
                raise ValueError(f"scenario {name!r}: {exc}") from None
        check_order_total(values)
        #: Enabled scenarios (value > 0), in SCENARIOS order.
        self.enabled: tuple[str, ...] = tuple(n for n in SCENARIOS if values.get(n, 0.0) > 0.0)
        self._bounds: list[float] = []
        self._names: list[str] = []
        acc = 0.0
        for name in ORDER_FAULTS:
            share = values.get(name, 0.0)
            if share > 0.0:
                acc += share
                self._bounds.append(acc)
                self._names.append(name)
        self.storm: WindowSchedule | None = None
        self.backlog: WindowSchedule | None = None
        if values.get(CALLBACK_STORM, 0.0) > 0.0:
            self.storm = WindowSchedule(
                Random(f"{seed}:callback_storm"),
                start_ms,
                values[CALLBACK_STORM],
                first_delay_ms=(2 * MINUTE_MS, 5 * MINUTE_MS),
                length_ms=(3 * MINUTE_MS, 8 * MINUTE_MS),
            )
        if values.get(ALLOCATION_BACKLOG, 0.0) > 0.0:
            self.backlog = WindowSchedule(
                Random(f"{seed}:allocation_backlog"),
                start_ms,
                values[ALLOCATION_BACKLOG],
                first_delay_ms=(4 * MINUTE_MS, 8 * MINUTE_MS),
                length_ms=(10 * MINUTE_MS, 20 * MINUTE_MS),
            )

    def pick(self, u: float) -> str | None:
        """The per-order fault for a uniform draw ``u`` in [0, 1), or None."""
        if not self._bounds or u >= self._bounds[-1]:
            return None
        return self._names[bisect_right(self._bounds, u)]
