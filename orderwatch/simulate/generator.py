"""The merged, deterministic event stream of the simulator and its JSONL writer.

How the stream is made (all in simulated time, nothing reads the wall clock):

- New orders arrive as a Poisson process at ``orders_per_minute``; each becomes a small state
  machine (:class:`~orderwatch.simulate.model.Journey`, phases in
  :mod:`orderwatch.simulate.journeys`) whose steps emit a few events and say when the next step
  is due. Access logs (and the extra ``callback_storm`` traffic) are generators that emit one
  simulated second of requests per step.
- Each event gets an arrival time: its true time for order and access-log events, and its true
  time plus a jitter in ``(-max_disorder_ms, +max_disorder_ms)`` for payment, WMS and logistics
  events. Order events of one order therefore keep their event-time order.
- A calendar queue (1 s buckets keyed by arrival time, the current bucket kept as a heap) holds
  the scheduled events and the due steps; a step due at ``W`` is keyed ``W - max_disorder_ms``,
  the earliest arrival any event it produces can have. So popping the queue in key order emits
  events in arrival order and runs every step just in time.
- Memory is one ``Journey`` (a few hundred bytes) plus rarely more than a minute of scheduled
  events per open order, and about ``2 * max_disorder_ms`` of traffic in flight; nothing grows
  with the run length or the number of events.

Given the same seed and arguments the stream is identical, byte for byte, in any process.
"""

from __future__ import annotations

import itertools
import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from heapq import heapify, heappop, heappush
from random import Random
from typing import Any, BinaryIO, Final

import orjson

from orderwatch.simulate.access_logs import AccessLogs
from orderwatch.simulate.journeys import start
from orderwatch.simulate.model import (
    CARRIERS,
    CHANNEL_WEIGHTS,
    KIND_MIX,
    NATIVE_PAID,
    NATIVE_PAID_SHARE,
    NORMAL,
    NUMERIC_AMOUNT_SHARE,
    Context,
    Event,
    Journey,
    order_id_prefix,
)
from orderwatch.simulate.scenarios import (
    ALLOCATION_BACKLOG,
    CALLBACK_STORM,
    NAIVE_TIMESTAMP,
    ScenarioPlan,
)

DEFAULT_CHANNELS: Final = ("tmall", "jd", "douyin", "pdd", "miniapp", "pos")
DEFAULT_WAREHOUSES: Final = ("WH-SH-01", "WH-GZ-02", "WH-BJ-03", "WH-CD-04")
#: Event types whose arrival may be out of order relative to order events.
LATE_TYPES: Final = frozenset({"payment", "wms", "logistics"})
#: Width of a calendar-queue bucket.
_BUCKET_MS: Final = 1_000
#: A queued event (arrival, seq, event, mark) or a due step (key, seq, None, who), where ``who`` is
#: a Journey, an access-log generator, or None for "start the next order".
_Entry = tuple[int, int, Event | None, Any]


