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
