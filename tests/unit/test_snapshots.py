"""Shard snapshots: a format header, refused with a clear message when it is not ours."""

from __future__ import annotations

import pickle
from collections import Counter
from typing import Any

import pytest

from orderwatch.domain.rules import RuleSet
from orderwatch.domain.stats import LabelCap, ShardStats
from orderwatch.domain.tracker import ShardTracker
from orderwatch.domain.watermark import WatermarkClock
from orderwatch.pipelines.route import ChunkOrder, ShardBatch
from orderwatch.pipelines.snapshots import (
    STATE_FORMAT,
    StateFormatError,
    dump_shard,
    load_shard,
    snapshot_format,
    state_settings,
)
from tests.factories import BASE, HOUR, MIN, config, decode_all, order, payment


def test_a_snapshot_round_trips_with_its_orders() -> None:
    """What a shard snapshots comes back, orders included (packed or not), under the current
    format; a packed order goes on where it was, its deadline included."""
    tracker = ShardTracker(RuleSet.from_config(config(engine={"pack_after": 1})))
    for d in decode_all([order(0, "A", "paid"), order(MIN, "B", "paid")]):
        tracker.ingest(d.ts_ms, d.event)  # type: ignore[arg-type]
    tracker.advance(BASE + 1)  # A applied (the watermark passed it)
    tracker.advance(BASE + MIN + 1)  # B applied; A idle since the last advance: packed
    settings = state_settings(config())
    blob = dump_shard((tracker, WatermarkClock(60_000), ChunkOrder()), settings)
    assert snapshot_format(blob) == STATE_FORMAT
    back, clock, _ = load_shard(blob, settings)
    assert isinstance(back.orders["A"], bytes) and back.watermark == BASE + MIN + 1
    assert isinstance(clock, WatermarkClock)
    rec = back.record("A")
    assert rec is not None and (rec.status, rec.since) == ("paid", BASE)
    fired = back.advance(BASE + HOUR)  # both reach paid_not_allocated (30m)
    assert sorted((a.labels["order_id"], a.labels["rule"], a.starts_at) for a in fired) == [
        ("A", "paid_not_allocated", BASE + 30 * MIN),
        ("B", "paid_not_allocated", BASE + MIN + 30 * MIN),
    ]


def test_a_resumed_shard_keeps_its_orders_per_status_and_restarts_its_counters() -> None:
    """Counters restart at zero with the process (README, metrics): a resumed shard carried its
    payments, anomalies, duplicates and histograms on while the exporter's own counters (events,
    alerts fired, 漏发) restarted, so a ratio of the two was wrong after every resume."""
    tracker = ShardTracker(RuleSet.from_config(config()))
    lines = [
        order(0, "A", "created", amount="10", channel="tmall"),
        payment(MIN, "A", "P1", amount="9"),
        order(2 * MIN, "A", "paid"),
        order(2 * MIN, "A", "paid"),
    ]
    for d in decode_all(lines):
        tracker.ingest(d.ts_ms, d.event)  # type: ignore[arg-type]
    tracker.advance(BASE + HOUR)
    before = tracker.stats
    assert before.payments and before.anomalies and before.dwell and before.status_counts
    settings = state_settings(config())
    back, _, _ = load_shard(
        dump_shard((tracker, WatermarkClock(1), ChunkOrder()), settings), settings
    )
    after = back.stats
    assert after.status_counts == before.status_counts  # a gauge: what the orders are
    assert (after.payments, after.anomalies, after.dwell) == ({}, {}, {})
    assert after.channels("tmall") == "tmall"  # label values keep their assignment


