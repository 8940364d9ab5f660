"""One-shot anomalies (CONTRACT §2): each fires once per order, with endsAt = startsAt."""

from __future__ import annotations

from tests.factories import MIN, config, order, payment, scan, summary, track

ANOMALIES_ONLY = {"anomalies": {"severity": "warning"}}


def rules_of(alerts: list) -> list[str]:
    return [a.labels["rule"] for a in alerts]


def test_illegal_transition_is_reported_and_applied() -> None:
    """delivered -> paid fires once, and the order is then in `paid` (its clocks follow)."""
    rules = {"stuck": [{"name": "paid_30m", "statuses": ["paid"], "max_dwell": "30m"}]}
    lines = [order(0, "A", "delivered"), order(MIN, "A", "paid")]
    alerts = track(lines, config(rules), until=60 * MIN)
    assert summary(alerts) == [
        ("firing", "illegal_transition", "A", MIN, MIN),
        ("firing", "paid_30m", "A", 31 * MIN, None),
    ]
    assert alerts[0].annotations["detail"] == "delivered → paid"
    assert alerts[0].labels["alertname"] == "OrderAnomaly"


def test_first_event_is_never_illegal() -> None:
    """An order first seen as `delivered` is not an illegal transition."""
    assert track([order(0, "A", "delivered")], config(ANOMALIES_ONLY)) == []


def test_forward_skips_and_cancel_before_shipping_are_legal() -> None:
    """created -> allocated (skip) and allocated -> cancelled are allowed."""
    lines = [
        order(0, "A", "created"),
        order(MIN, "A", "allocated"),
        order(2 * MIN, "A", "cancelled"),
    ]
    assert track(lines, config(ANOMALIES_ONLY)) == []


def test_refund_requested_may_return_to_its_origin_only() -> None:
    """shipped -> refund_requested -> shipped is legal; -> paid is not."""
    ok = [
        order(0, "A", "shipped", tracking_no="T"),
        order(MIN, "A", "refund_requested"),
        order(2 * MIN, "A", "shipped", tracking_no="T"),
    ]
    assert track(ok, config(ANOMALIES_ONLY)) == []
    bad = [
        order(0, "B", "shipped", tracking_no="T"),
        order(MIN, "B", "refund_requested"),
        order(2 * MIN, "B", "paid"),
    ]
    assert rules_of(track(bad, config(ANOMALIES_ONLY))) == ["illegal_transition"]


def test_first_seen_in_refund_requested_may_return_where_a_refund_comes_from() -> None:
    """Where an order first seen in refund_requested came from is unknown: it may go back to
    any status a refund may be requested from, but not to one none may be (created)."""
    for back in ("paid", "shipped", "delivered"):
        lines = [order(0, "A", "refund_requested"), order(MIN, "A", back, tracking_no="T")]
        assert track(lines, config(ANOMALIES_ONLY)) == [], back
    bad = [order(0, "B", "refund_requested"), order(MIN, "B", "created")]
    assert rules_of(track(bad, config(ANOMALIES_ONLY))) == ["illegal_transition"]
    forbid = config(ANOMALIES_ONLY, lifecycle={"forbid": {"refund_requested": ["shipped"]}})
    lines = [order(0, "C", "refund_requested"), order(MIN, "C", "shipped", tracking_no="T")]
    assert rules_of(track(lines, forbid)) == ["illegal_transition"]


def test_leaving_a_terminal_status_is_illegal() -> None:
    """completed -> cancelled is reported."""
    lines = [order(0, "A", "completed"), order(MIN, "A", "cancelled")]
    assert rules_of(track(lines, config(ANOMALIES_ONLY))) == ["illegal_transition"]


def test_each_anomaly_kind_fires_at_most_once_per_order() -> None:
    """Two illegal transitions on one order give one alert."""
    lines = [order(0, "A", "delivered"), order(MIN, "A", "paid"), order(2 * MIN, "A", "created")]
    assert rules_of(track(lines, config(ANOMALIES_ONLY))) == ["illegal_transition"]


def test_configured_extra_transition_is_legal() -> None:
    """`lifecycle.allow` adds a transition to the default machine."""
    lines = [order(0, "A", "shipped", tracking_no="T"), order(MIN, "A", "cancelled")]
    assert rules_of(track(lines, config(ANOMALIES_ONLY))) == ["illegal_transition"]
    cfg = config(ANOMALIES_ONLY, lifecycle={"allow": {"shipped": ["cancelled"]}})
    assert track(lines, cfg) == []


