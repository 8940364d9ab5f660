"""Payment <-> warehouse gaps and money anomalies (CONTRACT §2-§3, the Reconcile issue)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.factories import MIN, SEC, config, event, order, payment, summary, track, wms

GAPS = {
    "gaps": {
        "paid_without_wms": {"within": "10m", "severity": "critical"},
        "wms_without_payment": {"within": "10m"},
        "payment_not_applied": {"within": "5m", "severity": "critical"},
    },
    "anomalies": {"severity": "warning"},
}


def gaps(lines: list[bytes], until: int | None = None) -> list[tuple]:
    return summary(track(lines, config(GAPS), until=until))


# --- paid_without_wms (漏发) ------------------------------------------------------------------


def test_paid_without_wms_fires_at_payment_plus_window() -> None:
    """Paid, no warehouse event for 10 min: fires at tp + 10 min."""
    lines = [order(0, "A", "paid"), payment(0, "A")]
    assert gaps(lines, until=30 * MIN) == [("firing", "paid_without_wms", "A", 10 * MIN, None)]


def test_wms_event_exactly_at_deadline_gives_no_alert() -> None:
    """A WMS outbound at tp + within closes the gap in time."""
    lines = [order(0, "A", "paid"), payment(0, "A"), wms(10 * MIN, "A")]
    assert gaps(lines, until=30 * MIN) == []


def test_late_wms_event_resolves_the_gap_at_its_time() -> None:
    """A WMS outbound after the deadline resolves the firing alert at its own time."""
    lines = [order(0, "A", "paid"), payment(0, "A"), wms(10 * MIN + 1, "A")]
    assert gaps(lines, until=30 * MIN) == [
        ("firing", "paid_without_wms", "A", 10 * MIN, None),
        ("resolved", "paid_without_wms", "A", 10 * MIN, 10 * MIN + 1),
    ]


def test_wms_cancelled_does_not_close_the_gap() -> None:
    """Only a WMS event other than `cancelled` counts as the warehouse having the order."""
    lines = [order(0, "A", "paid"), payment(0, "A"), wms(MIN, "A", "cancelled")]
    assert [g[1] for g in gaps(lines, until=30 * MIN)] == ["paid_without_wms"]


def test_wms_before_payment_closes_the_gap() -> None:
    """A warehouse order that came before the payment leaves nothing to detect."""
    lines = [
        order(0, "A", "created"),
        wms(MIN, "A"),
        payment(2 * MIN, "A"),
        order(2 * MIN, "A", "paid"),
    ]
    assert gaps(lines, until=HOURS(2)) == []


def test_cancelled_before_deadline_closes_the_gap() -> None:
    """The order cancelled within the window needs no warehouse."""
    lines = [order(0, "A", "paid"), payment(0, "A"), order(5 * MIN, "A", "cancelled")]
    assert gaps(lines, until=HOURS(1)) == []


def test_refund_resolves_a_firing_gap() -> None:
    """A refund after the deadline resolves paid_without_wms at the refund's time."""
    lines = [
        order(0, "A", "paid"),
        payment(0, "A"),
        order(15 * MIN, "A", "refund_requested"),
        payment(20 * MIN, "A", status="refunded"),
    ]
    assert gaps(lines, until=HOURS(1)) == [
        ("firing", "paid_without_wms", "A", 10 * MIN, None),
        ("resolved", "paid_without_wms", "A", 10 * MIN, 20 * MIN),
    ]


def test_refunding_a_duplicate_payment_leaves_the_gap_open() -> None:
    """One of two payments refunded is not the order's refund: the money for it is still
    there and the goods still owed, so 漏发 fires (the refund used to silence it), and a
    refund after the deadline does not resolve it; refunding the last one does."""
    lines = [
        order(0, "A", "created"),
        payment(MIN, "A", "P1"),
        order(MIN + 30 * SEC, "A", "paid"),
        payment(2 * MIN, "A", "P2"),
        payment(4 * MIN, "A", "P2", status="refunded"),
        payment(20 * MIN, "A", "P1", status="refunded"),
    ]
    assert gaps(lines, until=HOURS(1)) == [
        ("firing", "duplicate_payment", "A", 2 * MIN, 2 * MIN),
        ("firing", "paid_without_wms", "A", 11 * MIN, None),
        ("resolved", "paid_without_wms", "A", 11 * MIN, 20 * MIN),
    ]


