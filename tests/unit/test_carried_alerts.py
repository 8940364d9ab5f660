"""Alerts left firing before a start: settled by the shard of their order (`ShardTracker.carry`).

Without its state from before (no recovery), a restart re-raises what its input raises again;
an alert whose order's events are gone from the input ended nowhere and stayed firing for good.
"""

from __future__ import annotations

import pickle
from pathlib import Path

from bytewax.run import cli_main
from bytewax.testing import TestingSink, TestingSource

from orderwatch.alerts.store import AlertStore
from orderwatch.connectors.raw import RawChunk
from orderwatch.domain.alert import RESOLUTION, RESOLVED, UNCONFIRMED, AlertChange
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import CARRY_GRACE_MS, ShardTracker
from orderwatch.pipelines.carried import by_shard
from orderwatch.pipelines.orders import Outputs, build_flow
from orderwatch.pipelines.route import shard_of
from orderwatch.runtime import Runtime
from tests.factories import (
    BASE,
    HOUR,
    MIN,
    config,
    decode_all,
    order,
    order_scoped,
    summary,
    track,
)

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
    """At its start plus the grace, whatever the batches: the end is a function of the input."""
    carried = fired_before()
    tracker = fresh()
    tracker.carry([carried])
    assert tracker.advance(BASE + 36 * MIN) == []  # 31 min + 5 min grace, not passed yet
    (ended,) = track(B_LATER, CFG, until=3 * HOUR, tracker=tracker)
    assert summary([ended]) == [("resolved", "paid_30m", "A", 31 * MIN, 36 * MIN)]
    assert ended.fingerprint == carried.fingerprint
    assert ended.annotations[RESOLUTION] == UNCONFIRMED
    assert ended.annotations["summary"] == carried.annotations["summary"]
    assert track(B_LATER, CFG, until=4 * HOUR, tracker=tracker) == []  # settled once


def test_nothing_ends_before_this_run_has_read_as_far_as_the_last_one_had() -> None:
    """Until then, the input read again may still hold what raised it."""
    tracker = fresh()
    tracker.carry([fired_before()], since=BASE + 2 * HOUR)
    assert tracker.advance(BASE + 2 * HOUR + 5 * MIN) == []
    (ended,) = tracker.advance(BASE + 3 * HOUR)
    assert ended.ends_at == BASE + 2 * HOUR + 5 * MIN


def test_an_alert_a_late_event_raises_again_is_not_ended_first() -> None:
    """The late event is applied at its arrival watermark, already past the carried alert's
    settling point: it must be applied before the carried alerts are settled."""
    carried = fired_before()
    tracker = fresh()
    tracker.carry([carried])
    late = [order_scoped(d) for d in decode_all(B_LATER + A_PAID, CFG)]
    mark = BASE + 2 * HOUR - MIN
    out = tracker.arrive(late, [(1, mark), (2, mark)]) + tracker.advance(mark)
    assert summary(out) == [("firing", "paid_30m", "A", 31 * MIN, None)]


def test_a_live_shard_with_nothing_else_to_do_wakes_for_a_carried_alert() -> None:
    """An idle live shard sleeps until its next due time: without a carried alert's start
    there, a shard whose orders are all gone would never wake to settle it."""
    carried = fired_before()
    tracker = fresh()
    assert tracker.next_due() is None
    tracker.carry([carried])
    assert tracker.next_due() == carried.starts_at + CARRY_GRACE_MS


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


def test_raised_again_with_another_start_it_ends_or_is_replaced_in_event_time_order() -> None:
    """Its order first seen mid-life now: this run raises it with another `startsAt`. Settled
    in event-time order with that, whatever the batches: a new instance due after the old
    one's settling point follows its unconfirmed end; one due before replaces it in the
    store, which then takes the old one's end for no news."""
    for paid_at, new_start, told in [
        (10 * MIN, 40 * MIN, [("resolved", 31 * MIN, 36 * MIN), ("firing", 40 * MIN, None)]),
        (2 * MIN, 32 * MIN, [("firing", 32 * MIN, None)]),
    ]:
        carried = fired_before()
        lines = [order(paid_at, "A", "paid"), *B_LATER]
        for cuts in ([3 * HOUR], [35 * MIN, 37 * MIN, 3 * HOUR]):  # one advance, or three
            store = AlertStore(None)
            store.apply([carried])
            tracker = fresh()
            tracker.carry([carried])
            track(lines, CFG, until=0, tracker=tracker)
            out = [a for cut in cuts for a in tracker.advance(BASE + cut)]
            kept = [
                (a.status, a.starts_at - BASE, a.ends_at and a.ends_at - BASE)
                for a in store.apply(out)
            ]
            assert kept == told, (paid_at, cuts)
            assert [a.starts_at for a in store.firing()] == [BASE + new_start]


def test_the_store_reopens_an_unconfirmed_end_that_a_late_event_raises_after_all() -> None:
    carried = fired_before()
    store = AlertStore(None)
    store.apply([carried])
    unconfirmed = carried.resolved(BASE + HOUR, **{RESOLUTION: UNCONFIRMED})
    assert store.apply([unconfirmed]) == [unconfirmed] and store.firing() == []
    assert store.apply([carried]) == [carried]  # raised after all: firing again
    assert store.firing() == [carried]
    again = AlertStore(None)  # the end and the raise in one batch
    again.apply([carried])
    assert again.apply([unconfirmed, carried]) == [unconfirmed, carried]
    assert again.firing() == [carried]
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
        ("resolved", "paid_30m", "A", 31 * MIN, 36 * MIN),
    ]
    assert got[1].status == RESOLVED and got[1].annotations[RESOLUTION] == UNCONFIRMED


def test_at_the_end_of_a_finite_input_one_that_started_by_then_ends_without_its_grace() -> None:
    """Nothing can come any more (a replay, a file read once); one starting after the last
    event stays, as a deadline after the end does not fire."""
    early, late = fired_before(), track([order(0, "Z", "paid")], CFG, until=2 * HOUR)[0]
    late = AlertChange(late.status, late.labels, {}, BASE + 40 * MIN, None)
    tracker = fresh()
    tracker.carry([early, late], since=BASE + 2 * HOUR)
    (ended,) = track([order(33 * MIN, "B", "created")], CFG, tracker=tracker)
    assert (ended.fingerprint, ended.ends_at) == (early.fingerprint, BASE + 33 * MIN)
    assert ended.annotations[RESOLUTION] == UNCONFIRMED
    assert [c[2] for c in tracker._carried] == [late]


def test_the_store_keeps_how_far_the_runs_had_read(tmp_path: Path) -> None:
    """A start settles carried alerts only past it: an alert changed early in a long run must
    not settle before the restart has read again what the rest of that run read."""
    path = tmp_path / "alerts.db"
    carried = fired_before()
    with AlertStore(path) as store:
        assert store.progress == 0
        store.apply([carried], progress=BASE + 2 * HOUR)
        assert store.progress == BASE + 2 * HOUR  # beyond the change's own time (31 min)
        store.note_progress(BASE + 3 * HOUR)
        store.note_progress(BASE + HOUR)  # never back
    with AlertStore(path) as store:
        assert store.progress == BASE + 3 * HOUR
