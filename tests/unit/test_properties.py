"""Properties over generated streams: results depend on the input and config alone."""

from __future__ import annotations

import contextlib
import dataclasses
import random
from collections import defaultdict
from unittest import mock

from hypothesis import given, settings
from hypothesis import strategies as st

from orderwatch.connectors.raw import RawChunk
from orderwatch.domain import deadlines as deadlines_module
from orderwatch.domain import tracker as tracker_module
from orderwatch.domain.alert import FIRING, AlertChange
from orderwatch.domain.lifecycle import TERMINAL
from orderwatch.domain.order import OrderRec
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from orderwatch.domain.watermark import WatermarkClock
from orderwatch.events import AccessLogEvent, Decoder, OrderEvent
from orderwatch.pipelines.orders import ShardInput, ShardLogic
from orderwatch.pipelines.route import Router
from orderwatch.pipelines.snapshots import dump_shard, load_shard, state_settings
from orderwatch.runtime import Runtime
from tests.factories import (
    decoded_only,
    order_scoped,
    pack_everything,
    summary,
    trained_packer,
)
from tests.strategies import rules_config, streams

CFG = rules_config()
SETTINGS = state_settings(CFG)


def reference(lines: list[bytes]) -> list[AlertChange]:
    """Everything in one tracker at once, then the end-of-input watermark."""
    tracker = ShardTracker(RuleSet.from_config(CFG))
    dec = Decoder(CFG.status_map)
    decoded = [decoded_only(dec.decode(raw, "t", "0")) for raw in lines]
    for d in decoded:
        if not isinstance(d.event, AccessLogEvent):
            tracker.ingest(*order_scoped(d))
    return sorted(
        tracker.advance(max(d.ts_ms for d in decoded), final=True),
        key=AlertChange.sort_key,
    )


def through_router(
    lines: list[bytes],
    shards: int,
    batch: int,
    shuffle: random.Random | None = None,
    pack_after: int = 0,
    group: int = 1,
    resume_after: int | None = None,
) -> list[AlertChange]:
    """The real router and shard logic, without bytewax, with any shard count and batch size.

    `shuffle` decodes the chunks in a random order, as workers racing each other would;
    `pack_after` packs idle orders once that many were unpacked (1: after every batch);
    `group` hands a shard that many batches per call, as bytewax may; `resume_after` swaps
    every shard's state for a copy read back from its snapshot after that many chunks.
    """
    runtime = Runtime(shards=shards)
    router = Router(Decoder(CFG.status_map), runtime, lateness_ms=CFG.lateness)
    rules = dataclasses.replace(RuleSet.from_config(CFG), pack_after=pack_after)
    logics: dict[str, ShardLogic] = {}
    out: list[AlertChange] = []
    chunks = [RawChunk("t", i + 1, lines[i : i + batch]) for i in range(0, len(lines), batch)]
    if shuffle is not None:
        shuffle.shuffle(chunks)
    waiting: dict[str, list[ShardInput]] = defaultdict(list)
    for chunk in chunks:
        for key, item in router.route(chunk):
            logic = logics.get(key)
            if logic is None:
                logic = logics[key] = ShardLogic(
                    ShardTracker(rules), WatermarkClock(CFG.lateness), runtime, lambda: 0
                )
            waiting[key].append(item)
            if len(waiting[key]) == group:
                out.extend(logic.on_batch(waiting.pop(key))[0])
        if resume_after is not None and chunk.first == resume_after:
            for logic in logics.values():
                blob = dump_shard((logic.tracker, logic.clock), SETTINGS)
                logic.tracker, logic.clock = load_shard(blob, SETTINGS)
    for key, logic in logics.items():
        if waiting.get(key):
            out.extend(logic.on_batch(waiting.pop(key))[0])
        out.extend(logic.on_eof()[0])
    return sorted(out, key=AlertChange.sort_key)


@settings(max_examples=150, deadline=None)
@given(lines=streams(), shards=st.integers(1, 7), batch=st.integers(1, 40))
def test_alerts_do_not_depend_on_shards_or_batch_size(
    lines: list[bytes], shards: int, batch: int
) -> None:
    """Same stream, any shard count and batch size: exactly the same alert changes."""
    assert through_router(lines, shards, batch) == reference(lines)


@st.composite
def late_streams(draw: st.DrawFn) -> list[bytes]:
    """A stream in which a few lines arrive far from their place: some far behind the
    watermark (late), some early."""
    lines = list(draw(streams()))
    for _ in range(draw(st.integers(1, 4))):
        line = lines.pop(draw(st.integers(0, len(lines) - 1)))
        lines.insert(draw(st.integers(0, len(lines))), line)
    return lines


@settings(max_examples=150, deadline=None)
@given(
    lines=late_streams(),
    shards=st.integers(1, 5),
    batch=st.integers(2, 40),
    group=st.integers(1, 3),
    seed=st.integers(0, 2**32),
)
def test_late_events_do_the_same_whatever_the_batches(
    lines: list[bytes], shards: int, batch: int, group: int, seed: int
) -> None:
    """A late event is applied as if it had arrived alone, after what its arrival watermark
    passed: batch size, shards, decoding order and batches per call change nothing. One line
    at a time is the reference."""
    expected = through_router(lines, 1, 1)
    assert through_router(lines, shards, batch, random.Random(seed), group=group) == expected


