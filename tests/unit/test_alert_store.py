"""The alert store: effective changes only, across restarts and replays (CONTRACT §4)."""

from __future__ import annotations

import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from orderwatch.alerts.store import DB_NAME, AlertStore
from orderwatch.config import Config
from orderwatch.domain.alert import FIRING, AlertChange, rfc3339_ms
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.stats import LabelCap
from orderwatch.pipelines.route import ShardBatch
from orderwatch.runtime import Runtime
from tests.factories import BASE, HOUR, MIN, config, decode_all, order, payment, track, wms

DAY = 24 * HOUR


def alert(
    rule: str = "paid_not_shipped",
    oid: str = "A",
    starts: int = 0,
    *,
    alertname: str = "OrderStuck",
    severity: str = "critical",
    **labels: str,
) -> AlertChange:
    lab = {"alertname": alertname, "rule": rule, "severity": severity, "order_id": oid, **labels}
    return AlertChange(FIRING, lab, {"summary": f"{oid} {rule}"}, BASE + starts, None)


def one_shot(kind: str = "amount_mismatch", oid: str = "A", at: int = 0) -> AlertChange:
    lab = {"alertname": "OrderAnomaly", "rule": kind, "severity": "warning", "order_id": oid}
    return AlertChange(FIRING, lab, {}, BASE + at, BASE + at)


def test_firing_twice_with_same_start_is_announced_once() -> None:
    """A repeated firing of the same instance is dropped."""
    store = AlertStore(None)
    a = alert()
    assert store.apply([a]) == [a]
    assert store.apply([alert()]) == []
    assert store.firing() == [a]


def test_dedup_survives_reopen(tmp_path: Path) -> None:
    """After a restart, re-emitted firing and resolved changes of known instances are dropped."""
    path = tmp_path / DB_NAME
    a = alert()
    gone = alert("paid_not_allocated")
    with AlertStore(path) as store:
        store.apply([a, gone, gone.resolved(BASE + HOUR)])
    with AlertStore(path) as store:
        assert store.firing() == [a]
        assert store.apply([alert(), gone, gone.resolved(BASE + HOUR)]) == []
        assert store.apply([a.resolved(BASE + 2 * HOUR)]) == [a.resolved(BASE + 2 * HOUR)]
    with AlertStore(path) as store:
        assert store.firing() == []


def test_resolved_of_unknown_instance_is_kept_once() -> None:
    """The first resolution we hear of is news; a second copy is not."""
    store = AlertStore(None)
    end = alert().resolved(BASE + HOUR)
    assert store.apply([end]) == [end]
    assert store.apply([end]) == []
    assert store.apply([alert()]) == []  # its firing, replayed later, is old news too


def test_refiring_after_resolution_with_new_start_is_a_new_instance() -> None:
    """The same labels firing again from a later start are announced again."""
    store = AlertStore(None)
    first = alert(starts=0)
    again = alert(starts=3 * HOUR)
    assert store.apply([first, first.resolved(BASE + HOUR)]) == [first, first.resolved(BASE + HOUR)]
    assert store.apply([again]) == [again]
    assert store.firing() == [again]


def test_replaying_an_older_instance_after_a_newer_one_is_dropped() -> None:
    """A replay from the start re-emits an instance that ended before the current one began."""
    store = AlertStore(None)
    first, second = alert(starts=0), alert(starts=3 * HOUR)
    store.apply([first, first.resolved(BASE + HOUR), second])
    assert store.apply([first, first.resolved(BASE + HOUR), second]) == []
    assert store.firing() == [second]


def test_one_shot_fires_once_forever_across_reopen(tmp_path: Path) -> None:
    """A one-shot anomaly is announced once per instance, even after a restart."""
    path = tmp_path / DB_NAME
    shot = one_shot()
    with AlertStore(path) as store:
        assert store.apply([shot, one_shot()]) == [shot]
        assert store.firing() == []
        assert store.recent_one_shots(10) == [shot]
    with AlertStore(path) as store:
        assert store.apply([one_shot()]) == []
        assert store.recent_one_shots(10) == [shot]


def test_pruned_instances_stay_deduplicated() -> None:
    """Instances older than the retention are forgotten yet never announced twice."""
    store = AlertStore(None, retention_ms=DAY)
    shot = one_shot(at=0)
    store.apply([shot])
    store.apply([one_shot(oid="B", at=3 * DAY)])  # moves event time on: `shot` is pruned
    assert store._db.execute("SELECT COUNT(*) FROM instances").fetchone()[0] == 1
    assert store.apply([one_shot(at=0)]) == []
    fresh = one_shot(oid="C", at=3 * DAY - HOUR)
    assert store.apply([fresh]) == [fresh]


