"""The orders of one shard, driven in event time by a watermark (CONTRACT §2-§3).

Events are buffered and applied in event-time order (ties: order, payment, WMS, logistics,
then arrival) once the watermark has passed them. Before an event at `t` is applied, every
deadline `T < t` fires, so a condition ended by an event at exactly `T` never fires, and one
ended later fires at `T` and resolves at the event's time. A deadline fires once the watermark
is past it (at the end of the input: once it reaches it), so an event exactly `lateness`
behind the newest one is still in time. Each order has at most one live entry in the deadline
heap: its earliest due time, re-computed after every change.

A late event (behind the watermark when it arrived) is applied at its arrival, after every
deadline that watermark had passed: `arrive` takes each one's arrival watermark, so where a
chunk of input happens to end never changes what a late event does.

Pure logic: no bytewax, no wall clock. The result depends only on the events and the
watermarks fed in, which is what makes replays exact and worker counts irrelevant.
"""

from __future__ import annotations

import heapq
from bisect import bisect_right
from collections.abc import Callable
from itertools import combinations
from typing import Any

from orderwatch.domain import timeline, wording
from orderwatch.domain.alert import FIRING, RESOLUTION, UNCONFIRMED, AlertChange
from orderwatch.domain.deadlines import FarDeadlines
from orderwatch.domain.dedup import (
    Deduper,
    ended_entry,
    ended_in,
    event_entry,
    event_key,
    seen_in,
)
from orderwatch.domain.lifecycle import (
    CLOSING,
    CREATED,
    DEPOSIT_PAID,
    PAID,
    REFUND_REQUESTED,
    SHIPPED,
    TERMINAL,
)
from orderwatch.domain.money import Money, exact_sum, show, to_cents
from orderwatch.domain.order import (
    AMOUNT_OK,
    ANOMALY_BIT,
    APPLIED,
    COLLECTED,
    GAP_DONE_BIT,
    GAP_FIRING_BIT,
    PAID_ANY,
    PRESALE,
    SHIPPED_SEEN,
    WMS_CANCELLED,
    WMS_SHIPPED,
    OrderRec,
    add_payment,
    has_payment,
    new_order,
    payment_list,
    remove_payment,
    stuck_done,
    stuck_firing,
)
from orderwatch.domain.packing import Packer, packed_due
from orderwatch.domain.rules import (
    AMOUNT_MISMATCH,
    ANOMALIES,
    ANOMALY_ALERT,
    CONFLICTING_TRACKING,
    DUPLICATE_PAYMENT,
    GAP_ALERT,
    GAP_RULES,
    ILLEGAL_TRANSITION,
    PAID_WITHOUT_WMS,
    PAYMENT_NOT_APPLIED,
    SHIPPED_WITHOUT_TRACKING,
    STUCK_ALERT,
    WMS_WITHOUT_PAYMENT,
    RuleSet,
    StuckSpec,
)
from orderwatch.domain.stats import ShardStats
from orderwatch.events import LogisticsEvent, OrderEvent, PaymentEvent, WmsEvent

_ANOMALY_FLAG = {kind: 1 << (ANOMALY_BIT + i) for i, kind in enumerate(ANOMALIES)}
_GAP_DONE = {name: 1 << (GAP_DONE_BIT + i) for i, name in enumerate(GAP_RULES)}
_ALL_GAPS_DONE = sum(_GAP_DONE.values())
_GAP_FIRING = {name: 1 << (GAP_FIRING_BIT + i) for i, name in enumerate(GAP_RULES)}


_RANK: dict[type, int] = {OrderEvent: 0, PaymentEvent: 1, WmsEvent: 2, LogisticsEvent: 3}
_AFTER_ANY_RANK = 9  # (watermark, 9) sorts after every (watermark, rank, seq, event)
_AMOUNT_SETTLED = AMOUNT_OK | _ANOMALY_FLAG[AMOUNT_MISMATCH]
_COLLECT_STATUSES = frozenset({"shipped", "in_transit", "delivered", "completed"})
# How far past a carried alert's settling point the watermark must go before it ends as
# unconfirmed (`carry`): Alertmanager's `resolve_timeout` default.
CARRY_GRACE_MS = 5 * 60_000
_HEAP_SLACK = 4096  # superseded deadline-heap entries tolerated beyond 1.5 per live one
# What `_derive` sets up again on resume, left out of a snapshot.
_DERIVED = (
    "_carried",
    "_sorted",
    "_deadlines",
    "_handlers",
    "_ending",
    "_filtered_updates",
    "_ttl",
    "_retention",
    "_longest",
)
# A deadline-heap entry is one int, `(due - _EPOCH) << bits | slot`: it sorts by due time,
# and costs ~40 bytes where a (due, order id) tuple cost ~100 (a tuple, an int, often an id
# copy). Counted from 2025 with 20 slot bits it stays below 2**60, a two-digit int (32 bytes
# where an epoch-ms one took 48) for due times within ±34 years of then; later or earlier ones
# are still exact, only bigger. A shard that needs more than 2**20 slots widens its entries.
_EPOCH = 1_735_689_600_000  # 2025-01-01T00:00:00Z in ms
_SLOT_BITS = 20
_WIDEN_BY = 4


def heap_entry(entry: int, bits: int = _SLOT_BITS) -> tuple[int, int]:
    """(due, slot) of a deadline-heap entry made with `bits` slot bits."""
    return (entry >> bits) + _EPOCH, entry & ((1 << bits) - 1)


def _two_sum_to(amounts: list[Money], payable: Money | None) -> bool:
    """Whether a deposit and a balance among a presale's payments make the payable amount:
    with a duplicate among them, that is duplicate_payment's alert, not a mismatch too."""
    pairs = combinations(amounts, 2)
    return len(amounts) > 2 and any(exact_sum(pair) == payable for pair in pairs)


