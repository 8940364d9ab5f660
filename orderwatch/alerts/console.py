"""Alerts as readable console lines: what `make run` shows while the demo runs."""

from __future__ import annotations

import sys
from typing import TextIO

from orderwatch.domain.alert import RESOLUTION, UNCONFIRMED, AlertChange
from orderwatch.domain.rejected import RejectedByOrder
from orderwatch.domain.wording import local_time, timeline_path

_ICON = {"critical": "🔴", "warning": "🟠", "info": "🔵"}


def format_line(a: AlertChange, zone: str, rejected: RejectedByOrder | None = None) -> str:
    """`🔴 FIRING  critical paid_without_wms O123 tmall@WH-1 at 2026-11-11 00:10:00 +08:00: ...`

    A firing alert or an anomaly whose order had inputs rejected (`rejected`, the daemon's
    index) says so at the end: often they are why it fires (its WMS events stamped without
    an offset). Live only: what the alert itself says never depends on when lines were read.
    """
    sev = a.labels.get("severity", "")
    where = "@".join(x for x in (a.labels.get("channel"), a.labels.get("warehouse")) if x)
    if a.one_shot:
        state, when = "ANOMALY ", a.starts_at
    elif a.status == "firing":
        state, when = "FIRING  ", a.starts_at
    else:
        state, when = "RESOLVED", a.ends_at or a.starts_at
    icon = "✅" if state == "RESOLVED" else _ICON.get(sev, "⚪")
    subject = a.labels.get("order_id") or a.labels.get("route") or ""
    head = f"{icon} {state} {sev:<8} {a.labels.get('rule', a.labels.get('alertname', ''))}"
    tail = f" {subject}" + (f" {where}" if where else "")
    notes = a.annotations
    summary = notes.get("summary", "")
    ended = notes.get(RESOLUTION) if state == "RESOLVED" else None
    if ended:  # what ended it, first
        summary = f"{ended} — was: {summary}"
    if ended == UNCONFIRMED:  # not a ✅: nothing says the order is fine
        head = "❔" + head[1:]
    line = f"{head}{tail} at {local_time(when, zone)}: {summary}"
    order_id = a.labels.get("order_id")
    if rejected is not None and order_id and state != "RESOLVED":
        count, records = rejected.get(order_id)
        if count:
            reasons = ", ".join(sorted({r["reason"] for r in records}))
            line += f" [{count} of its inputs rejected ({reasons}): GET {timeline_path(order_id)}]"
    return _printable(line)


# Control characters from the input (an order id with a newline or an escape sequence) must
# not forge a line or drive the terminal: each is shown as its escape, `\n`, `\x1b`.
_ESCAPES = {c: repr(chr(c))[1:-1] for c in (*range(0x20), 0x7F, *range(0x80, 0xA0))}


def _printable(line: str) -> str:
    return line.translate(_ESCAPES)


class ConsolePrinter:
    """Prints every effective alert change, one line each."""

    def __init__(
        self, zone: str, out: TextIO | None = None, rejected: RejectedByOrder | None = None
    ) -> None:
        self._zone = zone
        self._out = out or sys.stdout
        self._rejected = rejected

    def __call__(self, changes: list[AlertChange]) -> None:
        if not changes:
            return
        lines = (format_line(a, self._zone, self._rejected) + "\n" for a in changes)
        self._out.write("".join(lines))
        self._out.flush()
