"""What the on-call reads (CONTRACT §4, README "Alerts"): each alert tells the order's state as
it is, the next step, and, once resolved, what ended it. From a seed-incident audit."""

from __future__ import annotations

from decimal import Decimal
from unittest.mock import ANY

from orderwatch.domain.alert import AlertChange
from orderwatch.domain.money import show, to_cents
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from tests.factories import HOUR, MIN, config, order, payment, track, wms

GAPS = {
    "gaps": {
        "paid_without_wms": {"within": "10m", "severity": "critical"},
        "payment_not_applied": {"within": "5m", "severity": "critical"},
    }
}
ZONE = "(Asia/Shanghai)"  # the display zone of `config()`, named in every time shown


def by_rule(alerts: list[AlertChange]) -> dict[tuple[str, str], AlertChange]:
    return {(a.labels["rule"], a.status): a for a in alerts}


def test_an_illegal_transition_shows_the_status_it_set() -> None:
    """Reported *and applied* (CONTRACT §2): the alert shows the order as it now is, not the
    status it left (an on-call read `paid` for an order about to be auto-cancelled)."""
    alerts = track([order(0, "A", "paid"), order(MIN, "A", "created")], config(GAPS))
    (illegal,) = [a for a in alerts if a.labels["rule"] == "illegal_transition"]
    assert illegal.annotations["detail"] == "paid → created"
    assert illegal.annotations["status"] == "created"
    assert illegal.annotations["status_since"].startswith("2026-11-11 00:01:00 +08:00")


def test_payment_not_applied_names_the_status_the_order_is_in() -> None:
    """A presale order waits in `deposit_paid`, not `created`: the text says which."""
    lines = [
        order(0, "A", "deposit_paid", amount="399.00"),
        payment(0, "A", "D1", amount="50.00"),
        payment(MIN, "A", "B1", amount="349.00"),
    ]
    (fired,) = track(lines, config(GAPS), until=10 * MIN)
    assert fired.labels["rule"] == "payment_not_applied"
    assert "still `deposit_paid`" in fired.annotations["summary"]
    plain = track([order(0, "B", "created"), payment(0, "B")], config(GAPS), until=10 * MIN)
    assert "still `created`" in plain[0].annotations["summary"]
    # written as of the alert's start, never "… ago": the text is read long after
    assert "ago" not in fired.annotations["summary"] + plain[0].annotations["summary"]


def test_a_resolved_alert_says_what_ended_it_and_the_status_now() -> None:
    """A paid order auto-closed without a refund and one whose payment was applied both end
    payment_not_applied; the resolution tells them apart."""
    closed = [
        order(0, "A", "created"),
        payment(MIN, "A"),
        order(30 * MIN, "A", "cancelled", source="auto-close"),
    ]
    applied = [order(0, "A", "created"), payment(MIN, "A"), order(30 * MIN, "A", "paid")]
    ended = {}
    for name, lines in (("closed", closed), ("applied", applied)):
        ended[name] = by_rule(track(lines, config(GAPS)))[("payment_not_applied", "resolved")]
    assert ended["closed"].annotations["resolution"] == (
        f"ended by order cancelled (auto-close) at 2026-11-11 00:30:00 +08:00 {ZONE}; "
        "the order is now cancelled"
    )
    assert ended["applied"].annotations["resolution"].startswith("ended by order paid at ")
    assert ended["applied"].annotations["resolution"].endswith("; the order is now paid")
    # otherwise the annotations it fired with: a firing re-announced after a crash drops the
    # resolution and is what was announced (AlertStore.unannounced)
    firing = by_rule(track(closed, config(GAPS)))[("payment_not_applied", "firing")]
    assert "resolution" not in firing.annotations
    assert ended["closed"].annotations == {**firing.annotations, "resolution": ANY}


def test_a_late_resolution_says_it_arrived_late() -> None:
    """`endsAt` is clamped to `startsAt` for an event stamped before the alert started: the
    text says why, instead of an end two days before the start."""
    lines = [order(0, "A", "created"), payment(MIN, "A")]
    tracker = ShardTracker(RuleSet.from_config(config(GAPS)))
    track(lines, config(GAPS), until=HOUR, tracker=tracker)
    (ended,) = track([order(2 * MIN, "A", "paid")], config(GAPS), until=HOUR + 1, tracker=tracker)
    assert (ended.status, ended.ends_at) == ("resolved", ended.starts_at)
    assert (
        "00:02:00 +08:00 (Asia/Shanghai), which arrived late, after the alert had started"
        in (ended.annotations["resolution"])
    )