def test_an_alert_dropped_as_older_than_the_store_remembers_is_logged() -> None:
    """Right for a replay of old input, but silent loss when the store's event time ran ahead
    of this input's (a simulator demo on the same state.dir): the log says so, with the way out."""
    store = AlertStore(None, retention_ms=DAY)
    store.apply([one_shot(oid="SIM", at=30 * DAY)])  # a demo's clock, weeks ahead
    real = alert("paid_without_wms", oid="REAL1", starts=0, alertname="OrderGap")
    with capture_logs() as logged:
        assert store.apply([real]) == []
        assert store.apply([alert(oid="ok", starts=30 * DAY)]) != []  # a kept one: no line
    assert len(logged) == 1, logged
    line = logged[0]
    assert line["log_level"] == "warning" and "use another state.dir" in line["event"]
    assert (line["count"], line["rule"]) == (1, "paid_without_wms")
    assert line["starts_at"] == rfc3339_ms(BASE) and line["retention"] == "24h"


def test_a_newer_instance_supersedes_a_still_firing_one() -> None:
    """One fingerprint is firing at most once: a new start replaces the old instance."""
    store = AlertStore(None)
    old, new = alert(starts=0), alert(starts=5 * HOUR)
    store.apply([old])
    assert store.apply([new]) == [new]
    assert store.firing() == [new]
    assert store.apply([old.resolved(BASE + HOUR)]) == []


def test_oldest_lists_firing_oldest_first_and_filters_by_rule() -> None:
    """`stuck()` returns firing OrderStuck alerts oldest first, optionally of one rule."""
    store = AlertStore(None)
    store.apply(
        [
            alert("paid_not_shipped", "B", 2 * HOUR),
            alert("paid_not_shipped", "A", 1 * HOUR),
            alert("paid_not_allocated", "C", 0),
            alert("paid_without_wms", "D", 0, alertname="OrderGap"),
        ]
    )
    assert [a.labels["order_id"] for a in store.oldest("OrderStuck")] == ["C", "A", "B"]
    assert [a.labels["order_id"] for a in store.oldest("OrderStuck", "paid_not_shipped", 1)] == [
        "A"
    ]
    assert store.oldest("OrderStuck", "nope") == []


def test_counts_group_firing_alerts_by_name_rule_severity() -> None:
    """`counts()` sums firing, non-one-shot alerts by (alertname, rule, severity)."""
    store = AlertStore(None)
    store.apply([alert(oid="A"), alert(oid="B"), alert("x", "C", severity="warning"), one_shot()])
    assert store.counts() == {
        ("OrderStuck", "paid_not_shipped", "critical"): 2,
        ("OrderStuck", "x", "warning"): 1,
    }


def test_paid_without_wms_firings_are_counted_with_capped_labels() -> None:
    """Leak counts go by channel and warehouse, values beyond the cap become `other`."""
    store = AlertStore(None, channels=LabelCap(1), warehouses=LabelCap(5))
    store.apply(
        [
            alert("paid_without_wms", "A", channel="tmall", warehouse="W1", alertname="OrderGap"),
            alert("paid_without_wms", "B", channel="jd", warehouse="W1", alertname="OrderGap"),
            alert(
                "wms_without_payment", "C", channel="tmall", warehouse="W1", alertname="OrderGap"
            ),
        ]
    )
    store.apply(
        [alert("paid_without_wms", "A", channel="tmall", warehouse="W1", alertname="OrderGap")]
    )
    assert store.leaks() == {("tmall", "W1"): 1, ("other", "W1"): 1}


def test_replayed_tracker_output_adds_nothing(tmp_path: Path) -> None:
    """Real tracker output applied twice (a restart plus replay) yields each change once."""
    lines = [
        order(0, "A", "created", amount="10"),
        payment(MIN, "A", amount="12"),
        order(MIN, "A", "paid"),
        wms(20 * MIN, "A"),
    ]
    changes = track(lines, until=3 * HOUR)
    rules = sorted({c.labels["rule"] for c in changes})
    assert rules == [
        "amount_mismatch",
        "paid_not_allocated",
        "paid_not_shipped",
        "paid_without_wms",
    ]
    path = tmp_path / DB_NAME
    with AlertStore(path) as store:
        assert store.apply(changes) == changes
    with AlertStore(path) as store:
        assert store.apply(track(lines, until=3 * HOUR)) == []
        assert {a.labels["rule"] for a in store.firing()} == {
            "paid_not_allocated",
            "paid_not_shipped",
        }


