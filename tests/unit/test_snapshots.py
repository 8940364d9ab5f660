"""Shard snapshots: a format header, refused with a clear message when it is not ours."""

from __future__ import annotations

import pickle

import pytest

from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from orderwatch.domain.watermark import WatermarkClock
from orderwatch.pipelines.route import ChunkOrder
from orderwatch.pipelines.snapshots import (
    STATE_FORMAT,
    StateFormatError,
    dump_shard,
    load_shard,
    snapshot_format,
)
from tests.factories import BASE, HOUR, MIN, config, decode_all, order


def test_a_snapshot_round_trips_with_its_orders() -> None:
    """What a shard snapshots comes back, orders included (packed or not), under the current
    format; a packed order goes on where it was, its deadline included."""
    tracker = ShardTracker(RuleSet.from_config(config(engine={"pack_after": 1})))
    for d in decode_all([order(0, "A", "paid"), order(MIN, "B", "paid")]):
        tracker.ingest(d.ts_ms, d.event)  # type: ignore[arg-type]
    tracker.advance(BASE)  # A applied
    tracker.advance(BASE + MIN)  # B applied; A idle since the last advance: packed
    blob = dump_shard((tracker, WatermarkClock(60_000), ChunkOrder()))
    assert snapshot_format(blob) == STATE_FORMAT
    back, clock, _ = load_shard(blob)
    assert isinstance(back.orders["A"], bytes) and back.watermark == BASE + MIN
    assert isinstance(clock, WatermarkClock)
    rec = back.record("A")
    assert rec is not None and (rec.status, rec.since) == ("paid", BASE)
    fired = back.advance(BASE + HOUR)  # both reach paid_not_allocated (30m)
    assert sorted((a.labels["order_id"], a.labels["rule"], a.starts_at) for a in fired) == [
        ("A", "paid_not_allocated", BASE + 30 * MIN),
        ("B", "paid_not_allocated", BASE + MIN + 30 * MIN),
    ]


@pytest.mark.parametrize(
    ("blob", "found"),
    [
        (pickle.dumps((1, 2, 3)), "format 1"),  # before snapshots had a header
        (
            b"OWS" + bytes((STATE_FORMAT + 1,)) + pickle.dumps((1, 2, 3)),
            f"format {STATE_FORMAT + 1}",
        ),
        (b"OWS" + bytes((STATE_FORMAT,)) + b"\x80\x05garbage", "unreadable"),
    ],
)
def test_another_format_is_refused_saying_what_to_do(blob: bytes, found: str) -> None:
    """The error names the format found, the one expected, and the way out."""
    with pytest.raises(StateFormatError) as err:
        load_shard(blob)
    assert found in str(err.value)
    assert f"reads format {STATE_FORMAT} only" in str(err.value)
    assert "<state.dir>/recovery" in str(err.value)
