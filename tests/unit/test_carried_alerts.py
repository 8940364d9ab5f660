"""Alerts left firing before a start: settled by the shard of their order (`ShardTracker.carry`).

Without its state from before (no recovery), a restart re-raises what its input raises again;
an alert whose order's events are gone from the input ended nowhere and stayed firing for good.
"""

from __future__ import annotations

import pickle

from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource

from orderwatch.alerts.store import AlertStore
from orderwatch.connectors.raw import RawChunk
from orderwatch.domain.alert import RESOLUTION, RESOLVED, UNCONFIRMED, AlertChange
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from orderwatch.pipelines.carried import by_shard
from orderwatch.pipelines.orders import Outputs, build_flow
from orderwatch.pipelines.route import shard_of
from orderwatch.runtime import Runtime
from tests.factories import BASE, HOUR, MIN, config, order, summary, track

PAID_30M = {"stuck": [{"name": "paid_30m", "statuses": ["paid"], "max_dwell": "30m"}]}
CFG = config(PAID_30M)
A_PAID = [order(0, "A", "created"), order(MIN, "A", "paid")]  # fires at 31 min
B_LATER = [order(2 * HOUR, "B", "created")]


def fired_before() -> AlertChange:
    (alert,) = track(A_PAID, CFG, until=HOUR)
    return alert


def fresh() -> ShardTracker:
    return ShardTracker(RuleSet.from_config(CFG))


def test_an_alert_whose_order_is_gone_from_the_input_ends_as_unconfirmed() -> None:
    carried = fired_before()
    tracker = fresh()
    tracker.carry([carried])
    assert tracker.advance(BASE + 31 * MIN) == []  # not due yet: this run could still raise it
    (ended,) = track(B_LATER, CFG, until=3 * HOUR, tracker=tracker)
    assert summary([ended]) == [("resolved", "paid_30m", "A", 31 * MIN, 3 * HOUR - 1)]
    assert ended.fingerprint == carried.fingerprint
    assert ended.annotations[RESOLUTION] == UNCONFIRMED
    assert ended.annotations["summary"] == carried.annotations["summary"]
    assert track(B_LATER, CFG, until=4 * HOUR, tracker=tracker) == []  # settled once


def test_a_live_shard_with_nothing_else_to_do_wakes_for_a_carried_alert() -> None:
    """An idle live shard sleeps until its next due time: without a carried alert's start
    there, a shard whose orders are all gone would never wake to settle it."""
    carried = fired_before()
    tracker = fresh()
    assert tracker.next_due() is None
    tracker.carry([carried])
    assert tracker.next_due() == carried.starts_at


def test_the_same_input_again_raises_it_and_ends_nothing() -> None:
    carried = fired_before()
    tracker = fresh()
    tracker.carry([carried])
    again = track(A_PAID + B_LATER, CFG, until=3 * HOUR, tracker=tracker)
    assert summary(again) == [("firing", "paid_30m", "A", 31 * MIN, None)]


def test_a_resumed_shard_that_holds_it_ends_nothing_and_its_snapshot_forgets_the_carry() -> None:
    tracker = fresh()
    (carried,) = track(A_PAID, CFG, until=HOUR, tracker=tracker)
    resumed = pickle.loads(pickle.dumps(tracker))
    resumed.carry([carried, carried])  # handed over twice: settled once
    assert resumed.advance(BASE + 3 * HOUR) == []
    tracker.carry([carried])
    assert pickle.loads(pickle.dumps(tracker))._carried == []  # every start hands them over


def test_raised_again_with_another_start_the_store_keeps_only_the_new_one() -> None:
    """Its order first seen mid-life now: this run raises it with a later `startsAt`. The
    store supersedes the old instance then, so the old one's unconfirmed end is no news."""
    carried = fired_before()
    store = AlertStore(None)
    store.apply([carried])
    tracker = fresh()
    tracker.carry([carried])
    out = track([order(10 * MIN, "A", "paid")], CFG, until=3 * HOUR, tracker=tracker)
    assert summary(out) == [
        ("firing", "paid_30m", "A", 40 * MIN, None),
        ("resolved", "paid_30m", "A", 31 * MIN, 3 * HOUR - 1),
    ]
    kept = store.apply(sorted(out, key=AlertChange.sort_key))
    assert summary(kept) == [("firing", "paid_30m", "A", 40 * MIN, None)]
    assert [a.starts_at for a in store.firing()] == [BASE + 40 * MIN]


def test_the_store_reopens_an_unconfirmed_end_that_a_late_event_raises_after_all() -> None:
    carried = fired_before()
    store = AlertStore(None)
    store.apply([carried])
    unconfirmed = carried.resolved(BASE + HOUR, **{RESOLUTION: UNCONFIRMED})
    assert store.apply([unconfirmed]) == [unconfirmed] and store.firing() == []
    assert store.apply([carried]) == [carried]  # raised after all: firing again
    assert store.firing() == [carried]
    assert store.apply([carried]) == []  # once
    ended = carried.resolved(BASE + 2 * HOUR, **{RESOLUTION: "ended by order allocated"})
    assert store.apply([ended]) == [ended] and store.firing() == []
    assert store.apply([carried]) == []  # a real end is never reopened


def test_the_dataflow_hands_each_order_s_alert_to_the_shard_that_owns_it() -> None:
    """Two workers: each group reaches its shard's worker, wherever bytewax placed it."""
    gone, kept = fired_before(), track([order(0, "K", "paid")], CFG, until=HOUR)[0]
    shards = CFG.engine.shards
    assert shard_of("A", shards) != shard_of("K", shards)  # two groups, two shards
    assert len(by_shard([gone, kept], shards)) == 2
    lines = [order(0, "K", "paid"), *B_LATER]
    alerts: list[tuple[str, AlertChange]] = []
    flow = build_flow(
        CFG,
        [TestingSource([RawChunk("test", 1, lines)])],
        Outputs(TestingSink(alerts), TestingSink([])),
        Runtime(shards=shards),
        live=False,
        carried=[gone, kept],
    )
    cli_main(flow, workers_per_process=2)
    got = sorted((a for _, a in alerts), key=AlertChange.sort_key)
    assert summary(got) == [
        ("firing", "paid_30m", "K", 30 * MIN, None),
        ("resolved", "paid_30m", "A", 31 * MIN, 2 * HOUR - MIN - 1),  # lateness 60 s
    ]
    assert got[1].status == RESOLVED and got[1].annotations[RESOLUTION] == UNCONFIRMED