@pytest.mark.parametrize(
    ("blob", "found"),
    [
        (pickle.dumps((1, 2, 3)), "format 1"),  # before snapshots had a header
        (
            b"OWS" + bytes((STATE_FORMAT + 1,)) + pickle.dumps((1, 2, 3)),
            f"format {STATE_FORMAT + 1}",
        ),
        (b"OWS" + bytes((STATE_FORMAT,)) + b"\x00\x02{}\x80\x05garbage", "unreadable"),
        (b"OWS" + bytes((STATE_FORMAT,)) + b"\x00\x09not json", "unreadable"),
        (b"OWS" + bytes((STATE_FORMAT,)) + b"\x00", "unreadable"),  # cut inside the header
    ],
)
def test_another_format_is_refused_saying_what_to_do(blob: bytes, found: str) -> None:
    """The error names the format found, the one expected, and the way out."""
    with pytest.raises(StateFormatError) as err:
        load_shard(blob, {})
    assert found in str(err.value)
    assert f"reads format {STATE_FORMAT} only" in str(err.value)
    assert "<state.dir>/recovery" in str(err.value)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"rules": {"stuck": []}}, "rules"),
        ({"engine": {"shards": 7}}, "engine"),
        ({"engine": {"pack_after": 5}}, "engine"),
        ({"timezone": "UTC"}, "timezone"),
        ({"lateness": "5m"}, "lateness"),
        ({"lifecycle": {"forbid": {"paid": ["shipped"]}}}, "lifecycle"),
    ],
)
def test_a_snapshot_taken_with_other_settings_is_refused_naming_them(
    change: dict[str, Any], named: str
) -> None:
    """A resumed shard would keep the rules it was snapshotted with: refuse, say what changed."""
    before = config()
    blob = dump_shard(
        (ShardTracker(RuleSet.from_config(before)), None, None), state_settings(before)
    )
    after = config(**change)
    with pytest.raises(StateFormatError) as err:
        load_shard(blob, state_settings(after))
    assert f"other settings ({named})" in str(err.value)
    assert "<state.dir>/recovery" in str(err.value)


def test_settings_that_the_state_does_not_hold_may_change() -> None:
    """Ports, notifiers, the input size cap and the like are not in a shard's state."""
    before = config()
    after = config(http={"listen": "127.0.0.1:9999"}, engine={"max_event_bytes": 1024})
    assert state_settings(after) == state_settings(before)
    blob = dump_shard((None, None, None), state_settings(before))
    assert load_shard(blob, state_settings(after)) == (None, None, None)


def test_shard_stats_of_the_earlier_format_18_layout_still_load() -> None:
    """Format-18 snapshots written before the shards shared the process's channel cap also
    hold a warehouse cap that nothing read: a resume takes them, keeping the channel labels
    and the orders per status."""
    channels = LabelCap(2)
    channels("jd")
    stats = ShardStats.__new__(ShardStats)
    stats.__setstate__((channels, LabelCap(2), Counter({"paid": 3})))
    assert stats.status_counts == {"paid": 3}
    assert [stats.channels(c) for c in ("jd", "pdd", "tmall")] == ["jd", "pdd", "other"]
    assert pickle.loads(pickle.dumps(stats)).status_counts == {"paid": 3}


def test_a_rules_next_step_and_runbook_may_change_across_a_resume() -> None:
    """Read only when an alert fires, they are not in the settings digest, and a resumed
    shard takes the current ones; the rest of a rule still must match."""
    from orderwatch.pipelines.orders import flow_steps
    from orderwatch.runtime import Runtime

    def cfg(step: str) -> Any:
        rule = {"name": "p", "statuses": ["paid"], "max_dwell": "30m", "description": step}
        return config({"stuck": [{**rule, "runbook_url": f"https://w/{step}"}]})

    before, after = cfg("old"), cfg("new")
    assert state_settings(before) == state_settings(after)
    _, build = flow_steps(before, Runtime(), live=False, recovery=True)
    shard = build(None)
    (d,) = decode_all([order(0, "A", "paid")])
    shard.on_batch([ShardBatch("s000", [(d.ts_ms, d.event)], d.ts_ms)])
    _, build = flow_steps(after, Runtime(), live=False, recovery=True)
    resumed = build(shard.snapshot())
    (fired,) = resumed.tracker.advance(BASE + HOUR)
    assert fired.annotations["description"].endswith(". new")
    assert fired.annotations["runbook_url"] == "https://w/new"