@settings(max_examples=100, deadline=None)
@given(lines=streams(), batch=st.integers(1, 25), seed=st.integers(0, 2**32))
def test_alerts_do_not_depend_on_which_chunk_is_decoded_first(
    lines: list[bytes], batch: int, seed: int
) -> None:
    """Chunks decoded out of order (by racing workers) give exactly the same alert changes."""
    assert through_router(lines, 3, batch, random.Random(seed)) == reference(lines)


@settings(max_examples=150, deadline=None)
@given(
    lines=streams(),
    shards=st.integers(1, 3),
    batch=st.integers(1, 10),
    everything=st.booleans(),
    compressed=st.booleans(),
)
def test_packing_idle_orders_changes_nothing(
    lines: list[bytes], shards: int, batch: int, everything: bool, compressed: bool
) -> None:
    """Orders packed as soon as they are idle (`pack_after: 1`), or even every order after
    every batch, raw or zstd-compressed: events and deadlines meet packed orders all the time,
    the heap is compacted over them, and the alert changes are exactly the same."""
    always = mock.patch.object(ShardTracker, "_pack_idle", pack_everything)
    zstd = mock.patch.object(tracker_module, "Packer", trained_packer)
    with (
        mock.patch.object(tracker_module, "_HEAP_SLACK", 0),
        always if everything else contextlib.nullcontext(),
        zstd if compressed else contextlib.nullcontext(),
    ):
        packed = through_router(lines, shards, batch, pack_after=1)
    assert packed == reference(lines)


@settings(max_examples=150, deadline=None)
@given(
    lines=streams(),
    batch=st.integers(1, 10),
    data=st.data(),
    everything=st.booleans(),
    compressed=st.booleans(),
)
def test_resuming_from_a_snapshot_changes_nothing(
    lines: list[bytes], batch: int, data: st.DataObject, everything: bool, compressed: bool
) -> None:
    """A snapshot leaves out the slot table and the deadline heap, and resuming rebuilds both
    from the orders, packed ones included: after any chunk, the alert changes are the same as
    those of a run never stopped."""
    chunks = -(-len(lines) // batch)
    cut = data.draw(st.integers(1, chunks))
    always = mock.patch.object(ShardTracker, "_pack_idle", pack_everything)
    zstd = mock.patch.object(tracker_module, "Packer", trained_packer)
    with (
        always if everything else contextlib.nullcontext(),
        zstd if compressed else contextlib.nullcontext(),
    ):
        resumed = through_router(lines, 3, batch, pack_after=1, resume_after=cut)
    assert resumed == reference(lines)


def test_a_resumed_shard_has_the_same_slots_and_live_deadlines() -> None:
    """What `__setstate__` rebuilds is what the shard held: the same slot table (the dict's
    own key objects in it) and one heap entry per order with a deadline, its live one."""
    from tests.pipelines.test_dataflow import SAMPLE

    rules = dataclasses.replace(RuleSet.from_config(CFG), pack_after=1)
    tracker = ShardTracker(rules)
    dec = Decoder(CFG.status_map)
    decoded = [decoded_only(dec.decode(raw, "t", "0")) for raw in SAMPLE]
    for d in decoded[: len(decoded) // 2]:
        if not isinstance(d.event, AccessLogEvent):
            tracker.ingest(*order_scoped(d))
            tracker.advance(d.ts_ms)  # orders idle since the last call are packed
    assert tracker.packed and tracker.packed < len(tracker.orders)  # both kinds held
    assert tracker._free  # and freed slots: forgotten orders

    back = load_shard(dump_shard((tracker,), SETTINGS), SETTINGS)[0]
    assert back._slots == tracker._slots
    keys = {id(k) for k in back.orders}
    assert all(id(k) in keys for k in back._slots if k is not None)
    tracker._compact()  # drops the superseded entries: what is left is one live one per order
    assert sorted(back._deadlines) == sorted(tracker._deadlines)  # due before `open_until`
    assert sorted(back.deadline_entries()) == sorted(tracker.deadline_entries())
    assert len(back.deadline_entries()) == sum(
        (tracker.record(k) or OrderRec(0, 0)).due is not None for k in tracker.orders
    )


@settings(max_examples=150, deadline=None)
@given(lines=streams(), data=st.data())
def test_redeliveries_are_dropped_however_short_the_timeline(
    lines: list[bytes], data: st.DataObject
) -> None:
    """Recent event ids are found in the timeline, older ones by their hash: with one kept
    event or twenty, redelivered copies of any events are dropped alike, alerts the same."""
    copies = data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=8))
    stream = list(lines)
    for i in copies:  # each copy arrives somewhere after its original
        stream.insert(data.draw(st.integers(i + 1, len(stream))), lines[i])

    def run(keep: int) -> tuple[list[tuple[str, str, str, int, int | None]], int]:
        rules = dataclasses.replace(RuleSet.from_config(CFG), timeline_events=keep)
        tracker = ShardTracker(rules)
        dec = Decoder(CFG.status_map)
        decoded = [decoded_only(dec.decode(raw, "t", "0")) for raw in stream]
        for d in decoded:
            tracker.ingest(*order_scoped(d))
        alerts = summary(tracker.advance(max(d.ts_ms for d in decoded), final=True))
        return alerts, tracker.stats.duplicates

    short, long = run(1), run(20)
    assert short == long
    assert long[1] >= len(copies)  # every copy, and the stream's own redeliveries