def test_a_warehouse_event_that_ends_a_leak_is_named() -> None:
    lines = [order(0, "A", "paid"), payment(0, "A"), wms(20 * MIN, "A", warehouse="WH-SH-01")]
    leak = by_rule(track(lines, config(GAPS)))[("paid_without_wms", "resolved")]
    assert leak.annotations["resolution"].startswith("ended by wms outbound_created ")
    assert "@WH-SH-01" in leak.annotations["resolution"]


def test_every_anomaly_gives_a_next_step_of_its_own() -> None:
    lines = [
        order(0, "A", "paid", amount="100.00"),
        payment(0, "A", "P1", amount="100.00"),
        payment(MIN, "A", "P2", amount="100.00"),  # duplicate_payment
        order(2 * MIN, "A", "shipped"),  # shipped_without_tracking
        order(3 * MIN, "B", "paid", amount="92.00"),
        payment(3 * MIN, "B", "P3", amount="54.20"),  # amount_mismatch
        order(4 * MIN, "C", "shipped", tracking_no="SF1"),
        order(5 * MIN, "C", "shipped", tracking_no="SF2"),  # conflicting_tracking
        order(6 * MIN, "C", "paid"),  # illegal_transition
    ]
    anomalies = {
        a.labels["rule"]: a
        for a in track(lines, config({}))
        if a.labels["alertname"] == "OrderAnomaly"
    }
    assert len(anomalies) == 5
    steps = set()
    for kind, a in anomalies.items():
        summary, description = a.annotations["summary"], a.annotations["description"]
        step = description.split(f"{ZONE}. ", 1)[1]
        assert step and step not in summary, kind
        steps.add(step)
    assert len(steps) == 5  # one each, not one text for all
    dup = anomalies["duplicate_payment"].annotations
    assert dup["detail"] == "P1 100.00, P2 100.00"
    assert (dup["pay_no"], dup["paid_amount"]) == ("P1,P2", "100.00,100.00")
    assert anomalies["amount_mismatch"].annotations["paid_amount"] == "54.20"


def test_last_events_carry_the_year_and_the_offset() -> None:
    """A replay of last year's data, or a look across New Year, needs the date whole."""
    (fired,) = track([order(0, "A", "created"), payment(0, "A")], config(GAPS), until=10 * MIN)
    first = fired.annotations["last_events"].splitlines()[0]
    assert first.startswith("2026-11-11 00:00:00+08:00 order created")


def test_amounts_are_shown_without_an_exponent() -> None:
    """0.1 + 0.2 paid against 0.30 differs by 4E-17 in exact decimals: shown in full."""
    tiny = to_cents(Decimal("0.30000000000000004")) - to_cents(Decimal("0.30"))
    assert show(tiny) == "0.00000000000000004"
    assert show(to_cents(Decimal("299.5"))) == "299.50"


STALL_RULE = {
    "name": "stalled",
    "statuses": ["shipped", "in_transit"],
    "max_dwell": "48h",
    "since": "last_update",
    "description": "Ask {channel}'s carrier to trace {tracking_no} ({status} for {dwell}).",
    "runbook_url": "https://wiki.example.com/runbooks/stalled",
}


def test_a_stuck_rule_has_its_own_next_step_runbook_and_the_tracking_number() -> None:
    """Like a Prometheus alerting rule's annotations: a rule says what to do for its case (a
    stall needs the carrier asked, a refund someone to approve it)."""
    lines = [order(0, "A", "shipped", tracking_no="ZTO777", channel="jd")]
    (fired,) = track(lines, config({"stuck": [STALL_RULE]}), until=49 * 60 * MIN)
    notes = fired.annotations
    assert notes["description"].endswith(". Ask jd's carrier to trace ZTO777 (shipped for 48h).")
    assert notes["runbook_url"] == STALL_RULE["runbook_url"]
    assert notes["tracking_no"] == "ZTO777"
    gaps = {"gaps": {"paid_without_wms": {"within": "10m", "runbook_url": "https://w/x"}}}
    (leak,) = track([order(0, "B", "paid"), payment(0, "B")], config(gaps), until=11 * MIN)
    assert leak.annotations["runbook_url"] == "https://w/x"
    plain = track(
        lines, config({"stuck": [{**STALL_RULE, "description": None}]}), until=49 * 60 * MIN
    )
    assert "Open the order's timeline" in plain[0].annotations["description"]
