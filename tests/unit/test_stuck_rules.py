"""Stuck rules in event time (CONTRACT §3): `since: entered` and `since: last_update`."""

from __future__ import annotations

from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from tests.factories import HOUR, MIN, SEC, config, order, scan, summary, track, wms

PAID_30M = {"stuck": [{"name": "paid_30m", "statuses": ["paid"], "max_dwell": "30m"}]}
SET_2H = {
    "stuck": [
        {
            "name": "unshipped",
            "statuses": ["paid", "allocated", "label_printed"],
            "max_dwell": "2h",
            "severity": "critical",
        }
    ]
}
STALL = {
    "stuck": [
        {
            "name": "stalled",
            "statuses": ["shipped", "in_transit"],
            "max_dwell": "48h",
            "since": "last_update",
        }
    ]
}


def test_fires_at_entered_plus_max_dwell_when_still_in_status() -> None:
    """An order in `paid` past 30 min fires with startsAt = entered + 30 min."""
    alerts = track(
        [order(0, "A", "created"), order(MIN, "A", "paid")], config(PAID_30M), until=2 * HOUR
    )
    assert summary(alerts) == [("firing", "paid_30m", "A", 31 * MIN, None)]
    assert alerts[0].labels["severity"] == "warning"


def test_leaving_exactly_at_deadline_gives_no_alert() -> None:
    """Exit at T = entered + max_dwell is in time: no alert."""
    alerts = track(
        [order(0, "A", "paid"), order(30 * MIN, "A", "allocated")], config(PAID_30M), until=2 * HOUR
    )
    assert alerts == []


def test_leaving_one_ms_after_deadline_fires_and_resolves_at_exit() -> None:
    """Exit at T + 1 ms: fires at T and resolves at the exit event's time."""
    alerts = track(
        [order(0, "A", "paid"), order(30 * MIN + 1, "A", "allocated")],
        config(PAID_30M),
        until=2 * HOUR,
    )
    assert summary(alerts) == [
        ("firing", "paid_30m", "A", 30 * MIN, None),
        ("resolved", "paid_30m", "A", 30 * MIN, 30 * MIN + 1),
    ]


def test_late_exit_arriving_before_watermark_still_fires_then_resolves() -> None:
    """The exit event arrives in the same batch as its deadline: fire at T, resolve at exit."""
    alerts = track([order(0, "A", "paid"), order(45 * MIN, "A", "allocated")], config(PAID_30M))
    assert summary(alerts) == [
        ("firing", "paid_30m", "A", 30 * MIN, None),
        ("resolved", "paid_30m", "A", 30 * MIN, 45 * MIN),
    ]


def test_watermark_not_past_deadline_holds_the_alert() -> None:
    """Nothing fires until the watermark has passed T: an event at T may still come."""
    for until in (30 * MIN - 1, 30 * MIN):
        assert track([order(0, "A", "paid")], config(PAID_30M), until=until) == []


def test_deadline_just_behind_the_watermark_fires() -> None:
    """Once the watermark is past T, the alert fires, starting at T."""
    alerts = track([order(0, "A", "paid")], config(PAID_30M), until=30 * MIN + 1)
    assert summary(alerts) == [("firing", "paid_30m", "A", 30 * MIN, None)]


def test_deadline_at_the_end_of_the_input_fires() -> None:
    """At the end of the input the watermark is the last event time: a deadline at it fires."""
    lines = [order(0, "A", "paid"), order(30 * MIN, "B", "created")]
    alerts = track(lines, config(PAID_30M))
    assert summary(alerts) == [("firing", "paid_30m", "A", 30 * MIN, None)]


def test_moves_inside_the_set_keep_the_entry_clock() -> None:
    """paid -> allocated -> label_printed stays in the set: the 2 h clock runs from `paid`."""
    lines = [
        order(0, "A", "paid"),
        order(20 * MIN, "A", "allocated"),
        order(90 * MIN, "A", "label_printed"),
    ]
    alerts = track(lines, config(SET_2H), until=5 * HOUR)
    assert summary(alerts) == [("firing", "unshipped", "A", 2 * HOUR, None)]