def test_for_order_returns_every_remembered_instance() -> None:
    """An order's firing, resolved and one-shot instances come back, oldest first."""
    store = AlertStore(None)
    a, b = alert("paid_not_allocated", starts=0), alert(starts=HOUR)
    store.apply([a, a.resolved(BASE + 30 * MIN), one_shot(at=MIN), b, alert(oid="Z")])
    got = store.for_order("A")
    assert [(x.status, x.labels["rule"], x.one_shot) for x in got] == [
        ("resolved", "paid_not_allocated", False),
        ("firing", "amount_mismatch", True),
        ("firing", "paid_not_shipped", False),
    ]


def test_alerts_of_rules_no_longer_configured_are_resolved_once(tmp_path: Path) -> None:
    """A rule removed, its severity changed or its filter narrowed since its alerts fired:
    nothing would ever end them, so a restart resolves them at the latest event time seen,
    and only them."""
    path = tmp_path / DB_NAME
    kept = alert("paid_not_shipped", "A", 0, channel="tmall")
    removed = alert("logistics_stalled", "B", MIN)
    reworded = alert("paid_not_allocated", "C", 2 * MIN, severity="warning")
    filtered = alert("paid_not_shipped", "D", 3 * MIN, channel="jd")
    with AlertStore(path) as store:
        store.apply([kept, removed, reworded, filtered, one_shot(at=5 * MIN)])
    rules = RuleSet.from_config(
        config(
            {
                "stuck": [
                    {
                        "name": "paid_not_shipped",
                        "statuses": ["paid"],
                        "max_dwell": "2h",
                        "severity": "critical",
                        "channels": ["tmall"],
                    },
                    {
                        "name": "paid_not_allocated",
                        "statuses": ["paid"],
                        "max_dwell": "30m",
                        "severity": "critical",
                    },
                ]
            }
        )
    )
    with AlertStore(path) as store:
        ended = store.retire(rules.could_fire)
        assert [(a.labels["order_id"], a.ends_at) for a in ended] == [
            ("B", BASE + 5 * MIN),
            ("C", BASE + 5 * MIN),
            ("D", BASE + 5 * MIN),
        ]
        assert {a.annotations["resolution"] for a in ended} == {"its rule is no longer configured"}
        assert store.firing() == [kept]
        assert store.apply([removed]) == []  # the input re-read after the restart: no re-firing
    with AlertStore(path) as store:
        assert store.retire(rules.could_fire) == []
        assert store.firing() == [kept]


def test_changes_stored_but_not_announced_are_handed_out_after_a_restart(
    tmp_path: Path,
) -> None:
    """A crash between storing and printing: the next start announces those changes, in the
    order they were stored; announced ones are not handed out again."""
    path = tmp_path / DB_NAME
    printed, lost = alert("paid_not_allocated", "A"), alert("paid_not_shipped", "B", starts=MIN)
    shot = one_shot(oid="C", at=2 * MIN)
    with AlertStore(path) as store:
        assert store.apply([printed]) == [printed]
        store.mark_announced()
        assert store.apply([lost, shot]) == [lost, shot]  # ... and the process dies here
        store._db.close()  # no clean close: nothing more is written
        store._db = sqlite3.connect(":memory:")
    with AlertStore(path) as store:
        assert store.unannounced() == [lost, shot]
        # handed out until marked: a crash while announcing them hands them out again
    with AlertStore(path) as store:
        assert store.unannounced() == [lost, shot]
        store.mark_announced()
    with AlertStore(path) as store:
        assert store.unannounced() == []


def test_an_unannounced_firing_resolved_since_is_handed_out_as_it_fired() -> None:
    store = AlertStore(None)
    a = alert()
    store.apply([a])
    store.apply([a.resolved(BASE + HOUR)])
    fired, ended = store.unannounced()
    assert (fired.status, fired.ends_at, fired.labels) == ("firing", None, a.labels)
    assert ended == a.resolved(BASE + HOUR)
    # the resolution's account of what ended it is not the firing's to tell
    store = AlertStore(None)
    store.apply([a])
    store.apply([a.resolved(BASE + HOUR, resolution="ended by order cancelled …")])
    fired, _ = store.unannounced()
    assert fired.annotations == a.annotations


