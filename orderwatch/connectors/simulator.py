"""The built-in simulator as a live bytewax source (the embedded default of `orderwatch run`).

Simulated time runs `speed` times faster than the wall clock from the moment the source
starts; each poll emits every event whose arrival time has come, as JSON lines, so the
events go through the same decoding as any real input.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from orderwatch.config import SimulatorSource as SimulatorCfg
from orderwatch.connectors.raw import RawChunk
from orderwatch.durations import parse_instant_ms
from orderwatch.jsonbytes import dumps_kept
from orderwatch.simulate.generator import Simulator

_POLL = timedelta(milliseconds=50)
_MAX_BATCH = 5000
# Of the configured events per wall second, this share are access logs; the rest come
# from order journeys of about this many events each (see simulate.generator).
ACCESS_SHARE = 0.3
EVENTS_PER_ORDER = 21


def simulator_for(cfg: SimulatorCfg, start_ms: int) -> Simulator:
    """A Simulator whose event rate matches `rate` events per wall second at `speed`."""
    per_sim_second = cfg.rate / cfg.speed
    return Simulator(
        seed=cfg.seed,
        start_ms=start_ms,
        orders_per_minute=per_sim_second * (1 - ACCESS_SHARE) * 60 / EVENTS_PER_ORDER,
        access_logs_per_second=per_sim_second * ACCESS_SHARE,
        scenarios=cfg.scenarios,
    )


class _SimPartition(StatefulSourcePartition[RawChunk, None]):
    def __init__(self, src: SimulatorSource) -> None:
        self._src = src
        self._wall0 = time.time()
        start = src.cfg.start
        self._sim0 = parse_instant_ms(start) if start else int(self._wall0 * 1000)
        self._sim = simulator_for(src.cfg, self._sim0)
        self._n = 1

    def next_batch(self) -> list[RawChunk]:
        if self._src.stop is not None and self._src.stop.is_set():
            raise StopIteration
        now_sim = self._sim0 + int((time.time() - self._wall0) * 1000 * self._src.cfg.speed)
        lines = [
            dumps_kept(ev)  # waits in the chunk: 4 KiB each as orjson returns it
            for _, ev in self._sim.timed_events(until_ms=now_sim, max_events=_MAX_BATCH)
        ]
        if not lines:
            return []
        first, self._n = self._n, self._n + len(lines)
        return [RawChunk(self._src.name, first, lines)]

    def next_awake(self) -> datetime | None:
        return datetime.now(UTC) + _POLL

    def snapshot(self) -> None:
        return None  # a demo source: it starts afresh after a restart


class SimulatorSource(FixedPartitionedSource[RawChunk, None]):
    """Endless simulated traffic paced by the wall clock (`rate`, `speed`, `scenarios`)."""

    def __init__(self, cfg: SimulatorCfg, stop: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.name = cfg.source_name
        self.stop = stop

    def list_parts(self) -> list[str]:
        return [self.name]

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _SimPartition:
        return _SimPartition(self)
