"""Plain, single-writer measurement state kept by each shard and read by the exporter.

The hot path only bumps ints in lists and dicts it owns (no locks); `orderwatch.metrics`
sums them over shards when Prometheus scrapes.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import Counter
from collections.abc import Sequence
from typing import Any

# Seconds: minutes to days, for time spent in an order status.
DWELL_BUCKETS: tuple[float, ...] = (
    10,
    30,
    60,
    120,
    300,
    600,
    1800,
    3600,
    7200,
    14400,
    28800,
    86400,
    172800,
    604800,
)
LAG_BUCKETS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600)
OTHER = "other"


class Histogram:
    """Cumulative-bucket histogram in one writer's hands (upper bounds, +Inf implicit)."""

    __slots__ = ("bounds", "count", "counts", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.count += 1

    def merge_into(self, counts: list[int]) -> None:
        for i, c in enumerate(self.counts):
            counts[i] += c


class LabelCap:
    """Keeps a label's value set bounded: the first `limit` values pass, later ones are 'other'."""

    __slots__ = ("_limit", "_seen")

    def __init__(self, limit: int, always: Sequence[str] = ()) -> None:
        self._seen: set[str] = set(always)
        self._limit = limit + len(self._seen)  # `always` comes on top of the cap

    def __call__(self, value: str | None) -> str:
        if value is None or value == "":
            return "unknown"
        if value in self._seen:
            return value
        if len(self._seen) < self._limit:
            self._seen.add(value)
            return value
        return OTHER

    def absorb(self, other: LabelCap) -> None:
        """Pass the values `other` passed too (it assigned them labels already)."""
        self._seen |= other._seen
        self._limit = max(self._limit, len(self._seen))


class ShardStats:
    """What one shard measured; every field is only written by that shard's worker."""

    __slots__ = (
        "_dwell_raw",
        "anomalies",
        "channels",
        "duplicates",
        "dwell",
        "forgotten",
        "late",
        "pay_to_collect",
        "pay_to_collect_within",
        "payments",
        "status_counts",
        "wms_outbounds",
    )

    def __init__(self, channels: LabelCap | None = None) -> None:
        self.channels = channels or LabelCap(50)
        self.status_counts: Counter[str] = Counter()
        self.dwell: dict[tuple[str, str], Histogram] = {}  # by (status, capped channel)
        self._dwell_raw: dict[tuple[str, str | None], Histogram] = {}  # by the raw channel
        self.pay_to_collect = Histogram(DWELL_BUCKETS)
        self.pay_to_collect_within = 0
        self.anomalies: Counter[str] = Counter()
        self.payments: Counter[str] = Counter()  # successful payments by channel
        self.wms_outbounds: Counter[str] = Counter()  # first WMS outbound by channel
        self.late = 0
        self.duplicates = 0
        self.forgotten = 0

    # A snapshot keeps what the orders are (per status) and the label values assigned; the
    # counters and histograms restart at zero with the process, as the exporter's own do and
    # Prometheus expects (a resumed daemon's leak ratio mixed counts from before and after).
    def __getstate__(self) -> tuple[LabelCap, Counter[str]]:
        return self.channels, self.status_counts

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        # format-18 snapshots written before this layout also hold an unused warehouse cap
        channels, *_, status_counts = state
        self.__init__(channels)  # type: ignore[misc]
        self.status_counts = status_counts

    def share_labels(self, channels: LabelCap) -> None:
        """Use the process's channel cap (`Runtime.channel_labels`), keeping the values this
        shard's snapshot had assigned: a resumed shard labels as the store and the others do."""
        channels.absorb(self.channels)
        self.channels = channels

    def observe_dwell(self, status: str, channel: str | None, ms: int) -> None:
        h = self._dwell_raw.get((status, channel))
        if h is None:  # first time for this pair: apply the label cap once
            key = (status, self.channels(channel))
            h = self.dwell.get(key)
            if h is None:
                h = self.dwell[key] = Histogram(DWELL_BUCKETS)
            self._dwell_raw[(status, channel)] = h
        h.observe(ms / 1000)

    def observe_pay_to_collect(self, ms: int, within_sla: bool) -> None:
        self.pay_to_collect.observe(ms / 1000)
        if within_sla:
            self.pay_to_collect_within += 1