def test_each_process_hands_out_its_own_and_process_0_those_of_a_gone_process(
    tmp_path: Path,
) -> None:
    path = tmp_path / DB_NAME
    ones, twos = alert(oid="P1"), alert(oid="P2")
    with AlertStore(path, process=1) as p1:
        p1.apply([ones])
    with AlertStore(path, process=2) as p2:
        p2.apply([twos])
    with AlertStore(path, process=0) as p0:
        assert p0.unannounced(processes=3) == []  # 1 and 2 are still in the cluster
        assert p0.unannounced(processes=2) == [twos]  # process 2 is gone: 0 takes its share
        p0.mark_announced()
    with AlertStore(path, process=1) as p1:
        assert p1.unannounced(processes=2) == [ones]
    with AlertStore(path, process=2) as p2:
        assert p2.unannounced(processes=3) == []


def _sqlite_work(store: AlertStore, changes: list[AlertChange]) -> int:
    """SQLite virtual-machine steps (in hundreds) `apply` takes: a count of work, not time."""
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0  # go on

    store._db.set_progress_handler(count, 100)
    try:
        store.apply(changes)
    finally:
        store._db.set_progress_handler(None, 100)
    return steps[0]


def test_storing_an_alert_costs_the_same_with_many_firing(tmp_path: Path) -> None:
    """A 漏发 storm keeps tens of thousands of alerts firing: a new one, a resolution and a
    pruning pass must not walk them all. The supersede check did (the planner took the state
    index for `state = 'firing'`), which made a storm quadratic: 10,000 alerts in one batch
    took 2.2 s instead of 0.2 s, and the control plane waited for it."""
    work = []
    for firing in (500, 20_000):
        store = AlertStore(tmp_path / f"{firing}.db")
        store.apply([alert(oid=f"O{i}", starts=i) for i in range(firing)])
        fresh = [alert(oid=f"N{i}", starts=DAY + i) for i in range(100)]
        gone = [alert(oid=f"O{i}", starts=i).resolved(BASE + DAY) for i in range(100)]
        once = [one_shot(oid=f"S{i}", at=DAY + i) for i in range(100)]
        # the last batch moves the high-water mark 10 min on: a pruning pass
        work.append(
            [
                _sqlite_work(store, fresh),
                _sqlite_work(store, gone),
                _sqlite_work(store, [*once, alert(oid="late", starts=DAY + 20 * MIN)]),
            ]
        )
        assert len(store.firing()) == firing + 101 - 100
    few, many = work
    assert all(m < 2 * f for f, m in zip(few, many, strict=True)), (few, many)


_RULES = (("OrderStuck", "paid_not_shipped"), ("OrderStuck", "paid_not_allocated"))
_OPS = st.lists(
    st.tuples(
        st.sampled_from(["fire", "resolve", "once"]),
        st.integers(0, 5),  # order: fingerprints repeat, so newer instances supersede
        st.integers(0, 1),  # rule
        st.integers(0, 20),  # starts_at, minutes
    ),
    max_size=40,
)


@given(ops=_OPS, limit=st.integers(0, 4))
@settings(max_examples=150, deadline=None)
def test_oldest_and_counts_agree_with_what_fires(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, int, int, int]], limit: int
) -> None:
    """The per-rule oldest-first lists and counts, kept as alerts change (scrapes read them),
    are what sorting and counting the firing alerts gives: after supersedes, resolutions of
    current and stale instances, one-shots, and a restart."""
    path = tmp_path_factory.mktemp("store") / DB_NAME
    with AlertStore(path) as store:
        for op, oid, rule, minute in ops:
            name, rule_name = _RULES[rule]
            a = alert(rule_name, f"O{oid}", minute * MIN, alertname=name)
            if op == "once":
                store.apply([one_shot(oid=f"O{oid}", at=minute * MIN)])
            else:
                store.apply([a if op == "fire" else a.resolved(a.starts_at + MIN)])
        before = _indexes(store, limit)
    with AlertStore(path) as store:
        assert _indexes(store, limit) == before