def test_shipped_without_tracking() -> None:
    """`shipped` with no tracking number fires; with one it does not."""
    lines = [
        order(0, "A", "paid"),
        order(MIN, "A", "shipped"),
        order(0, "B", "paid"),
        order(MIN, "B", "shipped", tracking_no="SF1"),
    ]
    alerts = track(lines, config(ANOMALIES_ONLY))
    assert summary(alerts) == [("firing", "shipped_without_tracking", "A", MIN, MIN)]


def test_tracking_known_from_a_scan_counts() -> None:
    """A carrier scan with a tracking number before `shipped` supplies it."""
    lines = [
        order(0, "A", "paid"),
        scan(MIN, "A", "collected", tracking_no="SF1"),
        order(2 * MIN, "A", "shipped"),
    ]
    assert track(lines, config(ANOMALIES_ONLY)) == []


def test_double_click_ship_with_different_tracking_conflicts() -> None:
    """A second `shipped` with another tracking number fires conflicting_tracking."""
    lines = [
        order(0, "A", "shipped", tracking_no="SF1"),
        order(3000, "A", "shipped", tracking_no="SF2"),
    ]
    alerts = track(lines, config(ANOMALIES_ONLY))
    assert summary(alerts) == [("firing", "conflicting_tracking", "A", 3000, 3000)]
    assert "SF1" in alerts[0].annotations["detail"] and "SF2" in alerts[0].annotations["detail"]


def test_a_reprinted_label_before_shipping_is_not_a_conflict() -> None:
    """Only a *second* `shipped` conflicts: a label printed again under a new number before the
    first `shipped` replaces the number, and the second `shipped` is compared with the first."""
    reprinted = [
        order(0, "A", "label_printed", tracking_no="SF1"),
        order(MIN, "A", "label_printed", tracking_no="SF2"),
        order(2 * MIN, "A", "shipped", tracking_no="SF2"),
        order(3 * MIN, "A", "shipped", tracking_no="SF2"),
    ]
    assert track(reprinted, config(ANOMALIES_ONLY)) == []
    shipped_under_another = [
        order(0, "B", "label_printed", tracking_no="SF1"),
        order(MIN, "B", "shipped", tracking_no="SF2"),
    ]
    assert track(shipped_under_another, config(ANOMALIES_ONLY)) == []
    then_double_click = [*shipped_under_another, order(2 * MIN, "B", "shipped", tracking_no="SF1")]
    alerts = track(then_double_click, config(ANOMALIES_ONLY))
    assert summary(alerts) == [("firing", "conflicting_tracking", "B", 2 * MIN, 2 * MIN)]
    assert alerts[0].annotations["detail"] == "SF2 then SF1"


def test_a_scan_before_shipped_does_not_fix_the_shipped_number() -> None:
    """A carrier scan that overtook the order's `shipped` supplies a number, but the first
    `shipped` is not a second one: its own number is the one a later `shipped` must match."""
    lines = [
        scan(0, "A", "collected", tracking_no="SF1"),
        order(MIN, "A", "shipped", tracking_no="SF2"),
        order(2 * MIN, "A", "shipped", tracking_no="SF2"),
    ]
    assert track(lines, config(ANOMALIES_ONLY)) == []


def test_repeated_shipped_with_same_tracking_is_not_an_anomaly() -> None:
    """The same `shipped` twice is a repeat, not a conflict."""
    lines = [
        order(0, "A", "shipped", tracking_no="SF1"),
        order(MIN, "A", "shipped", tracking_no="SF1"),
    ]
    assert track(lines, config(ANOMALIES_ONLY)) == []


def test_disabled_anomaly_kind_does_not_fire() -> None:
    """`anomalies.disabled` switches a kind off."""
    cfg = config({"anomalies": {"disabled": ["shipped_without_tracking"]}})
    assert track([order(0, "A", "paid"), order(MIN, "A", "shipped")], cfg) == []


def test_per_kind_severity() -> None:
    """`anomalies.severities` overrides the severity per kind."""
    cfg = config({"anomalies": {"severity": "info", "severities": {"amount_mismatch": "critical"}}})
    lines = [
        order(0, "A", "created", amount="10.00"),
        payment(MIN, "A", amount="9.00"),
        order(MIN, "A", "paid"),
        order(2 * MIN, "A", "shipped"),
    ]
    sev = {a.labels["rule"]: a.labels["severity"] for a in track(lines, cfg)}
    assert sev == {"amount_mismatch": "critical", "shipped_without_tracking": "info"}