@settings(max_examples=100, deadline=None)
@given(lines=streams())
def test_compacting_the_deadline_heap_changes_nothing(lines: list[bytes]) -> None:
    """With no slack the heap is rebuilt on most pushes, also while deadlines are popping."""
    with mock.patch.object(tracker_module, "_HEAP_SLACK", 0):
        compacted = reference(lines)
    assert compacted == reference(lines)


@settings(max_examples=100, deadline=None)
@given(lines=streams(), bits=st.sampled_from([1, 44]))
def test_slot_bits_change_nothing(lines: list[bytes], bits: int) -> None:
    """One slot bit to start from: entries are widened as orders arrive, mid-advance. 44:
    no entry fits in a far bucket's 64 bits, so each one stays in the heap."""
    with mock.patch.object(tracker_module, "_SLOT_BITS", bits):
        changed = reference(lines)
    assert changed == reference(lines)


@settings(max_examples=100, deadline=None)
@given(lines=streams(), bits=st.sampled_from([0, 6, 12, 20]))
def test_far_deadline_buckets_of_any_width_change_nothing(lines: list[bytes], bits: int) -> None:
    """Buckets of 1 ms to ~17 min (deadlines through them early or late, often or rarely)
    against the plain heap: a tracker whose far buckets take nothing."""
    with mock.patch.object(deadlines_module, "BUCKET_BITS", bits):
        bucketed = reference(lines)
    with mock.patch.object(deadlines_module.FarDeadlines, "add", lambda *_: False):
        assert bucketed == reference(lines)


def test_compaction_keeps_one_heap_entry_per_order() -> None:
    """An order whose next deadline moves earlier leaves a superseded entry; compaction drops it."""
    with mock.patch.object(tracker_module, "_HEAP_SLACK", 0):
        tracker = ShardTracker(RuleSet.from_config(CFG))
        dec = Decoder(CFG.status_map)
        for i in range(50):
            for line in (
                f'{{"type":"order","event_id":"o{i}","ts":{1_700_000_000_000 + i},'
                f'"order_id":"A{i}","status":"created","amount":"9.90"}}',
                f'{{"type":"payment","event_id":"p{i}","ts":{1_700_000_000_500 + i},'
                f'"order_id":"A{i}","pay_no":"P{i}","status":"success","amount":"9.90"}}',
            ):
                tracker.ingest(*order_scoped(dec.decode(line.encode(), "t", "0")))
        tracker.advance(1_700_000_001_000)
    heap = tracker.deadline_entries()
    assert len(heap) <= len(tracker.orders) * 3 // 2
    assert len(heap) >= len(tracker.orders)  # every open order keeps its live entry
    entries = {tracker_module.heap_entry(e) for e in heap}
    for oid, rec in tracker.orders.items():  # its live entry names its slot and due time
        assert isinstance(rec, OrderRec) and (rec.due, rec.slot) in entries
        assert tracker._slots[rec.slot] is oid


@settings(max_examples=150, deadline=None)
@given(lines=streams())
def test_alert_lifecycles_are_well_formed(lines: list[bytes]) -> None:
    """Each instance fires once, resolves at most once, never before it started."""
    state: dict[str, int] = {}
    for a in reference(lines):
        if a.status == FIRING and a.ends_at is None:
            assert a.fingerprint not in state, f"{a} fired while already firing"
            state[a.fingerprint] = a.starts_at
        elif a.status == FIRING:
            assert a.ends_at == a.starts_at  # one-shot
        else:
            assert state.pop(a.fingerprint) == a.starts_at
            assert a.ends_at is not None and a.ends_at >= a.starts_at


@settings(max_examples=150, deadline=None)
@given(lines=streams())
def test_leaving_a_terminal_status_is_always_reported(lines: list[bytes]) -> None:
    """Leaving completed/cancelled/refunded/closed within the retention is always reported."""
    dec = Decoder(CFG.status_map)
    timeline: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    for i, raw in enumerate(lines):
        d = decoded_only(dec.decode(raw, "t", "0"))
        if isinstance(d.event, OrderEvent):
            timeline[d.event.order_id].append((d.ts_ms, i, d.event.status))
    illegal = {
        a.labels["order_id"] for a in reference(lines) if a.labels["rule"] == "illegal_transition"
    }
    retention = CFG.engine.terminal_retention
    for oid, steps in timeline.items():
        # a terminal order is forgotten after its retention; later events start it afresh
        left_terminal, status, since = False, None, 0
        for ts, _, new in sorted(steps):
            if new != status:
                left_terminal |= status in TERMINAL and ts <= since + retention
                status, since = new, ts
        if left_terminal:
            assert oid in illegal
