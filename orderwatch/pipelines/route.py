"""Decode raw chunks and route events to order shards (no bytewax import: plain functions).

Every decoded chunk yields one item per shard carrying that shard's events and the largest
event time of the chunk, even when it has no events for that shard. The watermark thus
travels in the same channel as the events, behind them: no shard can learn of a later time
before it has received the events that came earlier in its input.
"""

from __future__ import annotations

import sys
import time
import zlib
from collections.abc import Callable, Iterable
from typing import Any

from orderwatch.connectors.raw import RawChunk
from orderwatch.domain.lifecycle import canonical
from orderwatch.domain.stats import Histogram
from orderwatch.events import (
    AccessLogEvent,
    Decoded,
    Decoder,
    OrderEvent,
    Rejected,
    WmsEvent,
    decode_nginx,
)
from orderwatch.runtime import Runtime

DEAD_LETTER_KEY = "dead-letters"
_CLASSES = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}


def shard_keys(count: int) -> list[str]:
    return [f"s{i:03d}" for i in range(count)]


def shard_of(order_id: str, count: int) -> int:
    """Stable across processes and runs (Python's str hash is salted per process)."""
    return zlib.crc32(order_id.encode("utf-8", "surrogatepass")) % count


class ShardBatch:
    """One shard's share of a chunk: (ts, event) pairs and the chunk's largest event time."""

    __slots__ = ("events", "key", "max_ts")

    def __init__(self, key: str, events: list[tuple[int, Any]], max_ts: int) -> None:
        self.key = key
        self.events = events
        self.max_ts = max_ts

    def __getstate__(self) -> tuple[str, list[tuple[int, Any]], int]:
        return (self.key, self.events, self.max_ts)

    def __setstate__(self, state: tuple[str, list[tuple[int, Any]], int]) -> None:
        self.key, self.events, self.max_ts = state
        for _, ev in self.events:  # unpickled in another process: share strings again
            if type(ev) is OrderEvent:
                ev.status = canonical(ev.status) or ev.status
                ev.channel = _intern(ev.channel)
                ev.warehouse = _intern(ev.warehouse)
            elif type(ev) is WmsEvent:
                ev.warehouse = _intern(ev.warehouse)


def _intern(s: str | None) -> str | None:
    return None if s is None else sys.intern(s)


class Router:
    """flat_map_batch mapper: chunks in, `(shard key, ShardBatch)` and dead letters out."""

    def __init__(
        self,
        decoder: Decoder,
        runtime: Runtime,
        *,
        live: bool = False,
        max_future_ms: int = 600_000,
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._decoder = decoder
        self._runtime = runtime
        self._count = runtime.shards
        self._keys = shard_keys(runtime.shards)
        self._live = live
        self._max_future = max_future_ms
        self._now = now_ms or (lambda: int(time.time() * 1000))

    def __call__(self, chunks: list[RawChunk]) -> Iterable[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for chunk in chunks:
            out.extend(self.route(chunk))
        return out

    def route(self, chunk: RawChunk) -> list[tuple[str, Any]]:
        stats = self._runtime.intake()
        nginx = chunk.fmt == "nginx"
        decode: Any = decode_nginx if nginx else self._decoder.decode
        bound = None if nginx else chunk.bound_type
        count = self._count
        per_shard: list[list[tuple[int, Any]]] = [[] for _ in range(count)]
        rejects: list[tuple[str, Rejected]] = []
        by_type: dict[type, int] = {}
        max_ts = -1
        source = chunk.source
        live, now = self._live, self._now() if self._live else 0
        horizon = now + self._max_future if live and self._max_future > 0 else None
        crc = zlib.crc32
        for i, raw in enumerate(chunk.lines):
            if len(raw) < 2 and not raw.strip():
                continue  # blank line
            d = decode(raw, source, "", bound) if bound else decode(raw, source, "")
            if type(d) is not Decoded:
                assert isinstance(d, Rejected)
                d.position = chunk.position(i)  # built only for the few that need it
                rejects.append((DEAD_LETTER_KEY, d))
                continue
            ts, ev = d.ts_ms, d.event
            if horizon is not None and ts > horizon:
                ahead = f"ts is {(ts - now) // 1000}s ahead of the clock"
                rejects.append(
                    (
                        DEAD_LETTER_KEY,
                        Rejected("future_timestamp", ahead, source, chunk.position(i), raw),
                    )
                )
                continue
            if ts > max_ts:
                max_ts = ts
            t = type(ev)
            by_type[t] = by_type.get(t, 0) + 1
            if t is AccessLogEvent:
                self._traffic(stats, ev)
                continue
            oid = ev.order_id
            per_shard[crc(oid.encode("utf-8", "surrogatepass")) % count].append((ts, ev))
            if live:
                stats.observe_lag(source, max(0.0, (now - ts) / 1000))
        for t, n in by_type.items():
            stats.events[(source, t.__struct_config__.tag)] += n
        for _, rej in rejects:
            stats.rejected[(source, rej.reason)] += 1
        stats.lines_read += len(chunk.lines)
        stats.bytes_read += sum(map(len, chunk.lines))
        out: list[tuple[str, Any]] = rejects
        if max_ts >= 0:
            out.extend(
                (key, ShardBatch(key, evs, max_ts))
                for key, evs in zip(self._keys, per_shard, strict=True)
            )
        return out

    @staticmethod
    def _traffic(stats: Any, ev: AccessLogEvent) -> None:
        route = stats.routes(ev.route)
        stats.requests[(route, ev.method or "", _CLASSES.get(ev.status // 100, "other"))] += 1
        h = stats.latency.get(route)
        if h is None:
            h = stats.latency[route] = Histogram(_LATENCY_BUCKETS)
        h.observe(ev.latency_ms / 1000)


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
