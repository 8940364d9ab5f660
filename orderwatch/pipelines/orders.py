"""The order dataflow: sources -> decode & route -> shard trackers -> alert and dead-letter sinks.

Wiring only. State is keyed by shard (a few dozen keys), never by order: bytewax compares
each key's `notify_at` with the wall clock on every activation, which collapses with one
key per open order (DESIGN.md). Deadlines live in each tracker's heap, driven by the
watermark; `notify_at` only wakes idle shards when the live watermark moves on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import bytewax.operators as op
from bytewax.dataflow import Dataflow
from bytewax.inputs import Source
from bytewax.operators import StatefulBatchLogic
from bytewax.outputs import Sink

from orderwatch.config import Config, parse_zone
from orderwatch.domain.alert import AlertChange
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.stats import ShardStats
from orderwatch.domain.tracker import ShardTracker
from orderwatch.domain.watermark import WatermarkClock
from orderwatch.events import Decoder
from orderwatch.pipelines.carried import CarriedAlerts, CarriedSource
from orderwatch.pipelines.route import DEAD_LETTER_KEY, ChunkOrder, Router, ShardBatch
from orderwatch.pipelines.snapshots import Settings, dump_shard, load_shard, state_settings
from orderwatch.runtime import Runtime
from orderwatch.simulate.model import SIMULATOR_STATUS_MAP

ShardInput = ShardBatch | CarriedAlerts  # what a shard's step takes


def _wall_ms() -> int:
    return int(time.time() * 1000)


class ShardLogic(StatefulBatchLogic[ShardInput, AlertChange, bytes | None]):
    """One shard: feeds batches into its tracker and advances the shared-rule watermark."""

    def __init__(
        self,
        tracker: ShardTracker,
        clock: WatermarkClock,
        runtime: Runtime,
        now_ms: Callable[[], int],
        recovery: bool = False,
        order: ChunkOrder | None = None,
        settings: Settings | None = None,
        key: str | None = None,
    ) -> None:
        self.recovery = recovery
        self.settings = settings or {}  # written into each snapshot (`state_settings`)
        self.order = order or ChunkOrder()
        self.tracker = tracker
        self.clock = clock
        self.now_ms = now_ms
        self.runtime = runtime
        self.stopping = runtime.stopping
        # Served (API, metrics) under its key: known from the first batch, or from the
        # snapshot a resumed shard is built from, so it is served before any new input.
        self.key = key
        if key is not None:
            self._register(key)
        clock.start(now_ms())

    def _register(self, key: str) -> None:
        self.key = key
        self.runtime.clocks[key] = self.clock
        self.runtime.trackers[key] = self.tracker

    def on_batch(self, values: list[ShardInput]) -> tuple[list[AlertChange], bool]:
        if self.key is None:
            self._register(values[0].key)
        wall = self.now_ms()
        out: list[AlertChange] = []
        for batch in values:
            if type(batch) is CarriedAlerts:
                self.tracker.carry(batch.alerts, batch.since)
                continue
            out += self._take(self.order.ready(batch), wall)  # type: ignore[arg-type]
        return out + self._advance(self.clock.current(wall)), StatefulBatchLogic.RETAIN

    def _take(self, batches: list[ShardBatch], wall: int) -> list[AlertChange]:
        out: list[AlertChange] = []
        for batch in batches:
            if batch.events:
                marks = late_marks(batch, self.clock.current(wall))
                out += self.tracker.arrive(batch.events, marks)
            max_ts = batch.max_ts if batch.max_ts >= 0 else None
            self.clock.observe(max_ts, wall, batch.written, batch.part)
        return out

    def on_notify(self) -> tuple[list[AlertChange], bool]:
        return self._advance(self.clock.current(self.now_ms())), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[AlertChange], bool]:
        if self.stopping is not None and self.stopping.is_set():
            return [], StatefulBatchLogic.RETAIN  # a shutdown is not the end of the input
        out = self._take(self.order.leftovers(), self.now_ms())
        final = self.clock.final()
        if final is not None:
            out += self.tracker.advance(final, final=True)
        return out, StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.clock.live:
            return None  # a replay is driven by event time alone
        wall = self.now_ms()
        due = self.tracker.next_due()
        # what is due at T happens once the watermark is past T: wake when it reaches T + 1 ms
        at = self.clock.wake_at(wall, None if due is None else due + 1)
        return None if at is None else datetime.fromtimestamp(at / 1000, UTC)

    def snapshot(self) -> bytes | None:
        # bytewax asks every epoch, recovery or not; pickling every order is only worth it
        # when there is a recovery store to write it to.
        if not self.recovery:
            return None
        return dump_shard((self.tracker, self.clock, self.order, self.key), self.settings)

    def _advance(self, watermark: int | None) -> list[AlertChange]:
        if watermark is None:
            return []
        return self.tracker.advance(watermark)


def late_marks(batch: ShardBatch, watermark: int | None) -> list[tuple[int, int]]:
    """`(index, watermark at its arrival)` of each of the batch's events that came behind the
    watermark: behind the one the batch found (`watermark`), or behind the newest event before
    it in its chunk minus the lateness (the router marked those)."""
    marks = dict(batch.late)
    if watermark is not None:
        for i, (ts, _) in enumerate(batch.events):
            if ts < watermark:
                marks[i] = max(marks.get(i, watermark), watermark)
    return sorted(marks.items())


@dataclass
class Outputs:
    alerts: Sink[Any]
    dead_letters: Sink[Any]


def flow_steps(
    cfg: Config,
    runtime: Runtime,
    *,
    live: bool,
    recovery: bool = False,
    now_ms: Callable[[], int] = _wall_ms,
) -> tuple[Router, Callable[[bytes | None], ShardLogic]]:
    """The two steps that do the work: the chunk router, and the builder of a shard's logic
    (from its snapshot, or empty). `build_flow` wires them; the bench also calls them bare."""
    rules = RuleSet.from_config(cfg)
    assume = parse_zone(cfg.assume_timezone) if cfg.assume_timezone else None
    simulated = cfg.simulated() if live else frozenset()  # a replay reads its file only
    # The simulator speaks two channels' own status names (to show status_map at work);
    # they need no mapping by hand when it runs.
    status_map = {**SIMULATOR_STATUS_MAP, **cfg.status_map} if simulated else cfg.status_map
    decoder = Decoder(status_map, assume, cfg.engine.max_event_bytes)
    router = Router(
        decoder,
        runtime,
        lateness_ms=cfg.lateness,
        live=live,
        max_future_ms=cfg.engine.max_future,
        simulated=simulated,
        now_ms=now_ms,
    )
    channels = runtime.channel_labels(cfg.metrics)
    idle_after = cfg.idle_after if live else None
    sources = cfg.source_names()
    settings = state_settings(cfg)

    def build_shard(resume: bytes | None) -> ShardLogic:
        order = key = None
        if resume is not None:
            tracker, clock, order, key = load_shard(resume, settings)
            tracker.stats.share_labels(channels)
            tracker.rules = rules  # as the snapshot's but for the wording (`_WORDING`)
        else:
            tracker = ShardTracker(rules, ShardStats(channels))
            clock = WatermarkClock(cfg.lateness, idle_after)
        if live:
            clock.expect(sources)
        return ShardLogic(tracker, clock, runtime, now_ms, recovery, order, settings, key)

    return router, build_shard


def build_flow(
    cfg: Config,
    inputs: Sequence[Source[Any]],
    outputs: Outputs,
    runtime: Runtime,
    *,
    live: bool,
    recovery: bool = False,
    now_ms: Callable[[], int] = _wall_ms,
    carried: list[AlertChange] | None = None,
    carried_since: int = 0,
) -> Dataflow:
    """The whole order dataflow. `live=False` is a replay: event time only, no wall clock.
    `carried`: the alerts the store holds firing at this start (`pipelines.carried`), and
    `carried_since` the latest event time it had seen; a daemon always passes them, so its
    flow has the same steps whether there are any or not."""
    router, build_shard = flow_steps(cfg, runtime, live=live, recovery=recovery, now_ms=now_ms)
    flow = Dataflow("orderwatch")
    streams = [op.input(f"read_{i}", flow, src) for i, src in enumerate(inputs)]
    raw = streams[0] if len(streams) == 1 else op.merge("merge_sources", *streams)
    # Decode wherever there is a free worker (the reader only reads); shards restore the
    # source order of the chunks, so results do not depend on who decoded what.
    spread = op.redistribute("spread_decoding", raw)
    routed = op.flat_map_batch("decode_and_route", spread, router)
    split = op.branch("split_dead_letters", routed, lambda kv: kv[0] != DEAD_LETTER_KEY)
    tracked = split.trues
    if carried is not None:
        source = CarriedSource(carried, runtime.shards, carried_since)
        carry = op.input("carried_alerts", flow, source)
        tracked = op.merge("with_carried_alerts", split.trues, carry)
    alerts = op.stateful_batch("track_orders", tracked, build_shard)
    op.output(
        "write_alerts", op.map("key_alerts", alerts, lambda kv: ("alerts", kv[1])), outputs.alerts
    )
    op.output("write_dead_letters", split.falses, outputs.dead_letters)
    return flow
