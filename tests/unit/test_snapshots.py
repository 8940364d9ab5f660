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
from tests.factories import BASE, config, decode_all, order


def test_a_snapshot_round_trips_with_its_orders() -> None:
    """What a shard snapshots comes back, orders included, under the current format."""
    tracker = ShardTracker(RuleSet.from_config(config()))
    for d in decode_all([order(0, "A", "paid")]):
        tracker.ingest(d.ts_ms, d.event)  # type: ignore[arg-type]
    tracker.advance(BASE)
    blob = dump_shard((tracker, WatermarkClock(60_000), ChunkOrder()))
    assert snapshot_format(blob) == STATE_FORMAT
    back, clock, _ = load_shard(blob)
    assert back.orders["A"].status == "paid" and back.watermark == BASE
    assert isinstance(clock, WatermarkClock)


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