def _indexes(store: AlertStore, limit: int) -> list[Any]:
    firing = store.firing()  # sorted by (starts_at, fingerprint)
    assert store.counts() == Counter(
        (a.labels["alertname"], a.labels["rule"], a.labels["severity"]) for a in firing
    )
    for name, rule in (*_RULES, ("OrderGap", "paid_without_wms")):
        of_rule = [a for a in firing if (a.labels["alertname"], a.labels["rule"]) == (name, rule)]
        assert store.oldest(name, rule) == of_rule
        assert store.oldest(name, rule, limit) == of_rule[:limit]
        assert store.firing_count(name, rule) == len(of_rule)
    stuck = [a for a in firing if a.labels["alertname"] == "OrderStuck"]
    assert store.oldest("OrderStuck") == stuck
    # by when the order's clock started: a rule's window earlier (the API's stuck list)
    shift = {"paid_not_shipped": 10 * MIN, "paid_not_allocated": 0}
    by_clock = sorted(stuck, key=lambda a: (a.starts_at - shift[a.labels["rule"]], a.fingerprint))
    assert store.oldest("OrderStuck", limit=limit, shift=shift) == by_clock[:limit]
    assert store.firing_count("OrderStuck") == len(stuck)
    return [(a.fingerprint, a.starts_at) for a in firing]


def test_the_daemons_store_caps_warehouses_at_max_label_values() -> None:
    """The daemon's store caps `warehouse` (and `channel`) of orderwatch_paid_without_wms_total
    at `metrics.max_label_values`, not at a built-in 50 (it passed `channels=` only); the
    `metrics.channels` come on top of the cap (they took slots of it: 1 seen + tmall, not 2)."""
    from orderwatch.daemon import open_alert_store

    cfg = config(metrics={"max_label_values": 2, "channels": ["tmall"]})
    store = open_alert_store(cfg, None, Runtime())
    store.apply(
        [
            alert("paid_without_wms", f"O{i}", channel=ch, warehouse=f"W{i}", alertname="OrderGap")
            for i, ch in enumerate(("tmall", "jd", "pdd", "douyin"))
        ]
    )
    assert store.leaks() == {
        ("tmall", "W0"): 1,
        ("jd", "W1"): 1,
        ("pdd", "other"): 1,
        ("other", "other"): 1,
    }


def _shard_counting_payments(cfg: Config, runtime: Runtime, resume: bytes | None = None) -> Any:
    """A shard of the dataflow as `flow_steps` builds it, recovery on, that took a paid
    order from channel `jd` (counted in `orderwatch_payments_total{channel}`)."""
    from orderwatch.pipelines.orders import flow_steps

    _, build_shard = flow_steps(cfg, runtime, live=False, recovery=True)
    logic = build_shard(resume)
    if resume is None:
        (d,) = decode_all([payment(0, "A", channel="jd")])
        # a chunk an hour newer: the watermark passes the payment, which is applied
        logic.on_batch([ShardBatch("s000", [(d.ts_ms, d.event)], d.ts_ms + HOUR)])
    return logic


def test_the_store_and_the_shards_give_a_channel_the_same_label() -> None:
    """The leak ratio by channel divides the store's paid_without_wms_total by the shards'
    payments_total: one channel cap per process, so a channel past the cap is `other` in both
    (each had its own, and labelled the first channels *it* saw)."""
    from orderwatch.daemon import open_alert_store

    cfg = config(metrics={"max_label_values": 1})
    runtime = Runtime()
    store = open_alert_store(cfg, None, runtime)
    store.apply([alert("paid_without_wms", "L", channel="pdd", alertname="OrderGap")])
    stats = _shard_counting_payments(cfg, runtime).tracker.stats
    assert dict(stats.payments) == {"other": 1}  # `jd` came after the cap was taken by `pdd`
    assert stats.channels("pdd") == "pdd"
    assert [channel for channel, _ in store.leaks()] == ["pdd"]


def test_a_resumed_shard_keeps_its_labels_and_shares_the_process_cap() -> None:
    from orderwatch.daemon import open_alert_store

    cfg = config(metrics={"max_label_values": 1})
    blob = _shard_counting_payments(cfg, Runtime()).snapshot()  # assigned `jd` its label
    runtime = Runtime()
    store = open_alert_store(cfg, None, runtime)
    store.apply([alert("paid_without_wms", "L", channel="pdd", alertname="OrderGap")])
    stats = _shard_counting_payments(cfg, runtime, resume=blob).tracker.stats
    assert stats.channels is runtime.channel_labels(cfg.metrics)
    # both keep the labels they had; the cap is full, so the next new channel is `other`
    assert [stats.channels(c) for c in ("jd", "pdd", "tmall")] == ["jd", "pdd", "other"]
    store.apply([alert("paid_without_wms", "M", channel="jd", alertname="OrderGap")])
    assert sorted(channel for channel, _ in store.leaks()) == ["jd", "pdd"]