def test_gap_annotations_carry_what_on_call_needs() -> None:
    """The alert names pay_no, amount, when paid and how long without a warehouse order."""
    lines = [
        order(0, "A", "created", channel="jd", amount="299.00"),
        payment(SEC, "A", "PAY-9", amount="299.00"),
        order(2 * SEC, "A", "paid"),
    ]
    alert = track(lines, config(GAPS), until=HOURS(1))[0]
    notes = alert.annotations
    assert notes["pay_no"] == "PAY-9"
    assert notes["paid_amount"] == "299.00"
    assert notes["paid_at"] == "2026-11-11 00:00:01 +08:00 (Asia/Shanghai)"
    assert "10m" in notes["summary"] and "漏发" in notes["summary"]
    assert "payment success PAY-9" in notes["last_events"]
    assert alert.labels["channel"] == "jd" and alert.labels["severity"] == "critical"


# --- wms_without_payment (未付先发) ----------------------------------------------------------


def test_wms_without_payment_fires_and_resolves_on_payment() -> None:
    """Outbound with no payment: fires at tw + 10 min, resolves at the late payment."""
    lines = [wms(0, "A"), payment(25 * MIN, "A")]
    assert gaps(lines) == [
        ("firing", "wms_without_payment", "A", 10 * MIN, None),
        ("resolved", "wms_without_payment", "A", 10 * MIN, 25 * MIN),
    ]


@pytest.mark.parametrize("end", ["closed", "cancelled", "completed"])
def test_an_order_that_ended_is_kept_for_its_gap_deadlines(end: str) -> None:
    """The order ends a minute after its WMS outbound; `terminal_retention` (5 min) would
    forget it at 7 min, before wms_without_payment is due at 11 min: it was never fired."""
    lines = [order(0, "A", "created"), wms(MIN, "A"), order(2 * MIN, "A", end)]
    cfg = config(GAPS, engine={"terminal_retention": "5m"})
    assert summary(track(lines, cfg, until=HOURS(1))) == [
        ("firing", "wms_without_payment", "A", 11 * MIN, None)
    ]


def test_wms_cancel_after_the_deadline_resolves_it() -> None:
    """The warehouse cancels the unpaid outbound: the goods stay, the alert ends at the cancel
    (an order `closed` meanwhile does not end it: the outbound was still live)."""
    lines = [
        order(0, "A", "created"),
        wms(MIN, "A"),
        order(20 * MIN, "A", "closed"),
        wms(21 * MIN, "A", "cancelled"),
    ]
    out = track(lines, config(GAPS), until=HOURS(1))
    assert summary(out) == [
        ("firing", "wms_without_payment", "A", 11 * MIN, None),
        ("resolved", "wms_without_payment", "A", 11 * MIN, 21 * MIN),
    ]
    why = out[-1].annotations["resolution"]
    assert why.startswith("ended by wms cancelled") and "the order is now closed" in why


def test_wms_cancel_before_the_deadline_ends_it_where_it_starts() -> None:
    """The contract fires it at tw + within whatever the WMS did; a cancel that came first
    has already ended it, so it resolves at its own start, saying so."""
    lines = [order(0, "A", "created"), wms(MIN, "A"), wms(5 * MIN, "A", "cancelled")]
    out = track(lines, config(GAPS), until=HOURS(1))
    assert summary(out) == [
        ("firing", "wms_without_payment", "A", 11 * MIN, None),
        ("resolved", "wms_without_payment", "A", 11 * MIN, 11 * MIN),
    ]
    why = out[-1].annotations["resolution"]
    assert why.startswith("ended before it was due: the warehouse had cancelled the outbound")


def test_an_outbound_again_after_a_cancel_fires_and_stays() -> None:
    """Cancelled, then sent out again before the deadline: the outbound is live after all, and
    it fires at the first push's deadline, as the contract says."""
    lines = [wms(0, "A"), wms(2 * MIN, "A", "cancelled"), wms(3 * MIN, "A", "picked")]
    assert gaps(lines, until=HOURS(1)) == [("firing", "wms_without_payment", "A", 10 * MIN, None)]


def test_an_outbound_again_after_the_cancel_ended_it_fires_again() -> None:
    """A cancel ended the alert; the warehouse sends the unpaid goods out again: a new push
    that stays unpaid fires again, `within` after it."""
    lines = [
        wms(0, "A"),
        wms(20 * MIN, "A", "cancelled"),
        wms(30 * MIN, "A", "outbound_created"),
        wms(31 * MIN, "A", "picked"),  # the same push going on: no new clock
    ]
    out = track(lines, config(GAPS), until=HOURS(1))
    assert summary(out) == [
        ("firing", "wms_without_payment", "A", 10 * MIN, None),
        ("resolved", "wms_without_payment", "A", 10 * MIN, 20 * MIN),
        ("firing", "wms_without_payment", "A", 40 * MIN, None),
    ]