class Simulator:
    """Realistic order, payment, WMS, logistics and access-log traffic with injected faults.

    ``orders_per_minute`` is the rate of *new* orders; each fault-free order yields about 21
    events over its 5-20 h life (see ``journeys``), so the event rate grows during the first hours
    of a run and settles near ``orders_per_minute * 21 / 60 + access_logs_per_second`` events per
    simulated second. ``orders_until_ms`` (optional) stops new orders at that instant; open
    journeys then run to completion, so a run without access logs ends by itself.
    """

    def __init__(
        self,
        *,
        seed: int = 1,
        start_ms: int,
        orders_per_minute: float = 600.0,
        scenarios: Mapping[str, float] | None = None,
        access_logs_per_second: float = 20.0,
        max_disorder_ms: int = 20_000,
        channels: Sequence[str] = DEFAULT_CHANNELS,
        warehouses: Sequence[str] = DEFAULT_WAREHOUSES,
        orders_until_ms: int | None = None,
    ) -> None:
        for name, rate in (
            ("orders_per_minute", orders_per_minute),
            ("access_logs_per_second", access_logs_per_second),
        ):
            if not math.isfinite(rate) or rate < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {rate!r}")
        if max_disorder_ms < 0:
            raise ValueError(f"max_disorder_ms must be >= 0, got {max_disorder_ms}")
        if not channels or not warehouses:
            raise ValueError("channels and warehouses must not be empty")
        self._plan = ScenarioPlan(scenarios, seed=seed, start_ms=start_ms)
        self._ctx = Context(seed=seed, start_ms=start_ms, plan=self._plan, warehouses=warehouses)
        self._start_ms = int(start_ms)
        self._disorder = int(max_disorder_ms)
        self._orders_until = orders_until_ms
        self._order_rate = orders_per_minute / 60_000.0
        self._order_clock = float(start_ms)
        self._orng = Random(f"{seed}:orders")
        self._jitter = Random(f"{seed}:jitter").random
        self._access_rate = access_logs_per_second
        self._access = AccessLogs(self._ctx, Random(f"{seed}:access"), self._plan.storm)
        self._channels = tuple(channels)
        self._channel_cum = _cumulative([CHANNEL_WEIGHTS.get(c, 1.0) for c in channels])
        self._warehouses = tuple(warehouses)
        self._carriers = tuple(c for c, _ in CARRIERS)
        self._carrier_cum = _cumulative([w for _, w in CARRIERS])
        self._day = self._ctx.day
        self._n_orders = 0
        self._injected: dict[str, dict[str, None]] = {n: {} for n in self._plan.enabled}
        self._clock = self._start_ms
        # The calendar queue: bucket id -> entries; ids of those buckets; the current bucket.
        self._cal: dict[int, list[_Entry]] = {}
        self._buckets: list[int] = []
        self._cur: list[_Entry] = []
        self._cur_id: int | None = None
        self._seq = itertools.count()
        self._start()

    # ---- public API -------------------------------------------------------------------------
    @property
    def injected(self) -> Mapping[str, list[str]]:
        """Ground truth so far: enabled scenario -> order_ids (routes for ``callback_storm``)."""
        return {name: list(ids) for name, ids in self._injected.items()}

    @property
    def windows(self) -> Mapping[str, list[tuple[int, int]]]:
        """Fault windows ``[start_ms, end_ms)`` opened so far, for the window scenarios."""
        found: dict[str, list[tuple[int, int]]] = {}
        if self._plan.storm is not None:
            found[CALLBACK_STORM] = self._plan.storm.opened_before(self._clock)
        if self._plan.backlog is not None:
            found[ALLOCATION_BACKLOG] = self._plan.backlog.opened_before(self._clock)
        return found

    @property
    def orders_created(self) -> int:
        """How many orders have been started so far (their events may still be pending)."""
        return self._n_orders

    def events(
        self, *, until_ms: int | None = None, max_events: int | None = None
    ) -> Iterator[Event]:
        """Events as JSON-ready dicts, in arrival order, lazily.

        Stops before the first event arriving after ``until_ms`` or after ``max_events`` events
        (endless if neither is given and orders keep coming). A later call continues where the
        previous one stopped; do not interleave two open iterators.
        """
        return self._take(until_ms, max_events, timed=False)

    def timed_events(
        self, *, until_ms: int | None = None, max_events: int | None = None
    ) -> Iterator[tuple[int, Event]]:
        """Like :meth:`events`, as ``(arrival_ms, event)`` pairs (for pacing a live source)."""
        return self._take(until_ms, max_events, timed=True)

    # ---- internals --------------------------------------------------------------------------
    def _take(self, until: int | None, limit: int | None, *, timed: bool) -> Iterator[Any]:
        """The driver: pop the calendar queue in key order, run due steps, yield due events."""
        injected = self._injected
        ctx = self._ctx
        out = ctx.out
        cal = self._cal
        buckets = self._buckets
        seq = self._seq
        disorder = self._disorder
        jitter = self._jitter
        late = LATE_TYPES
        push = self._push
        cur = self._cur
        cur_id = self._cur_id
        count = 0
        while limit is None or count < limit:
            if not cur:
                if not buckets:
                    return
                self._cur_id = cur_id = heappop(buckets)
                self._cur = cur = cal.pop(cur_id)
                heapify(cur)
            key, _, event, aux = cur[0]
            if until is not None and key > until:
                return
            heappop(cur)
            if event is not None:
                if aux is not None:
                    injected.setdefault(aux[0], {})[aux[1]] = None
                self._clock = key
                count += 1
                yield (key, event) if timed else event
                continue
            # A step is due at `now`: start an order, run a journey phase or an access-log second.
            now = key + disorder
            if aux is None:
                aux = self._new_order()
                due = start(aux, ctx, now)
                nxt = self._next_order_at()
                if nxt is not None:
                    push(nxt - disorder, None)
            elif type(aux) is Journey:
                due = aux.phase(aux, ctx, now)
            else:
                due = next(aux, None)
            for ts, event, mark in out:
                if ts < now:
                    raise RuntimeError(f"simulator step went back in time: {event!r}")
                if disorder and event["type"] in late:
                    arrival = ts + int(disorder * (jitter() - jitter()))
                else:
                    arrival = ts
                entry = (arrival, next(seq), event, mark)
                b = arrival // _BUCKET_MS
                if b == cur_id:
                    heappush(cur, entry)
                else:
                    bucket = cal.get(b)
                    if bucket is None:
                        cal[b] = [entry]
                        heappush(buckets, b)
                    else:
                        bucket.append(entry)
            out.clear()
            if due is not None:
                if due < now:
                    raise RuntimeError(f"simulator step scheduled in the past: {aux!r}")
                push(due - disorder, aux)

    def _push(self, key: int, who: Journey | Iterator[int] | None) -> None:
        """Queue a step (``who``: a journey, an access-log generator, None for a new order).

        A step due at ``W`` is keyed ``W - max_disorder_ms``: nothing it produces can arrive
        earlier, so every event queued before it with a smaller key can be emitted first.
        """
        entry = (key, next(self._seq), None, who)
        b = key // _BUCKET_MS
        if b == self._cur_id:
            heappush(self._cur, entry)
        else:
            bucket = self._cal.get(b)
            if bucket is None:
                self._cal[b] = [entry]
                heappush(self._buckets, b)
            else:
                bucket.append(entry)

    def _next_order_at(self) -> int | None:
        if self._order_rate <= 0.0:
            return None
        self._order_clock += self._orng.expovariate(self._order_rate)
        t = int(self._order_clock)
        if self._orders_until is not None and t >= self._orders_until:
            return None
        return t

    def _new_order(self) -> Journey:
        r = self._orng.random
        self._n_orders += 1
        channel = self._channels[bisect_right(self._channel_cum, r())]
        fault = self._plan.pick(r())
        u = r()
        kind = NORMAL if fault else _kind(u)
        # Prices: log-normal around 159 yuan, with shop-like endings (.00 .90 .99 .80 .50).
        yuan = min(max(int(159.0 * math.exp(0.9 * self._orng.gauss(0.0, 1.0))), 5), 19_999)
        cents = yuan * 100 + (0, 0, 0, -10, -1, -20, -50, 0)[int(r() * 8)]
        paid_status = "paid"
        native = NATIVE_PAID.get(channel)
        if native is not None and r() < NATIVE_PAID_SHARE:
            paid_status = native
        if fault == NAIVE_TIMESTAMP:
            warehouse = self._warehouses[-1]  # the one warehouse still on the legacy WMS
        else:
            warehouse = self._warehouses[int(r() * len(self._warehouses))]
        carrier = "JD"  # JD orders ship with JD logistics
        if channel != "jd":
            carrier = self._carriers[bisect_right(self._carrier_cum, r())]
        return Journey(
            order_id=f"{order_id_prefix(channel)}{self._day}{self._n_orders:08d}",
            channel=channel,
            cents=cents,
            kind=kind,
            fault=fault,
            warehouse=warehouse,
            carrier=carrier,
            numeric=r() < NUMERIC_AMOUNT_SHARE,
            paid_status=paid_status,
            source="erp" if channel == "pos" else "oms",
        )

    def _start(self) -> None:
        """Queue the first order and the access-log generators."""
        first = self._next_order_at()
        if first is not None:
            self._push(first - self._disorder, None)
        if self._access_rate > 0.0:
            for gen in (
                self._access.baseline(self._start_ms, self._access_rate),
                self._access.storm_extra(self._access_rate),
            ):
                self._push(self._start_ms - self._disorder, gen)