def test_reentering_the_set_restarts_the_clock() -> None:
    """Leave `paid` and come back: the deadline counts from the re-entry."""
    lines = [
        order(0, "A", "paid"),
        order(10 * MIN, "A", "refund_requested"),
        order(20 * MIN, "A", "paid"),
    ]
    alerts = track(lines, config(PAID_30M), until=2 * HOUR)
    assert summary(alerts) == [("firing", "paid_30m", "A", 50 * MIN, None)]


def test_repeated_same_status_does_not_reset_the_clock() -> None:
    """A second `paid` event changes nothing: the alert fires 30 min after the first."""
    lines = [order(0, "A", "paid"), order(20 * MIN, "A", "paid"), order(25 * MIN, "A", "paid")]
    alerts = track(lines, config(PAID_30M), until=2 * HOUR)
    assert summary(alerts) == [("firing", "paid_30m", "A", 30 * MIN, None)]


def test_first_event_enters_the_set() -> None:
    """An order first seen mid-life in `paid` entered it at that event."""
    alerts = track([order(5 * MIN, "A", "paid")], config(PAID_30M), until=HOUR)
    assert summary(alerts) == [("firing", "paid_30m", "A", 35 * MIN, None)]


def test_last_update_clock_restarts_at_wms_and_logistics_events() -> None:
    """Scans keep a shipped order from stalling; the stall is counted from the last one."""
    lines = [
        order(0, "A", "shipped", tracking_no="SF1"),
        scan(40 * HOUR, "A"),
        wms(60 * HOUR, "A", "shipped"),
    ]
    alerts = track(lines, config(STALL), until=200 * HOUR)
    assert summary(alerts) == [("firing", "stalled", "A", 108 * HOUR, None)]


def test_last_update_alert_resolves_at_next_update() -> None:
    """A stalled order resolves when a scan finally arrives, and can stall again later."""
    lines = [
        order(0, "A", "in_transit", tracking_no="SF1"),
        scan(50 * HOUR, "A"),
        order(200 * HOUR, "A", "delivered"),
    ]
    alerts = track(lines, config(STALL))
    assert summary(alerts) == [
        ("firing", "stalled", "A", 48 * HOUR, None),
        ("resolved", "stalled", "A", 48 * HOUR, 50 * HOUR),
        ("firing", "stalled", "A", 98 * HOUR, None),
        ("resolved", "stalled", "A", 98 * HOUR, 200 * HOUR),
    ]


def test_last_update_does_not_restart_on_repeated_status() -> None:
    """A re-sent `in_transit` with nothing new is not an update."""
    lines = [order(0, "A", "in_transit", tracking_no="SF1"), order(47 * HOUR, "A", "in_transit")]
    alerts = track(lines, config(STALL), until=100 * HOUR)
    assert summary(alerts) == [("firing", "stalled", "A", 48 * HOUR, None)]


def test_channel_filter_limits_a_rule() -> None:
    """A rule with `channels: [jd]` ignores tmall orders."""
    rules = {
        "stuck": [{"name": "jd_paid", "statuses": ["paid"], "max_dwell": "30m", "channels": ["jd"]}]
    }
    lines = [order(0, "A", "paid", channel="tmall"), order(0, "B", "paid", channel="jd")]
    alerts = track(lines, config(rules), until=HOUR)
    assert summary(alerts) == [("firing", "jd_paid", "B", 30 * MIN, None)]
    assert alerts[0].labels["channel"] == "jd"


def test_warehouse_filter_uses_wms_warehouse() -> None:
    """The warehouse learnt from a WMS event counts for a warehouse filter."""
    rules = {
        "stuck": [
            {"name": "gz", "statuses": ["allocated"], "max_dwell": "10m", "warehouses": ["WH-GZ"]}
        ]
    }
    lines = [
        order(0, "A", "allocated"),
        wms(SEC, "A", warehouse="WH-GZ"),
        order(0, "B", "allocated"),
        wms(SEC, "B", warehouse="WH-SH"),
    ]
    alerts = track(lines, config(rules), until=HOUR)
    assert [a.labels["order_id"] for a in alerts] == ["A"]


