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

import msgspec

from orderwatch.connectors.raw import RawChunk
from orderwatch.domain.lifecycle import canonical
from orderwatch.domain.stats import Histogram
from orderwatch.events import (
    AccessLogEvent,
    Decoder,
    OrderEvent,
    OrderScoped,
    Rejected,
    WmsEvent,
    decode_nginx_lines,
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
    """One shard's share of a chunk: (ts, event) pairs and the chunk's largest event time.

    `part`, `first` and `next` place the chunk in its source: chunks are decoded on any
    worker, and a shard applies them in source order again (`ChunkOrder`). `late` holds
    `(index, watermark at its arrival)` for each event more than the lateness behind the
    newest event before it in the chunk; the shard adds those behind the watermark it had.
    """

    __slots__ = ("events", "first", "key", "late", "max_ts", "next", "part", "written")

    def __init__(
        self,
        key: str,
        events: list[tuple[int, Any]],
        max_ts: int,
        part: str = "",
        first: int = 1,
        next_first: int = 1,
        late: list[tuple[int, int]] | None = None,
        written: int | None = None,
    ) -> None:
        self.key = key
        self.events = events
        self.max_ts = max_ts
        self.part = part
        self.first = first
        self.next = next_first
        self.late = late or []
        self.written = written  # `RawChunk.written`

    # Only crossing a process boundary pickles a batch: one msgpack blob (msgspec, C speed)
    # instead of a pickle per event struct, which cost more than the work it moved.
    def __getstate__(self) -> tuple[Any, ...]:
        events = _PACK(self.events)
        return (
            self.key,
            events,
            self.max_ts,
            self.part,
            self.first,
            self.next,
            self.late,
            self.written,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (self.key, blob, self.max_ts, self.part, self.first, self.next, self.late, self.written) = (
            state
        )
        self.events = _UNPACK(blob)
        for _, ev in self.events:  # share the few distinct strings again
            if type(ev) is OrderEvent:
                ev.status = canonical(ev.status) or ev.status
                ev.channel = _intern(ev.channel)
                ev.warehouse = _intern(ev.warehouse)
            elif type(ev) is WmsEvent:
                ev.warehouse = _intern(ev.warehouse)


class ChunkOrder:
    """Puts a shard's batches back in source order (decoding may finish out of order).

    Every chunk sends one batch to every shard, so a shard sees each chunk of each source;
    it holds early ones until the gap before them is filled. Sources number their lines
    from 1, so the first chunk of every source starts there.
    """

    __slots__ = ("_expected", "_waiting")

    def __init__(self) -> None:
        self._expected: dict[str, int] = {}
        self._waiting: dict[str, dict[int, ShardBatch]] = {}

    def ready(self, batch: ShardBatch) -> list[ShardBatch]:
        """The batches that can be applied now, in order (possibly none)."""
        part = batch.part
        expected = self._expected.get(part, 1)
        if batch.first != expected:
            self._waiting.setdefault(part, {})[batch.first] = batch
            return []
        out = [batch]
        expected = batch.next
        waiting = self._waiting.get(part)
        while waiting and expected in waiting:
            nxt = waiting.pop(expected)
            out.append(nxt)
            expected = nxt.next
        self._expected[part] = expected
        return out

    def leftovers(self) -> list[ShardBatch]:
        """At the end of the input: whatever still waits, in order (a gap means a lost chunk)."""
        out = [b for w in self._waiting.values() for _, b in sorted(w.items())]
        self._waiting.clear()
        return out


_PACK = msgspec.msgpack.Encoder().encode
_UNPACK = msgspec.msgpack.Decoder(list[tuple[int, OrderScoped]]).decode


def _intern(s: str | None) -> str | None:
    return None if s is None else sys.intern(s)


class Router:
    """flat_map_batch mapper: chunks in, `(shard key, ShardBatch)` and dead letters out."""

    def __init__(
        self,
        decoder: Decoder,
        runtime: Runtime,
        *,
        lateness_ms: int,
        live: bool = False,
        max_future_ms: int = 600_000,
        simulated: frozenset[str] = frozenset(),
        now_ms: Callable[[], int] | None = None,
    ) -> None:
        self._decoder = decoder
        self._runtime = runtime
        self._count = runtime.shards
        self._lateness = lateness_ms
        self._keys = shard_keys(runtime.shards)
        self._live = live
        self._max_future = max_future_ms
        self._simulated = simulated  # sources exempt from max_future: ahead by design
        self._now = now_ms or (lambda: int(time.time() * 1000))

    def __call__(self, chunks: list[RawChunk]) -> Iterable[tuple[str, Any]]:
        out: list[tuple[str, Any]] = []
        for chunk in chunks:
            out.extend(self.route(chunk))
        return out

    def route(self, chunk: RawChunk) -> list[tuple[str, Any]]:
        stats = self._runtime.intake()
        source = chunk.source
        live, now = self._live, self._now() if self._live else 0
        horizon = (
            now + self._max_future
            if live and self._max_future > 0 and source not in self._simulated
            else None
        )
        if chunk.fmt == "nginx":
            good, bad = decode_nginx_lines(chunk.lines, source, horizon)
        else:
            good, bad = self._decoder.decode_lines(chunk.lines, source, chunk.bound_type, horizon)
        rejects: list[tuple[str, Rejected]] = []
        for i, rej in bad:
            rej.position = chunk.position(i)  # built only for the few that need it
            rejects.append((DEAD_LETTER_KEY, rej))
        count = self._count
        per_shard: list[list[tuple[int, Any]]] = [[] for _ in range(count)]
        by_type: dict[type, int] = {}
        access: list[AccessLogEvent] = []
        late: list[list[tuple[int, int]]] = [[] for _ in range(count)]
        max_ts = -1
        lateness = self._lateness
        floor = None  # the watermark the newest event so far sets: older events are late
        crc = zlib.crc32
        for pair in good:
            ts, ev = pair  # the pair goes on as it is: no new tuple per event
            if ts > max_ts:
                max_ts = ts
                floor = ts - lateness
                late_at = None
            else:
                late_at = floor if floor is not None and ts < floor else None
            t = type(ev)
            by_type[t] = by_type.get(t, 0) + 1
            if live:  # every event type: an access-log source falls behind like any other
                stats.observe_lag(source, max(0.0, (now - ts) / 1000))
            if t is AccessLogEvent:
                access.append(ev)
                continue
            try:  # plain encode() is CPython's fast path; lone surrogates need the slow one
                h = crc(ev.order_id.encode())
            except UnicodeEncodeError:
                h = crc(ev.order_id.encode("utf-8", "surrogatepass"))
            shard = per_shard[h % count]
            if late_at is not None:
                late[h % count].append((len(shard), late_at))
            shard.append(pair)
        if access:
            self._traffic(stats, access)
        for t, n in by_type.items():
            stats.events[(source, t.__struct_config__.tag)] += n
        for _, rej in rejects:
            stats.rejected[(source, rej.reason)] += 1
        stats.lines_read += len(chunk.lines)
        stats.bytes_read += sum(map(len, chunk.lines))
        out: list[tuple[str, Any]] = rejects
        # Every shard hears of every chunk, even one without a valid event (max_ts -1):
        # that is how a shard knows no earlier chunk is still on its way.
        next_first, written = chunk.first + len(chunk.lines), chunk.written
        out.extend(
            (key, ShardBatch(key, evs, max_ts, source, chunk.first, next_first, marks, written))
            for key, evs, marks in zip(self._keys, per_shard, late, strict=True)
        )
        return out

    @staticmethod
    def _traffic(stats: Any, events: list[AccessLogEvent]) -> None:
        """Access logs of one chunk, counted per (route, method, code class)."""
        counts: dict[tuple[str, str | None, int], int] = {}
        latencies: dict[str, list[float]] = {}
        for ev in events:
            key = (ev.route, ev.method, ev.status // 100)
            counts[key] = counts.get(key, 0) + 1
            lat = latencies.get(ev.route)
            if lat is None:
                lat = latencies[ev.route] = []
            lat.append(ev.latency_ms)
        for (route, method, cls), n in counts.items():
            stats.requests[(stats.routes(route), method or "", _CLASSES.get(cls, "other"))] += n
        for route, values in latencies.items():
            label = stats.routes(route)
            h = stats.latency.get(label)
            if h is None:
                h = stats.latency[label] = Histogram(_LATENCY_BUCKETS)
            for v in values:
                h.observe(v / 1000)


_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
