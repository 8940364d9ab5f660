"""Process-local handles shared by the dataflow workers, the exporter and the HTTP API.

Workers are threads of one process: each shard's tracker and each worker's intake counters
have a single writer; readers (Prometheus scrapes, API calls) only read them.
"""

from __future__ import annotations

import gc
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from orderwatch.domain.rejected import RejectedByOrder
from orderwatch.domain.stats import LAG_BUCKETS, Histogram, LabelCap

if TYPE_CHECKING:
    from orderwatch.config import MetricsCfg
    from orderwatch.domain.tracker import ShardTracker
    from orderwatch.domain.watermark import WatermarkClock


def tune_gc() -> None:
    """Collect cycles rarely: the engine's state (orders, deadlines) holds no reference cycles.

    CPython's cyclic GC otherwise rescans every tracked order record as the state grows;
    measured at 12% of replay time on 1M events. Refcounting still frees everything at once.
    """
    gc.freeze()  # what exists after start-up (modules, config) is never garbage
    gc.set_threshold(200_000, 50, 100)


class IntakeStats:
    """What one worker thread read: events, rejections, lag and access-log traffic."""

    def __init__(self, routes: LabelCap) -> None:
        self.routes = routes
        self.events: Counter[tuple[str, str]] = Counter()  # (source, type)
        self.rejected: Counter[tuple[str, str]] = Counter()  # (source, reason)
        self.lag: dict[str, Histogram] = {}  # by source, live only
        self.requests: Counter[tuple[str, str, str]] = Counter()  # (route, method, code class)
        self.latency: dict[str, Histogram] = {}  # by route, seconds
        self.bytes_read = 0
        self.lines_read = 0

    def observe_lag(self, source: str, seconds: float) -> None:
        h = self.lag.get(source)
        if h is None:
            h = self.lag[source] = Histogram(LAG_BUCKETS)
        h.observe(seconds)


@dataclass
class AlertBatch:
    """Alert changes the dataflow hands to the control plane. `stored` is set once the alert
    store has them (or, at shutdown, once they were announced without it): the dataflow waits
    for it, so a recovery snapshot never covers changes that exist only in memory."""

    changes: list[Any]
    stored: threading.Event = field(default_factory=threading.Event)


@dataclass
class SourceHealth:
    """Whether one input source is connected, as its reader last found it. The reader's thread
    writes `problem` at its poll points (never per line); /readyz and the scrapes read it."""

    label: str  # how /readyz names the source: its place in the config, "sources[0]"
    problem: str | None = None  # why it is not connected now, e.g. "<path> is gone (...)"


@dataclass
class Runtime:
    """Everything one process shares between its dataflow and its control plane."""

    shards: int = 32
    process_id: int = 0
    trackers: dict[str, ShardTracker] = field(default_factory=dict)
    clocks: dict[str, WatermarkClock] = field(default_factory=dict)  # by shard, as trackers
    alert_queue: queue.Queue[Any] | None = None
    route_cap: LabelCap = field(default_factory=lambda: LabelCap(50))
    channel_cap: LabelCap | None = None  # `channel_labels`
    started: float = field(default_factory=time.time)
    dataflow_running: bool = False
    sources_connected: bool = False  # the sources are built and started
    sources: list[SourceHealth] = field(default_factory=list)  # those that can lose their input
    alert_store_error: str | None = None  # why the alert store refuses writes now, if it does
    alert_store_failures: int = 0  # failed writes so far (each retried until it succeeds)
    alerts_waiting: int = 0  # alert changes held in memory until the store takes them
    stopping: threading.Event = field(default_factory=threading.Event)  # cooperative shutdown
    wake_alerts: Callable[[], None] = lambda: None  # set by the alert consumer: a batch is queued
    peers: list[str] = field(default_factory=list)  # HTTP base URLs of the other processes
    rejected: RejectedByOrder = field(default_factory=RejectedByOrder)  # process 0's dead letters
    _intakes: list[IntakeStats] = field(default_factory=list)
    _local: threading.local = field(default_factory=threading.local)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def source_problems(self) -> list[str]:
        """Why sources that were connected are not now, each named by its label."""
        return [f"{s.label}: {s.problem}" for s in self.sources if s.problem is not None]

    def all_sources_connected(self) -> bool:
        return self.sources_connected and not self.source_problems()

    def channel_labels(self, metrics: MetricsCfg) -> LabelCap:
        """The process's one `channel` label cap, shared by every shard and the alert store:
        with a cap each, a channel past the cap in one could be named in another, and the
        README's leak ratio (`paid_without_wms_total` ÷ `payments_total`, by channel) would
        divide one channel by another's `other`."""
        if self.channel_cap is None:
            self.channel_cap = LabelCap(metrics.max_label_values, metrics.channels)
        return self.channel_cap

    def intake(self) -> IntakeStats:
        """This thread's intake counters (created on first use)."""
        stats: IntakeStats | None = getattr(self._local, "intake", None)
        if stats is None:
            stats = IntakeStats(self.route_cap)
            self._local.intake = stats
            with self._lock:
                self._intakes.append(stats)
        return stats

    def intakes(self) -> list[IntakeStats]:
        with self._lock:
            return list(self._intakes)

    def watermark(self, wall_ms: int | None = None) -> int | None:
        """The lowest shard watermark (the one every shard has reached) at `wall_ms` (now).

        Read from each shard's clock where it has one: live and idle, a clock moves on with
        the wall clock even when its shard has nothing due that would wake it to advance.
        """
        wall = int(time.time() * 1000) if wall_ms is None else wall_ms
        marks = [self.shard_watermark(key, wall) for key in list(self.trackers)]
        present = [m for m in marks if m is not None]
        return min(present) if present else None

    def read_to(self) -> int | None:
        """How far in event time the input was read: the lowest shard's watermark without
        the idle clock (what a restart must read again before it can tell what it raises)."""
        marks = [c.read_to() for c in list(self.clocks.values())]
        present = [m for m in marks if m is not None]
        return min(present) if present else None

    def shard_watermark(self, key: str, wall_ms: int | None = None) -> int | None:
        """One shard's watermark at `wall_ms` (now): its clock's where it has one, since an
        idle shard with nothing due is not woken to advance its tracker."""
        clock = self.clocks.get(key)
        if clock is not None:
            return clock.peek(int(time.time() * 1000) if wall_ms is None else wall_ms)
        tracker = self.trackers.get(key)
        return None if tracker is None else tracker.watermark