def test_an_outbound_again_after_a_cancel_is_no_gap_once_paid() -> None:
    """Paid after the cancel: the new push has its payment, nothing fires again."""
    lines = [
        wms(0, "A"),
        wms(20 * MIN, "A", "cancelled"),
        payment(25 * MIN, "A"),
        wms(30 * MIN, "A", "outbound_created"),
    ]
    assert gaps(lines, until=HOURS(1)) == [
        ("firing", "wms_without_payment", "A", 10 * MIN, None),
        ("resolved", "wms_without_payment", "A", 10 * MIN, 20 * MIN),
    ]


def test_a_cancel_after_the_wms_shipped_does_not_end_it() -> None:
    """Once the WMS reported the parcel shipped the goods have left: a cancel cannot undo it."""
    lines = [wms(0, "A"), wms(5 * MIN, "A", "shipped"), wms(20 * MIN, "A", "cancelled")]
    assert gaps(lines, until=HOURS(1)) == [("firing", "wms_without_payment", "A", 10 * MIN, None)]


def test_order_known_only_from_wms_is_tracked() -> None:
    """An order never seen on the order stream still gets wms_without_payment."""
    assert gaps([wms(0, "GHOST")], until=HOURS(1)) == [
        ("firing", "wms_without_payment", "GHOST", 10 * MIN, None)
    ]


def test_payment_exactly_at_deadline_is_in_time() -> None:
    """A payment at tw + within closes the gap (and the earlier WMS event covers the payment)."""
    assert gaps([wms(0, "A"), payment(10 * MIN, "A")], until=HOURS(1)) == []
    assert gaps([wms(0, "B"), payment(10 * MIN + 1, "B")], until=HOURS(1)) == [
        ("firing", "wms_without_payment", "B", 10 * MIN, None),
        ("resolved", "wms_without_payment", "B", 10 * MIN, 10 * MIN + 1),
    ]


def test_failed_payment_does_not_count() -> None:
    """A failed callback is not a successful payment."""
    lines = [wms(0, "A"), payment(MIN, "A", status="failed")]
    assert [g[1] for g in gaps(lines, until=HOURS(1))] == ["wms_without_payment"]


# --- payment_not_applied (已付仍待付款) ------------------------------------------------------


def test_payment_not_applied_fires_when_order_still_created() -> None:
    """Paid, but the order is still `created` 5 min later."""
    lines = [order(0, "A", "created"), payment(MIN, "A"), wms(2 * MIN, "A")]
    assert gaps(lines, until=HOURS(1)) == [("firing", "payment_not_applied", "A", 6 * MIN, None)]


def test_payment_not_applied_resolves_when_order_leaves_created() -> None:
    """The order moving to `paid` late resolves the alert at that event."""
    lines = [
        order(0, "A", "created"),
        payment(MIN, "A"),
        wms(2 * MIN, "A"),
        order(9 * MIN, "A", "paid"),
    ]
    assert gaps(lines) == [
        ("firing", "payment_not_applied", "A", 6 * MIN, None),
        ("resolved", "payment_not_applied", "A", 6 * MIN, 9 * MIN),
    ]


def test_leaving_created_exactly_at_deadline_is_in_time() -> None:
    """`paid` at tp + 5 min: no alert."""
    lines = [
        order(0, "A", "created"),
        payment(MIN, "A"),
        wms(2 * MIN, "A"),
        order(6 * MIN, "A", "paid"),
    ]
    assert gaps(lines, until=HOURS(1)) == []


def test_an_order_back_in_created_after_leaving_it_is_not_payment_not_applied() -> None:
    """CONTRACT §3: it fires if the order "never left `created` at or before then". Back in
    `created` by an illegal transition, it had left; only the anomaly is reported."""
    lines = [
        order(0, "A", "created"),
        payment(MIN, "A"),
        wms(MIN, "A"),
        order(2 * MIN, "A", "paid"),
        order(3 * MIN, "A", "created"),
    ]
    assert gaps(lines, until=HOURS(1)) == [("firing", "illegal_transition", "A", 3 * MIN, 3 * MIN)]


def test_paid_status_before_callback_is_fine() -> None:
    """The order already `paid` when the callback arrives: nothing to apply."""
    lines = [
        order(0, "A", "created"),
        order(MIN, "A", "paid"),
        payment(MIN + 5, "A"),
        wms(2 * MIN, "A"),
    ]
    assert gaps(lines, until=HOURS(1)) == []


