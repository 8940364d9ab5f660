"""The console line of an alert: one line per change, whatever the input put in its labels."""

from __future__ import annotations

import io

from orderwatch.alerts.console import ConsolePrinter
from orderwatch.domain.alert import FIRING, AlertChange
from tests.factories import BASE


def test_control_characters_from_the_input_cannot_forge_lines_or_drive_the_terminal() -> None:
    oid = "X1\n✅ RESOLVED critical paid_without_wms O9999 fake\x1b[2J"
    labels = {"alertname": "OrderAnomaly", "rule": "shipped_without_tracking"}
    alert = AlertChange(FIRING, {**labels, "severity": "warning", "order_id": oid}, {}, BASE, BASE)
    out = io.StringIO()
    ConsolePrinter("Asia/Shanghai", out)([alert])
    printed = out.getvalue()
    assert printed.count("\n") == 1 and "\x1b" not in printed
    assert "X1\\n✅ RESOLVED" in printed and "\\x1b[2J" in printed
    assert printed.startswith("🟠 ANOMALY  warning  shipped_without_tracking X1")


def test_a_resolved_line_says_first_what_ended_it() -> None:
    """The on-call reads the console line alone: "✅ RESOLVED … still `created`" read as if
    the payment had been applied when the order was auto-closed with the money in it."""
    from tests.factories import MIN, config, order, payment, track

    gaps = {"gaps": {"payment_not_applied": {"within": "5m", "severity": "critical"}}}
    lines = [order(0, "A", "created"), payment(0, "A"), order(9 * MIN, "A", "cancelled")]
    out = io.StringIO()
    ConsolePrinter("Asia/Shanghai", out)(track(lines, config(gaps)))
    firing, resolved = out.getvalue().splitlines()
    assert firing.startswith("🔴 FIRING   critical payment_not_applied A")
    assert resolved.startswith("✅ RESOLVED critical payment_not_applied A at 2026-11-11 00:09:00")
    ended = "ended by order cancelled at 2026-11-11 00:09:00 +08:00 (Asia/Shanghai)"
    assert f": {ended}; the order is now cancelled — was: Order A payment" in resolved


def test_an_alert_ended_as_unconfirmed_after_a_restart_is_no_green_tick() -> None:
    """Nothing says its order is fine: only that this run cannot raise it again."""
    from orderwatch.domain.alert import RESOLUTION, UNCONFIRMED

    a = AlertChange(
        FIRING, {"rule": "paid_30m", "severity": "warning", "order_id": "A"}, {}, BASE, None
    )
    out = io.StringIO()
    ConsolePrinter("UTC", out)([a.resolved(BASE + 1, **{RESOLUTION: UNCONFIRMED})])
    assert out.getvalue().startswith(
        "❔ RESOLVED warning  paid_30m A at 2026-11-10 16:00:00 +00:00"
    )
    assert f": {UNCONFIRMED} — was: " in out.getvalue()


def test_a_firing_line_says_when_its_orders_inputs_were_rejected() -> None:
    """A 漏发 whose WMS events were all dead-lettered (stamped without an offset) read on the
    console like a lost push; the daemon's index of rejected inputs now says so on the line."""
    from orderwatch.domain.rejected import RejectedByOrder
    from tests.factories import MIN, config, order, payment, track

    rejected = RejectedByOrder()
    for action in ("outbound_created", "shipped"):
        raw = f'{{"type":"wms","ts":"2026-11-11T00:05:00","order_id":"PO/1","action":"{action}"}}'
        rejected.add({"reason": "naive_timestamp", "source": "file:wms.jsonl", "raw": raw})
    gaps = {"gaps": {"paid_without_wms": {"within": "10m", "severity": "critical"}}}
    changes = track(
        [order(0, "PO/1", "created"), payment(MIN, "PO/1"), order(20 * MIN, "PO/1", "closed")],
        config(gaps),
    )
    out = io.StringIO()
    ConsolePrinter("Asia/Shanghai", out, rejected=rejected)(changes)
    firing, resolved = out.getvalue().splitlines()
    assert firing.startswith("🔴 FIRING   critical paid_without_wms PO/1")
    assert firing.endswith(" [2 of its inputs rejected (naive_timestamp): GET /v1/orders/PO%2F1]")
    assert "rejected" not in resolved  # what ended it is what the line is about
    out = io.StringIO()
    ConsolePrinter("Asia/Shanghai", out)(changes)  # no index (tests, tools): as before
    assert "rejected" not in out.getvalue()