def test_alert_annotations_let_on_call_act() -> None:
    """The alert says which order, where it is stuck, since when (with zone) and what it saw."""
    alerts = track(
        [order(0, "A", "created", channel="tmall"), order(MIN, "A", "paid")],
        config(PAID_30M),
        until=HOUR,
    )
    notes = alerts[0].annotations
    assert "A" in notes["summary"] and "paid" in notes["summary"]
    assert notes["entered_at"] == "2026-11-11 00:01:00 +08:00 (Asia/Shanghai)"
    assert "order paid" in notes["last_events"]
    assert notes["timeline"] == "/v1/orders/A"
    assert alerts[0].labels == {
        "alertname": "OrderStuck",
        "rule": "paid_30m",
        "severity": "warning",
        "order_id": "A",
        "channel": "tmall",
    }


def test_display_timezone_is_configurable() -> None:
    """Times in annotations follow the configured display zone."""
    alerts = track([order(0, "A", "paid")], config(PAID_30M, timezone="UTC"), until=HOUR)
    assert alerts[0].annotations["entered_at"] == "2026-11-10 16:00:00 +00:00 (UTC)"


def test_a_late_scan_older_than_the_last_update_leaves_the_stall_firing() -> None:
    """Carriers backfill scans: one stamped before the order's last update restarts no clock
    and ends no stall. It used to resolve the alert, which then fired again with the same
    identity and start: a live store takes that for the instance already resolved, and the
    stall went unalerted."""
    cfg = config(STALL)
    tracker = ShardTracker(RuleSet.from_config(cfg))
    first = track(
        [order(0, "A", "shipped", tracking_no="T1"), scan(2 * HOUR, "A")],
        cfg,
        until=60 * HOUR,
        tracker=tracker,
    )
    assert summary(first) == [("firing", "stalled", "A", 50 * HOUR, None)]
    late = track([scan(HOUR, "A")], cfg, until=61 * HOUR, tracker=tracker)
    assert late == []
    assert tracker.firing.keys() == {("A", "stalled")}
    # a newer scan does end it, at its own time
    newer = track([scan(61 * HOUR, "A")], cfg, until=62 * HOUR, tracker=tracker)
    assert summary(newer) == [("resolved", "stalled", "A", 50 * HOUR, 61 * HOUR)]


def test_a_late_status_change_out_of_the_set_still_resolves_the_stall() -> None:
    """The order left the rule's statuses: the condition ended, whatever the clock says."""
    cfg = config(STALL)
    tracker = ShardTracker(RuleSet.from_config(cfg))
    track([order(0, "A", "shipped"), scan(2 * HOUR, "A")], cfg, until=60 * HOUR, tracker=tracker)
    done = track([order(HOUR, "A", "delivered")], cfg, until=61 * HOUR, tracker=tracker)
    assert [(a.status, a.labels["rule"]) for a in done] == [("resolved", "stalled")]
    assert tracker.firing == {}


def test_a_late_fact_that_makes_a_filtered_stall_rule_apply_lets_it_fire() -> None:
    """The warehouse was unknown when the stall came due, so the WH1 rule did not fire; a
    late WMS event then says WH1. In time order it would have fired: it fires now."""
    rule = {**STALL["stuck"][0], "name": "stalled_wh1", "warehouses": ["WH1"]}
    cfg = config({"stuck": [rule]})
    tracker = ShardTracker(RuleSet.from_config(cfg))
    track([order(0, "A", "shipped"), scan(2 * HOUR, "A")], cfg, until=60 * HOUR, tracker=tracker)
    late = track([wms(HOUR, "A", warehouse="WH1")], cfg, until=61 * HOUR, tracker=tracker)
    assert summary(late) == [("firing", "stalled_wh1", "A", 50 * HOUR, None)]