# --- amounts and duplicate payments -------------------------------------------------------------


@pytest.mark.parametrize(
    ("paid", "mismatch"),
    [
        ('"299.00"', False),
        ('"299.0"', False),
        ("299", False),
        ("299.000", False),
        # Decimal's default 28-digit context rounded these two to 299
        ('"299.0000000000000000000000000001"', True),
        ("299.00000000000000000000000000000000001", True),
    ],
)
def test_amounts_are_compared_as_exact_decimals(paid: str, mismatch: bool) -> None:
    """CONTRACT §1: "299.00", "299.0", 299 and 299.000 are the same amount as a payable of
    299; one that differs only in its 31st digit is not."""
    lines = [
        order(0, "A", "created", amount="299"),
        b'{"type":"payment","ts":"2026-11-11T00:01:00+08:00","order_id":"A","pay_no":"P",'
        b'"status":"success","amount":' + paid.encode() + b"}",
        order(2 * MIN, "A", "paid"),
        wms(3 * MIN, "A"),
    ]
    fired = [("firing", "amount_mismatch", "A", 2 * MIN, 2 * MIN)] if mismatch else []
    assert gaps(lines, until=HOURS(1)) == fired


def test_amount_mismatch_fires_once_with_the_difference() -> None:
    """Paid 261.20 for 299.00: one alert naming the 37.80 difference."""
    lines = [
        order(0, "A", "created", amount="299.00"),
        payment(MIN, "A", amount="261.20"),
        order(2 * MIN, "A", "paid"),
        wms(3 * MIN, "A"),
        order(4 * MIN, "A", "allocated"),
    ]
    alerts = track(lines, config(GAPS), until=HOURS(1))
    assert summary(alerts) == [("firing", "amount_mismatch", "A", 2 * MIN, 2 * MIN)]
    assert "-37.80" in alerts[0].annotations["detail"]


def test_amount_checked_when_payment_comes_after_paid_status() -> None:
    """Payment after the `paid` event is checked at the payment."""
    lines = [order(0, "A", "paid", amount=10), payment(MIN, "A", amount=12), wms(MIN, "A")]
    assert gaps(lines, until=HOURS(1)) == [("firing", "amount_mismatch", "A", MIN, MIN)]


def test_presale_deposit_and_balance_sum_to_payable() -> None:
    """Deposit + balance equal to the payable: neither mismatch nor duplicate payment."""
    lines = [
        order(0, "A", "created", amount="100.00"),
        payment(MIN, "A", "D", amount="20.00"),
        order(MIN, "A", "deposit_paid"),
        payment(HOURS(1), "A", "B", amount="80.00"),
        order(HOURS(1), "A", "paid"),
        wms(HOURS(1), "A"),
    ]
    assert gaps(lines, until=HOURS(3)) == []


def test_presale_duplicate_balance_is_a_duplicate_not_a_mismatch() -> None:
    """The balance charged twice: deposit + balance still make the payable, so the extra
    charge is duplicate_payment's alert alone; a split balance (three payments summing to the
    payable) is no mismatch either, and three that make it neither way are one."""

    def presale(oid: str, *amounts: str) -> list[bytes]:
        head = [order(0, oid, "created", amount="100.00")]
        pays = [payment(MIN * (i + 1), oid, f"P{i}", amount=a) for i, a in enumerate(amounts)]
        return [
            *head,
            pays[0],
            order(MIN, oid, "deposit_paid"),
            *pays[1:],
            order(HOURS(1), oid, "paid"),
            wms(HOURS(1), oid),
        ]

    def rules(lines: list[bytes]) -> list[str]:
        payments = ("amount_mismatch", "duplicate_payment")
        return sorted(g[1] for g in gaps(lines, until=HOURS(3)) if g[1] in payments)

    assert rules(presale("A", "20.00", "80.00", "80.00")) == ["duplicate_payment"]
    assert rules(presale("B", "20.00", "50.00", "30.00")) == ["duplicate_payment"]
    assert rules(presale("C", "20.00", "50.00", "40.00")) == [
        "amount_mismatch",
        "duplicate_payment",
    ]


def test_payments_checked_one_by_one_are_summed_once_the_order_turns_presale() -> None:
    """Two 299.00 payments on a 299.00 order looked fine one at a time (each equal to the
    payable); once `deposit_paid` shows a presale, their sum 598.00 is a mismatch."""
    lines = [
        payment(0, "A", "P1", amount="299.00"),
        payment(MIN, "A", "P2", amount="299.00"),
        order(2 * MIN, "A", "paid", amount="299.00"),
        order(3 * MIN, "A", "deposit_paid"),
        order(4 * MIN, "A", "paid"),
        wms(4 * MIN, "A"),
    ]
    mismatches = [g for g in gaps(lines, until=HOURS(1)) if g[1] == "amount_mismatch"]
    assert mismatches == [("firing", "amount_mismatch", "A", 4 * MIN, 4 * MIN)]