class ShardTracker:
    """All orders whose id hashes to one shard."""

    def __init__(self, rules: RuleSet, stats: ShardStats | None = None) -> None:
        self.rules = rules
        self.stats = stats or ShardStats()
        # An order is an `OrderRec` while in use, packed into bytes once idle (`_pack_idle`).
        self.orders: dict[str, OrderRec | bytes] = {}
        self._unpacked: set[str] = set()  # orders created or unpacked since they were packed
        self._busy: set[str] = set()  # orders with an event since the last `_pack_idle`
        self._pack_after = rules.pack_after
        self._pack_at = rules.pack_after
        self._packer = Packer(rules.pack_compression)
        self.packed = 0  # orders held packed now
        self.packed_bytes = 0  # their blobs' length
        self.firing: dict[tuple[str, str], AlertChange] = {}
        self.watermark: int | None = None
        self._settled: int | None = None  # events and deadlines at or before it are done
        self._pending: list[tuple[int, int, int, Any]] = []
        self._deadlines: list[int] = []  # heap entries (`heap_entry`) due soon, and
        self._far = FarDeadlines()  # those due after the watermark's time bucket
        # Order ids by slot: each order holds one slot for life (its heap entries name it).
        # The same str objects as the keys of `orders`. Freed slots are reused at once: a
        # stale entry then names another order, which it only touches if that order's own
        # entry has the same due time, where it does exactly what that entry would.
        self._slots: list[str | None] = []
        self._free: list[int] = []
        self._bits = _SLOT_BITS  # slot bits of a heap entry (`_widen`)
        self._mask = (1 << _SLOT_BITS) - 1
        self._heap_limit = _HEAP_SLACK
        self._seq = 0
        self._dedup = Deduper(rules.dedup_horizon_ms)
        self._zone = rules.timezone
        self._log_size = rules.timeline_events
        self._entered_rules = tuple(s for s in rules.stuck if s.since_entered)
        self._update_rules = tuple(s for s in rules.stuck if not s.since_entered)
        # Hot-path plans: plain tuples and precomputed bit masks instead of attribute lookups.
        self._stuck_plan = tuple(
            (
                s.index,
                s.statuses,
                s.max_dwell_ms,
                s.since_entered,
                stuck_done(s.index) | stuck_firing(s.index),
            )
            for s in rules.stuck
        )
        self._gap_plan = tuple(
            (g.within_ms, _GAP_DONE[name], name == WMS_WITHOUT_PAYMENT)
            for name, g in rules.gaps.items()
        )
        self._entered_plan = tuple(
            (
                s.index,
                s.statuses,
                s.max_dwell_ms,
                stuck_done(s.index),
                stuck_firing(s.index),
                s.name,
            )
            for s in self._entered_rules
        )
        self._update_plan = tuple((s.statuses, s.max_dwell_ms) for s in self._update_rules)
        self._update_firing = sum(stuck_firing(s.index) for s in self._update_rules)
        self._update_done = sum(stuck_done(s.index) for s in self._update_rules)
        self._derive()
        self._firing_mask = sum(_GAP_FIRING.values()) | sum(
            stuck_firing(s.index) for s in rules.stuck
        )

    def _derive(self) -> None:
        """What is derived, not kept in a snapshot (`__setstate__` calls it too)."""
        self._handlers: dict[type, Callable[..., str | None]] = {
            OrderEvent: self._on_order,
            PaymentEvent: self._on_payment,
            WmsEvent: self._on_wms,
            LogisticsEvent: self._on_logistics,
        }
        self._ending = b""  # the timeline record of the event being applied
        self._sorted = 0  # how much of `_pending`, from its start, is in order (`_sort_pending`)
        # Alerts the store held firing at this start, by (startsAt, fingerprint): `carry`. Not
        # in a snapshot: every start hands them over again.
        self._carried: list[tuple[int, str, AlertChange]] = []
        rules = self.rules
        # a late event's channel/warehouse may make one of these apply (`_touch`)
        self._filtered_updates = any(
            not s.since_entered and (s.channels is not None or s.warehouses is not None)
            for s in rules.stuck
        )
        self._ttl, self._retention = rules.order_ttl_ms, rules.terminal_retention_ms
        self._longest = rules.longest_window_ms

    # --- snapshots ---------------------------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        """Everything but what the orders themselves tell: the slot table and the deadline
        heap are rebuilt from them on resume (`__setstate__`). A snapshot pauses the dataflow
        while it pickles every order, and those two cost nearly half of it (0.9 → 0.49 s at
        1M orders without them: a million ints and a million look-ups of ids already written)."""
        state = self.__dict__.copy()
        state["_slots"] = len(self._slots)
        state["_far"] = self._far.open_until
        for derived in _DERIVED:
            del state[derived]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._derive()
        slots: list[str | None] = [None] * state["_slots"]
        heap: list[int] = []
        far = self._far = FarDeadlines(state["_far"])
        bits, packer = self._bits, self._packer
        for oid, rec in self.orders.items():
            if isinstance(rec, bytes):  # its slot is inside: unpack a copy to read it
                due, slot = packed_due(rec), packer.unpack(rec, oid).slot
            else:
                due, slot = rec.due, rec.slot
            slots[slot] = oid  # the key object, as `oid` of a record and the heap want it
            if due is not None:
                entry = (due - _EPOCH) << bits | slot
                if due < far.open_until or not far.add(entry, due):
                    heap.append(entry)
        heapq.heapify(heap)
        self._slots, self._deadlines = slots, heap
        live = len(heap) + far.count
        self._heap_limit = live + live // 2 + _HEAP_SLACK

    # --- intake ------------------------------------------------------------------------------

    def ingest(self, ts: int, ev: OrderEvent | PaymentEvent | WmsEvent | LogisticsEvent) -> bool:
        """Buffer one event until the watermark passes it."""
        return self.ingest_many([(ts, ev)]) == 1

    def ingest_many(self, events: list[tuple[int, Any]]) -> int:
        """Buffer `(ts, event)` pairs until the watermark passes them; returns the count."""
        seq = self._seq
        append = self._pending.append
        for ts, ev in events:
            seq += 1
            append((ts, _RANK[type(ev)], seq, ev))
        self._seq = seq
        return len(events)

    def arrive(
        self, events: list[tuple[int, Any]], late: list[tuple[int, int]]
    ) -> list[AlertChange]:
        """Buffer `events` (in arrival order); `late` lists `(index, watermark at its arrival)`
        of those that came behind the watermark, by index. Each late one is applied as if it
        had come alone: after every deadline its arrival watermark had passed."""
        out: list[AlertChange] = []
        self.stats.late += len(late)
        start = 0
        for i, mark in late:
            self.ingest_many(events[start:i])
            out += self.advance(mark, settle=False)
            self.ingest_many(events[i : i + 1])
            out += self.advance(mark, settle=False)
            start = i + 1
        self.ingest_many(events[start:] if start else events)
        return out

    def advance(
        self, watermark: int, *, final: bool = False, settle: bool = True
    ) -> list[AlertChange]:
        """Apply buffered events and fire deadlines before `watermark` (`final`: at or before
        it, for the end of the input, when nothing can come any more). `settle=False` leaves
        the carried alerts for later: a late event still to be applied may raise them."""
        out: list[AlertChange] = []
        settled = watermark if final else watermark - 1
        if self._settled is not None and settled < self._settled:
            settled = self._settled
        pending = self._pending
        if pending:
            if self._sorted < len(pending):
                self._sort_pending()
            cut = bisect_right(pending, (settled, _AFTER_ANY_RANK))
            deadlines, far = self._deadlines, self._far
            carried = self._carried if settle else None
            apply = self._apply
            for ts, _, _, ev in pending[:cut]:
                if carried and carried[0][0] < ts:
                    self._settle_carried(ts - 1, out)
                # due before ts? (`far` holds nothing due before its `open_until`)
                if ts > far.open_until or (
                    deadlines and deadlines[0] < (ts - _EPOCH) << self._bits
                ):
                    self._fire_due(ts - 1, out)
                apply(ts, ev, out)
            del pending[:cut]
            self._sorted = len(pending)
        if settle and self._carried:
            self._settle_carried(settled, out)
        self._fire_due(settled, out)
        if final and self._carried:
            self._settle_carried_at_end(settled, out)
        self._settled = settled
        if self.watermark is None or watermark > self.watermark:
            self.watermark = watermark
        self._dedup.expire(settled)
        if self._pack_after and len(self._unpacked) >= self._pack_at:
            self._pack_idle()
        return out

    def carry(self, alerts: list[AlertChange], since: int = 0) -> None:
        """Alerts of this shard's orders that the alert store held firing when this run began;
        `since`: how far the runs before had read (`AlertStore.progress`).

        Without the state that raised them (no recovery, or an older snapshot) nothing would
        ever end one whose order's events are no longer in the input: it would stay firing
        for good. Each is settled (`_settle_carried`) once the watermark passes the later of
        its `startsAt` and `since` (by then this run has read again what raised it, if it
        still can) plus `CARRY_GRACE_MS`, for what a source read more slowly delivers late."""
        known = {fp for _, fp, _ in self._carried}
        for alert in alerts:
            if alert.fingerprint not in known:
                known.add(alert.fingerprint)
                at = max(alert.starts_at, since) + CARRY_GRACE_MS
                heapq.heappush(self._carried, (at, alert.fingerprint, alert))

    def _settle_carried_at_end(self, end: int, out: list[AlertChange]) -> None:
        """The end of a finite input: nothing can come any more, so a carried alert that
        started by then and was not raised again ends now, at the input's last event time,
        without waiting for its grace (as deadlines after the end, one that starts later
        stays as it is)."""
        due = [c for c in self._carried if c[2].starts_at <= end]
        if not due:
            return
        self._carried = [c for c in self._carried if c[2].starts_at > end]
        heapq.heapify(self._carried)
        for _, fp, alert in sorted(due):
            if not self._raised_again(fp, alert):
                out.append(alert.resolved(end, **{RESOLUTION: UNCONFIRMED}))

    def _raised_again(self, fp: str, alert: AlertChange) -> bool:
        """Does this run hold the same instance of the carried `alert` firing?"""
        labels = alert.labels
        held = self.firing.get((labels.get("order_id", ""), labels.get("rule", "")))
        return held is not None and held.fingerprint == fp and held.starts_at == alert.starts_at

    def _settle_carried(self, until: int, out: list[AlertChange]) -> None:
        """Settle the carried alerts due by `until`, each in event-time order with the
        deadlines and events around it, so that what is announced does not depend on the
        batches: one this run fired again (the same instance) goes on as its own; any other
        ends at its settling time, worded as unconfirmed. One this run fired with another
        `startsAt` before then has superseded it in the store, which drops that end."""
        carried = self._carried
        while carried and carried[0][0] <= until:
            at, fp, alert = carried[0]
            self._fire_due(at, out)  # what this run raises by then, first
            heapq.heappop(carried)
            if not self._raised_again(fp, alert):
                out.append(alert.resolved(at, **{RESOLUTION: UNCONFIRMED}))

    def _sort_pending(self) -> None:
        """Sort what was buffered since the last advance into the sorted rest. Only the part of
        the rest that the new events overlap is merged: the buffer holds `lateness` × the rate
        (60 s at 10,000 events/s: ~19,000 per shard), and sorting all of it at every activation
        (each chunk, each wake-up) took a live daemon's whole core at ~10,000 events/s."""
        pending, done = self._pending, self._sorted
        new = pending[done:]
        new.sort()
        if done and new[0] < pending[done - 1]:  # behind the newest: merge from where it goes
            at = bisect_right(pending, new[0], 0, done)
            new = sorted(pending[at:done] + new)  # two sorted runs: one linear merge
            del pending[at:]
            pending += new
        else:  # the common case: all of it after what waits already
            pending[done:] = new
        self._sorted = len(pending)

    def record(self, oid: str) -> OrderRec | None:
        """The order's record to read (a private copy if it is packed), or None."""
        rec = self.orders.get(oid)
        return self._packer.unpack(rec, oid) if isinstance(rec, bytes) else rec

    def _unpack(self, oid: str, blob: bytes) -> OrderRec:
        rec = self._packer.unpack(blob, oid)
        self.packed_bytes -= len(blob)
        rec.oid = self._slots[rec.slot]  # the key object, not the caller's copy
        self.orders[oid] = rec
        self._unpacked.add(oid)
        self.packed -= 1
        return rec

    def _pack_idle(self) -> None:
        """Pack the unpacked orders that had no event since the last call.

        Runs once `pack_after` more orders were unpacked than the last call left, so an
        order's events in quick succession unpack it once, and the orders kept unpacked are
        about those busy lately plus `pack_after`. Results never depend on it.
        """
        orders, busy, packer = self.orders, self._busy, self._packer
        for oid in self._unpacked - busy:
            rec = orders.get(oid)
            if isinstance(rec, OrderRec):
                blob = orders[oid] = packer.pack(rec)
                self.packed += 1
                self.packed_bytes += len(blob)
        self._unpacked &= busy
        self._busy = set()
        self._pack_at = len(self._unpacked) + self._pack_after
        if packer.take_fresh():  # its dictionary just came in: compress the earlier ones
            for oid, rec in orders.items():
                if isinstance(rec, bytes):
                    blob = orders[oid] = packer.recompress(rec)
                    self.packed_bytes += len(blob) - len(rec)

    @property
    def buffered(self) -> int:
        return len(self._pending)

    def next_due(self) -> int | None:
        """The earliest event time at which something may happen (a buffered event, a deadline
        or a carried alert to settle)."""
        pending, done = self._pending, self._sorted
        times = [pending[0][0]] if done else []  # the sorted part's first
        if done < len(pending):
            times.append(min(p[0] for p in pending[done:]))
        if self._deadlines:
            times.append(heap_entry(self._deadlines[0], self._bits)[0])
        far = self._far.earliest()
        if far is not None:
            times.append(heap_entry(far, self._bits)[0])
        if self._carried:
            times.append(self._carried[0][0])
        return min(times) if times else None

    # --- deadlines ---------------------------------------------------------------------------

    def deadline_entries(self) -> list[int]:
        """Every heap entry held, the heap's and the far buckets' (`heap_entry` reads one)."""
        return [*self._deadlines, *self._far.entries()]

    def _fire_due(self, limit: int, out: list[AlertChange]) -> None:
        heap = self._deadlines
        if limit >= self._far.open_until:
            self._far.open(limit, heap)
        orders, slots = self.orders, self._slots
        bits, mask = self._bits, self._mask  # firing adds no order, so they stay as they are
        bound = (limit - _EPOCH) << bits | mask  # the last entry due at `limit`
        while heap and heap[0] <= bound:
            entry = heapq.heappop(heap)
            due = (entry >> bits) + _EPOCH
            oid = slots[entry & mask]
            if oid is None:
                continue  # its order was forgotten
            rec = orders[oid]
            if isinstance(rec, bytes):
                if packed_due(rec) != due:
                    continue
                rec = self._unpack(oid, rec)
            elif rec.due != due:
                continue  # superseded by an earlier entry for the same order
            rec.due = None
            if self._evaluate(oid, rec, due, out):
                self._schedule(oid, rec)

    def _schedule(self, oid: str, rec: OrderRec) -> None:
        """Make the order's heap entry cover its earliest deadline (full recomputation)."""
        due = self._next_due(rec)
        if due is not None and (rec.due is None or due < rec.due):
            self._push(oid, rec, due)

    def _offer(self, oid: str, rec: OrderRec, due: int) -> None:
        """A new deadline appeared: make sure the heap entry is no later than it.

        Deadlines that move later need no offer: the entry then pops early, finds nothing due
        and is rescheduled from scratch. So each event only pays for what it created.
        """
        if rec.due is None or due < rec.due:
            self._push(oid, rec, due)

    def _push(self, oid: str, rec: OrderRec, due: int) -> None:
        rec.due = due
        heap, far = self._deadlines, self._far
        entry = (due - _EPOCH) << self._bits | rec.slot
        if due < far.open_until or not far.add(entry, due):
            heapq.heappush(heap, entry)
        if len(heap) + far.count > self._heap_limit:
            self._compact()

    def _compact(self) -> None:
        """Drop superseded heap entries (an earlier offer for the same order replaced them).

        They would pop harmlessly, but until then each costs ~40 bytes in the heap (~8 in
        `_far`); an order gets a new entry whenever its next deadline moves earlier. Rebuilding
        after the entries have grown by half keeps the cost amortised O(1) per push.
        """
        orders, slots = self.orders, self._slots
        bits, mask = self._bits, self._mask

        def is_live(entry: int) -> bool:
            oid = slots[entry & mask]
            if oid is None:
                return False
            rec = orders[oid]
            due = packed_due(rec) if isinstance(rec, bytes) else rec.due
            return due == (entry >> bits) + _EPOCH

        live = [entry for entry in self._deadlines if is_live(entry)]
        heapq.heapify(live)
        self._deadlines[:] = live  # in place: `_fire_due` holds the list while it pops
        self._far.keep(is_live)
        count = len(live) + self._far.count
        self._heap_limit = count + count // 2 + _HEAP_SLACK

    def _widen(self) -> None:
        """More orders than the slot bits can name: give every heap entry more of them. Rare
        (at 2**20 orders in one shard, then every 16× more); the order of entries is kept, so
        the list stays a heap, changed in place as `advance` holds it."""
        old, mask = self._bits, self._mask
        new = old + _WIDEN_BY

        def wider(entry: int) -> int:
            return (entry >> old) << new | (entry & mask)

        self._deadlines[:] = [wider(e) for e in self._deadlines]
        self._far.rewrite(wider, self._deadlines)
        self._bits, self._mask = new, (1 << new) - 1

    def _next_due(self, rec: OrderRec) -> int | None:
        best: int | None = None
        flags = rec.flags
        status = rec.status
        entered = rec.entered
        for index, statuses, dwell, since_entered, busy in self._stuck_plan:
            if flags & busy or status not in statuses:
                continue
            clock = (entered[index] if entered else None) if since_entered else rec.last_update
            if clock is not None and (best is None or clock + dwell < best):
                best = clock + dwell
        for within, done, wms_clock in self._gap_plan:
            if flags & done:
                continue
            clock = rec.wms_at if wms_clock else rec.paid_at
            if clock is not None and (best is None or clock + within < best):
                best = clock + within
        expiry = self._expiry(rec)
        if expiry is not None and (best is None or expiry < best):
            best = expiry
        return best

    def _expiry(self, rec: OrderRec) -> int | None:
        if rec.flags & self._firing_mask:
            return None  # never forget an order with a firing alert
        expiry = rec.seen + self._ttl  # idle
        if rec.status in TERMINAL:
            expiry = min(rec.since + self._retention, expiry)
        if expiry < rec.seen + self._longest:  # (every clock is at or before `seen`)
            # Not before a deadline that may still fire: a closed order's `wms_without_payment`
            # (the goods may have left unpaid), a completed order's 漏发.
            last = self._last_open_deadline(rec)
            if last is not None and last > expiry:
                return last
        return expiry

    def _last_open_deadline(self, rec: OrderRec) -> int | None:
        """The latest deadline of a rule that may still fire for the order: not evaluated
        yet, its clock running, its condition still open."""
        last: int | None = None
        flags, status, entered = rec.flags, rec.status, rec.entered
        for index, statuses, dwell, since_entered, busy in self._stuck_plan:
            if flags & busy or status not in statuses:
                continue
            clock = (entered[index] if entered else None) if since_entered else rec.last_update
            if clock is not None and (last is None or clock + dwell > last):
                last = clock + dwell
        for name, gap in self.rules.gaps.items():
            clock = rec.wms_at if name == WMS_WITHOUT_PAYMENT else rec.paid_at
            if clock is None or flags & _GAP_DONE[name] or not self._gap_open(name, rec):
                continue
            if last is None or clock + gap.within_ms > last:
                last = clock + gap.within_ms
        return last

    def _evaluate(self, oid: str, rec: OrderRec, now: int, out: list[AlertChange]) -> bool:
        """Fire what is due at `now`; False when the order was forgotten."""
        for spec in self.rules.stuck:
            self._evaluate_stuck(oid, rec, spec, now, out)
        for name, gap in self.rules.gaps.items():
            done = _GAP_DONE[name]
            if rec.flags & done:
                continue
            clock = rec.wms_at if name == WMS_WITHOUT_PAYMENT else rec.paid_at
            if clock is None or clock + gap.within_ms > now:
                continue
            rec.flags |= done
            if self._gap_open(name, rec):
                at = clock + gap.within_ms
                labels = wording.labels(GAP_ALERT, name, gap.severity, oid, rec)
                notes = wording.gap(gap, clock, at, oid, rec, self._zone)
                self._fire(oid, rec, name, _GAP_FIRING[name], labels, notes, at, out)
                if name == WMS_WITHOUT_PAYMENT and rec.flags & WMS_CANCELLED:
                    # the contract fires it; what ended it came first: it ends where it starts
                    why = wording.ended_before_due("the warehouse had cancelled the outbound", rec)
                    self._resolve(oid, rec, name, _GAP_FIRING[name], at, out, why)
        expiry = self._expiry(rec)
        if expiry is not None and expiry <= now:
            self._forget(oid, rec)
            return False
        return True

    def _evaluate_stuck(
        self, oid: str, rec: OrderRec, spec: StuckSpec, now: int, out: list[AlertChange]
    ) -> None:
        done, firing = stuck_done(spec.index), stuck_firing(spec.index)
        if rec.status not in spec.statuses or rec.flags & (done | firing):
            return
        if spec.since_entered:
            clock = rec.entered[spec.index] if rec.entered else None
        else:
            clock = rec.last_update
        if clock is None or clock + spec.max_dwell_ms > now:
            return
        rec.flags |= done
        if not spec.applies_to(rec.channel, rec.warehouse):
            return
        at = clock + spec.max_dwell_ms
        labels = wording.labels(STUCK_ALERT, spec.name, spec.severity, oid, rec)
        notes = wording.stuck(spec, clock, at, oid, rec, self._zone)
        self._fire(oid, rec, spec.name, firing, labels, notes, at, out)

    @staticmethod
    def _gap_open(name: str, rec: OrderRec) -> bool:
        if name == PAID_WITHOUT_WMS:
            return rec.wms_at is None and rec.closed_at is None
        if name == WMS_WITHOUT_PAYMENT:
            return not rec.flags & PAID_ANY
        # payment_not_applied: fully paid, yet the order never left the statuses that wait
        # for (the rest of) it: one back in `created` by an illegal transition did leave
        if rec.flags & APPLIED:
            return False
        if rec.status == CREATED:
            return True
        presale_balance = rec.flags & PRESALE and len(rec.pay_nos) >= 2
        return bool(presale_balance) and rec.status == DEPOSIT_PAID

    def _forget(self, oid: str, rec: OrderRec) -> None:
        del self.orders[oid]
        self._slots[rec.slot] = None
        self._free.append(rec.slot)
        keys = rec.eids + b"".join(
            event_entry(oid, e, t) for t, e in timeline.event_ids(rec.log, rec.log_n)
        )
        if rec.status in TERMINAL:
            keys += ended_entry(oid, rec.status, rec.seen)
        if keys:
            self._dedup.remember(oid, keys, rec.seen)
        self.stats.status_counts[rec.status or "unknown"] -= 1
        self.stats.forgotten += 1

    # --- alert state -------------------------------------------------------------------------

    def _fire(
        self,
        oid: str,
        rec: OrderRec,
        rule: str,
        bit: int,
        labels: dict[str, str],
        notes: dict[str, str],
        at: int,
        out: list[AlertChange],
    ) -> None:
        alert = AlertChange(FIRING, labels, notes, at, None)
        rec.flags |= bit
        self.firing[(oid, rule)] = alert
        out.append(alert)

    def _resolve(
        self,
        oid: str,
        rec: OrderRec,
        rule: str,
        bit: int,
        ts: int,
        out: list[AlertChange],
        why: str | None = None,  # default: the event being applied (`_ending`) ended it
    ) -> None:
        if rec.flags & bit:
            rec.flags &= ~bit
            alert = self.firing.pop((oid, rule))
            if why is None:
                why = wording.resolution(self._ending, rec, self._zone, alert.starts_at)
            out.append(alert.resolved(ts, **{RESOLUTION: why}))
            if not rec.flags & self._firing_mask:
                # its expiry counts again, and may be past: schedule it now, not only once
                # whatever deadline the heap holds for the order comes due
                self._schedule(oid, rec)

    def _anomaly(
        self, oid: str, rec: OrderRec, kind: str, detail: str, ts: int, out: list[AlertChange]
    ) -> None:
        flag = _ANOMALY_FLAG[kind]
        severity = self.rules.anomalies.get(kind)
        if rec.flags & flag or severity is None:
            return
        rec.flags |= flag
        self.stats.anomalies[kind] += 1
        labels = wording.labels(ANOMALY_ALERT, kind, severity, oid, rec)
        notes = wording.anomaly(kind, detail, ts, oid, rec, self._zone)
        out.append(AlertChange(FIRING, labels, notes, ts, ts))

    # --- applying events ---------------------------------------------------------------------

    def _apply(self, ts: int, ev: Any, out: list[AlertChange]) -> None:
        oid = ev.order_id
        rec = self.orders.get(oid)
        if isinstance(rec, bytes):
            rec = self._unpack(oid, rec)
        if self._pack_after:
            self._busy.add(oid)
        eid = ev.event_id
        if eid is not None and (
            (  # seen within the horizon? The timeline holds the recent ids, `eids` older ones
                timeline.holds_event(rec.log, rec.log_n, eid, ts, self._dedup.horizon)
                or (rec.eids and seen_in(rec.eids, event_key(oid, eid), ts, self._dedup.horizon))
            )
            if rec is not None
            else self._dedup.seen_key(oid, event_key(oid, eid), ts)
        ):
            self.stats.duplicates += 1  # a redelivery: no other effect (CONTRACT §1)
            return
        if rec is None:
            if self._free:
                slot = self._free.pop()
                self._slots[slot] = oid
            else:
                slot = len(self._slots)
                if slot > self._mask:
                    self._widen()
                self._slots.append(oid)
            rec = self.orders[oid] = new_order(oid, ts, slot)
            rec.eids = self._dedup.take(oid)  # ids its forgotten self left, if it was one
            if self._pack_after:
                self._unpacked.add(oid)
            ended, rec.eids = (
                ended_in(oid, rec.eids, TERMINAL, ts, self._dedup.horizon)
                if rec.eids
                else (None, b"")
            )
            if ended is not None:
                self._after_end(rec, ended)
            self.stats.status_counts[ended or "unknown"] += 1
        else:
            oid = rec.oid
        if ts > rec.seen:
            rec.seen = ts
        record = self._ending = timeline.pack(ts, ev)  # before the handler: its alerts list
        # this event, and an alert it resolves says so (`_resolve`)
        if rec.log_n < self._log_size:  # `timeline.append` without a drop, inline
            rec.log += record
            rec.log_n += 1
        else:
            rec.log, rec.log_n, dropped = timeline.append(
                rec.log, rec.log_n, record, self._log_size
            )
            if dropped is not None:
                if dropped.status is not None:
                    rec.log_status = dropped.status
                if dropped.event_id is not None:  # its id now only lives on as an entry
                    rec.eids += event_entry(oid, dropped.event_id, dropped.ts)
        note = self._handlers[type(ev)](oid, rec, ev, ts, out)
        if self._settled is not None and ts <= self._settled:
            note = f"{note}; late" if note else "late"
        if note is not None:
            rec.log = timeline.renote(rec.log, record, ts, ev, note)
        if rec.due is None:
            self._schedule(oid, rec)  # e.g. a last alert resolved: the expiry is back

    @staticmethod
    def _after_end(rec: OrderRec, status: str) -> None:
        """An order created again by a late event (a callback retried hours later) while its
        forgotten self's tombstone is kept: it goes on from the status it ended in, its gap
        rules settled, as they were when it was forgotten. A fresh order would start the 漏发
        or 未付先发 clock at that event and fire a false alert. What was forgotten (payments,
        tracking numbers, amounts) can no longer be compared."""
        rec.status = rec.log_status = status
        rec.flags |= _ALL_GAPS_DONE

    def _on_order(
        self, oid: str, rec: OrderRec, ev: OrderEvent, ts: int, out: list[AlertChange]
    ) -> str | None:
        was = self._facts_before(rec, ts) if self._filtered_updates else None
        new, old = ev.status, rec.status
        if ev.channel:
            rec.channel = ev.channel
        if ev.warehouse:
            rec.warehouse = ev.warehouse
        if ev.amount is not None:
            cents = to_cents(ev.amount)
            if cents != rec.payable:
                rec.payable = cents
                rec.flags &= ~AMOUNT_OK
        note = None
        trk = ev.tracking_no
        shipped = rec.flags & SHIPPED_SEEN
        if new == SHIPPED:
            if trk and shipped and rec.tracking and trk != rec.tracking:
                self._anomaly(oid, rec, CONFLICTING_TRACKING, f"{rec.tracking} then {trk}", ts, out)
                note = "conflicting tracking"
            elif not trk and not rec.tracking and new != old:
                self._anomaly(oid, rec, SHIPPED_WITHOUT_TRACKING, "", ts, out)
                note = "no tracking number"
            rec.flags |= SHIPPED_SEEN
        if trk and (not shipped or not rec.tracking):  # before shipping, a new label's number wins
            rec.tracking = trk
        if new != old:
            illegal = old is not None and not self.rules.machine.allowed(old, new, rec.refund_from)
            self._change_status(oid, rec, old, new, ts, out)
            if illegal:  # reported and applied (CONTRACT §2): the alert shows the new status
                self._anomaly(oid, rec, ILLEGAL_TRANSITION, f"{old} → {new}", ts, out)
                note = f"illegal {old} → {new}"
            self._touch(oid, rec, ts, out, was)
        elif note is None:
            note = "repeated status"  # changes no clock (CONTRACT §2)
        if not rec.flags & _AMOUNT_SETTLED and rec.pay_nos and rec.payable is not None:
            self._check_amount(oid, rec, ts, out)
        return note

    def _change_status(
        self, oid: str, rec: OrderRec, old: str | None, new: str, ts: int, out: list[AlertChange]
    ) -> None:
        stats = self.stats
        if old is not None:
            stats.observe_dwell(old, rec.channel, ts - rec.since)
        stats.status_counts[old or "unknown"] -= 1
        stats.status_counts[new] += 1
        rec.status, rec.since = new, ts
        if new != CREATED and new != DEPOSIT_PAID:
            rec.flags |= APPLIED
        if new == REFUND_REQUESTED:
            rec.refund_from = old
        elif new == DEPOSIT_PAID:
            self._presale(rec)
        elif new == PAID and rec.pay_ts is None:
            rec.pay_ts = ts
        if new in _COLLECT_STATUSES and rec.pay_ts is not None and not rec.flags & COLLECTED:
            rec.flags |= COLLECTED
            took = ts - rec.pay_ts
            stats.observe_pay_to_collect(took, took <= self.rules.fulfilment_sla_ms)
        for index, statuses, dwell, done, firing, name in self._entered_plan:
            now = new in statuses
            if now == (old in statuses):
                continue  # moved inside or outside the set: its clock is unchanged
            if now:
                if rec.entered is None:
                    rec.entered = [None] * len(self.rules.stuck)
                rec.entered[index] = ts
                rec.flags &= ~done
                self._offer(oid, rec, ts + dwell)
            else:
                if rec.flags & firing:
                    self._resolve(oid, rec, name, firing, ts, out)
                if rec.entered is not None:
                    rec.entered[index] = None
        if new in TERMINAL:
            self._offer(oid, rec, ts + self.rules.terminal_retention_ms)
        if new in CLOSING and rec.closed_at is None:
            rec.closed_at = ts
            self._resolve(oid, rec, PAID_WITHOUT_WMS, _GAP_FIRING[PAID_WITHOUT_WMS], ts, out)
        pna = _GAP_FIRING[PAYMENT_NOT_APPLIED]
        if rec.flags & pna and not self._gap_open(PAYMENT_NOT_APPLIED, rec):
            self._resolve(oid, rec, PAYMENT_NOT_APPLIED, pna, ts, out)

    @staticmethod
    def _presale(rec: OrderRec) -> None:
        """A deposit order: two payments expected; a deposit alone is not full payment.

        A single payment seen before `deposit_paid` was the deposit: the 漏发 clock waits
        for the balance (unless 漏发 already fired on it; then it runs to its resolution).
        """
        rec.flags |= PRESALE
        rec.flags &= ~AMOUNT_OK  # checked as one payment each; now their sum must match
        leaking = rec.flags & _GAP_FIRING[PAID_WITHOUT_WMS]
        if rec.paid_at is not None and len(rec.pay_nos) == 1 and not leaking:
            rec.paid_at = None
            rec.flags &= ~(_GAP_DONE[PAID_WITHOUT_WMS] | _GAP_DONE[PAYMENT_NOT_APPLIED])

    def _facts_before(self, rec: OrderRec, ts: int) -> tuple[str | None, str | None] | None:
        """The order's channel and warehouse before a late event (`_touch`); None for the rest.
        Called only where a `since: last_update` rule has a filter (`_filtered_updates`)."""
        if rec.last_update is not None and ts <= rec.last_update:
            return rec.channel, rec.warehouse
        return None

    def _touch(
        self,
        oid: str,
        rec: OrderRec,
        ts: int,
        out: list[AlertChange],
        was: tuple[str | None, str | None] | None = None,
    ) -> None:
        """An order, WMS or logistics event: `since: last_update` clocks restart.

        Only a newer event moves the clock. A late one stamped before the last update (a
        carrier's backfilled scan) leaves the order as stalled as it was: its alerts keep
        firing unless the order left their statuses (a late status change can do that), and
        a rule it has decided stays decided, but for one whose channel/warehouse filter the
        event's facts (`was`: those before it) make apply only now.
        """
        status = rec.status
        if rec.last_update is None or ts > rec.last_update:
            rec.last_update = ts
            if rec.flags & self._update_firing:
                for spec in self._update_rules:
                    self._resolve(oid, rec, spec.name, stuck_firing(spec.index), ts, out)
            rec.flags &= ~self._update_done
        else:
            for spec in self._update_rules:
                if rec.flags & stuck_firing(spec.index):
                    if status not in spec.statuses:
                        self._resolve(oid, rec, spec.name, stuck_firing(spec.index), ts, out)
                elif (
                    was is not None
                    and spec.applies_to(rec.channel, rec.warehouse)
                    and not spec.applies_to(*was)
                ):
                    rec.flags &= ~stuck_done(spec.index)  # it never fired at this clock
        for statuses, dwell in self._update_plan:
            if status in statuses:
                self._offer(oid, rec, rec.last_update + dwell)

    def _on_payment(
        self, oid: str, rec: OrderRec, ev: PaymentEvent, ts: int, out: list[AlertChange]
    ) -> str | None:
        if ev.channel and not rec.channel:
            rec.channel = ev.channel
        if ev.status == "success":
            if has_payment(rec, ev.pay_no):
                return "repeated callback"
            if rec.refunded and ev.pay_no in rec.refunded:
                # the money did arrive once (no unpaid shipment), but it counts no more
                rec.flags |= PAID_ANY
                self._resolve(
                    oid, rec, WMS_WITHOUT_PAYMENT, _GAP_FIRING[WMS_WITHOUT_PAYMENT], ts, out
                )
                return "callback for a refunded payment"
            add_payment(rec, ev.pay_no, None if ev.amount is None else to_cents(ev.amount))
            paid = len(rec.pay_nos)
            rec.flags &= ~AMOUNT_OK
            self.stats.payments[self.stats.channels(rec.channel)] += 1
            rec.flags |= PAID_ANY
            self._resolve(oid, rec, WMS_WITHOUT_PAYMENT, _GAP_FIRING[WMS_WITHOUT_PAYMENT], ts, out)
            expected = 2 if rec.flags & PRESALE else 1
            if rec.paid_at is None and paid >= expected:
                rec.paid_at = ts
                if rec.pay_ts is None:
                    rec.pay_ts = ts
                if rec.wms_at is not None or rec.closed_at is not None:
                    rec.flags |= _GAP_DONE[PAID_WITHOUT_WMS]
                for within, _, wms_clock in self._gap_plan:
                    if not wms_clock:
                        self._offer(oid, rec, ts + within)
            if paid > expected:
                pays = ", ".join(
                    pay_no if amount is None else f"{pay_no} {show(amount)}"
                    for pay_no, amount in payment_list(rec)
                )
                self._anomaly(oid, rec, DUPLICATE_PAYMENT, pays, ts, out)
            if rec.payable is not None and not rec.flags & _AMOUNT_SETTLED:
                self._check_amount(oid, rec, ts, out)
        elif ev.status == "refunded":
            remove_payment(rec, ev.pay_no)
            rec.refunded = (*(rec.refunded or ()), ev.pay_no)
            if not rec.pay_nos:  # the money is all back: the order's refund (CONTRACT §3);
                # refunding one of two payments (a duplicate) leaves an order to ship
                if rec.closed_at is None:
                    rec.closed_at = ts
                self._resolve(oid, rec, PAID_WITHOUT_WMS, _GAP_FIRING[PAID_WITHOUT_WMS], ts, out)
        return None

    def _on_wms(
        self, oid: str, rec: OrderRec, ev: WmsEvent, ts: int, out: list[AlertChange]
    ) -> str | None:
        was = self._facts_before(rec, ts) if self._filtered_updates else None
        if ev.warehouse:
            rec.warehouse = ev.warehouse
        if ev.action != "cancelled":
            done = _GAP_DONE[WMS_WITHOUT_PAYMENT]
            if rec.flags & (WMS_CANCELLED | PAID_ANY | done) == WMS_CANCELLED | done:
                # sent out again, still unpaid, after the cancel had ended the alert: a new
                # push, on its own clock (before the deadline the first push's clock goes on)
                rec.flags &= ~done
                self._start_wms_clock(oid, rec, ts)
            rec.flags &= ~WMS_CANCELLED
            if ev.action == "shipped":
                rec.flags |= WMS_SHIPPED
            if rec.wms_at is None:
                self.stats.wms_outbounds[self.stats.channels(rec.channel)] += 1
                if rec.flags & PAID_ANY:
                    rec.flags |= _GAP_DONE[WMS_WITHOUT_PAYMENT]
                self._start_wms_clock(oid, rec, ts)
            if rec.paid_at is not None:
                rec.flags |= _GAP_DONE[PAID_WITHOUT_WMS]
            self._resolve(oid, rec, PAID_WITHOUT_WMS, _GAP_FIRING[PAID_WITHOUT_WMS], ts, out)
        elif not rec.flags & WMS_SHIPPED:  # the outbound cancelled before the goods left:
            # nothing leaves unpaid any more (after a WMS `shipped` they are gone: it goes on)
            rec.flags |= WMS_CANCELLED
            self._resolve(oid, rec, WMS_WITHOUT_PAYMENT, _GAP_FIRING[WMS_WITHOUT_PAYMENT], ts, out)
        self._touch(oid, rec, ts, out, was)
        return None

    def _start_wms_clock(self, oid: str, rec: OrderRec, ts: int) -> None:
        """The outbound at `ts` starts the clock of the rules timed from it."""
        rec.wms_at = ts
        for within, _, wms_clock in self._gap_plan:
            if wms_clock:
                self._offer(oid, rec, ts + within)

    def _on_logistics(
        self, oid: str, rec: OrderRec, ev: LogisticsEvent, ts: int, out: list[AlertChange]
    ) -> str | None:
        if ev.tracking_no and not rec.tracking:
            rec.tracking = ev.tracking_no
        self._touch(oid, rec, ts, out)
        return None

    def _check_amount(self, oid: str, rec: OrderRec, ts: int, out: list[AlertChange]) -> None:
        """Compare payments with the payable once the order shows it is (fully) paid."""
        if rec.flags & _AMOUNT_SETTLED or rec.payable is None or not rec.pay_nos:
            return
        if rec.status is None or rec.status == CREATED or rec.status == DEPOSIT_PAID:
            return
        amounts = [a for a in rec.paid if a is not None]
        if not amounts:
            return
        payable = rec.payable
        rec.flags |= AMOUNT_OK  # until the payable or the payments change
        if rec.flags & PRESALE:
            if len(amounts) < 2:
                rec.flags &= ~AMOUNT_OK
                return
            total = exact_sum(amounts)
            if total != payable and not _two_sum_to(amounts, payable):
                detail = f"paid {show(total)} in {len(amounts)} payments, payable {show(payable)}"
                self._anomaly(oid, rec, AMOUNT_MISMATCH, detail, ts, out)
            return
        for pay_no, amount in payment_list(rec):
            if amount is not None and amount != payable:
                diff = amount - payable
                sign = "+" if diff >= 0 else ""
                detail = (
                    f"{pay_no} paid {show(amount)}, payable {show(payable)} "
                    f"(diff {sign}{show(diff)})"
                )
                self._anomaly(oid, rec, AMOUNT_MISMATCH, detail, ts, out)
                return