class JsonlWriter:
    """One compact JSON object per line (UTF-8) to ``out``, written in batches of ``batch`` lines.

    :meth:`write_all` writes a batch at a time (large writes, no flush per line); :meth:`flush`
    writes what is batched and flushes ``out``, e.g. before waiting for a pacing clock, so paced
    output never sits in the batch. ``written`` counts the lines written so far, ``orders`` the
    distinct ``order_id`` values among the lines written or batched (when ``count_orders``).
    Setting ``stopping`` (e.g. from a signal handler) ends :meth:`write_all` after the batch.
    """

    def __init__(self, out: BinaryIO, *, batch: int = 4_096, count_orders: bool = False) -> None:
        self._out = out
        self._batch = batch
        self._buf: list[bytes] = []
        self._seen: set[object] | None = set() if count_orders else None
        self.written = 0
        self.stopping = False

    @property
    def orders(self) -> int:
        """How many distinct order ids the lines written or batched carry."""
        seen = self._seen or set()
        return len(seen) - (None in seen)

    def write_all(self, events: Iterable[Event]) -> int:
        """Write ``events`` (until exhausted or ``stopping``); return the lines written in all."""
        dumps = orjson.dumps
        option = orjson.OPT_APPEND_NEWLINE
        buf = self._buf
        batch = self._batch
        seen = self._seen
        for event in events:
            buf.append(dumps(event, option=option))
            if seen is not None:
                seen.add(event.get("order_id"))
            if len(buf) >= batch:
                self._write_batch()
                if self.stopping:
                    break
        self._write_batch()
        return self.written

    def flush(self) -> None:
        """Write the batched lines and flush ``out``."""
        self._write_batch()
        self._out.flush()

    def _write_batch(self) -> None:
        buf = self._buf
        if buf:
            self._out.write(b"".join(buf))
            self.written += len(buf)
            buf.clear()


def write_jsonl(events: Iterable[Event], out: BinaryIO) -> int:
    """Write one compact JSON object per line (UTF-8) to ``out``; return the number written."""
    return JsonlWriter(out).write_all(events)


def _cumulative(weights: Sequence[float]) -> list[float]:
    total = sum(weights)
    acc = 0.0
    cum: list[float] = []
    for w in weights:
        acc += w
        cum.append(acc / total)
    cum[-1] = 1.0 + 1e-12
    return cum


def _kind(u: float) -> int:
    """Journey kind for a uniform ``u`` (KIND_MIX shares, NORMAL for the rest)."""
    acc = 0.0
    for kind, share in KIND_MIX:
        acc += share
        if u < acc:
            return kind
    return NORMAL