def test_duplicate_payment_with_different_pay_no() -> None:
    """Two successful payments with different pay_no fire duplicate_payment once."""
    lines = [
        order(0, "A", "paid"),
        payment(0, "A", "P1"),
        payment(MIN, "A", "P2"),
        payment(2 * MIN, "A", "P3"),
        wms(MIN, "A"),
    ]
    assert gaps(lines, until=HOURS(1)) == [("firing", "duplicate_payment", "A", MIN, MIN)]


def test_redelivered_callback_same_event_id_is_not_a_duplicate_payment() -> None:
    """The same callback delivered twice (same event_id) is dropped, not a second payment."""
    cb = payment(0, "A", "P1", event_id="cb-1")
    lines = [order(0, "A", "paid"), cb, cb, wms(MIN, "A")]
    assert gaps(lines, until=HOURS(1)) == []


def test_repeated_callback_same_pay_no_is_not_a_duplicate_payment() -> None:
    """The gateway re-sending a callback for the same pay_no (new event_id) is one payment."""
    lines = [
        order(0, "A", "paid"),
        payment(0, "A", "P1", event_id="x"),
        payment(SEC, "A", "P1", event_id="y"),
        wms(MIN, "A"),
    ]
    assert gaps(lines, until=HOURS(1)) == []


def test_repayment_after_refund_is_not_a_duplicate() -> None:
    """P1 refunded, then paid again with P2: one live payment."""
    lines = [
        order(0, "A", "paid"),
        payment(0, "A", "P1"),
        wms(MIN, "A"),
        payment(2 * MIN, "A", "P1", status="refunded"),
        payment(3 * MIN, "A", "P2"),
    ]
    assert [g[1] for g in gaps(lines, until=HOURS(1))] == []


def test_payment_before_order_events_for_unknown_order() -> None:
    """A payment for an order never seen is tracked and can leak (漏发)."""
    assert gaps([payment(0, "NEW")], until=HOURS(1)) == [
        ("firing", "paid_without_wms", "NEW", 10 * MIN, None)
    ]


def test_mixed_offsets_are_the_same_instant() -> None:
    """+08:00 and Z and epoch ms for the same instant line up exactly."""
    lines = [
        order(0, "A", "created", ts="2026-11-11T08:00:00+08:00"),
        event("payment", 0, "A", ts="2026-11-11T00:00:00Z", pay_no="P", status="success"),
        event("wms", 0, "A", ts=UTC_MIDNIGHT + 10 * MIN, action="outbound_created"),
        order(0, "A", "paid", ts="2026-11-11T08:05:00+08:00"),
    ]
    # wms exactly at tp + 10 min: in time; paid exactly at tp + 5 min: in time.
    assert gaps(lines, until=HOURS(1)) == []


UTC_MIDNIGHT = int(datetime(2026, 11, 11, tzinfo=UTC).timestamp() * 1000)


def HOURS(n: float) -> int:
    return int(n * 3_600_000)


def test_presale_deposit_before_its_status_event_is_still_a_deposit() -> None:
    """Deposit callback first, then `deposit_paid`: the 漏发 clock starts at the balance."""
    lines = [
        order(0, "A", "created", amount="100.00"),
        payment(MIN, "A", "D", amount="20.00"),
        order(2 * MIN, "A", "deposit_paid"),
        payment(HOURS(1), "A", "B", amount="80.00"),
        order(HOURS(1), "A", "paid"),
    ]
    assert gaps(lines, until=HOURS(3)) == [
        ("firing", "paid_without_wms", "A", HOURS(1) + 10 * MIN, None)
    ]


def test_presale_balance_not_applied_is_detected() -> None:
    """Balance paid but the order stays `deposit_paid`: payment_not_applied."""
    lines = [
        order(0, "A", "created", amount="100.00"),
        order(MIN, "A", "deposit_paid"),
        payment(MIN, "A", "D", amount="20.00"),
        payment(HOURS(1), "A", "B", amount="80.00"),
        wms(HOURS(1), "A"),
    ]
    assert gaps(lines, until=HOURS(3)) == [
        ("firing", "payment_not_applied", "A", HOURS(1) + 5 * MIN, None)
    ]
