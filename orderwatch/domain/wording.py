"""Alert labels and annotations: what the on-call engineer reads and must be able to act on.

Everything here derives from event times and order state only (never the wall clock), so
replays give byte-identical annotations. Times are shown in the configured display zone
and say which zone they are in.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from urllib.parse import quote
from zoneinfo import ZoneInfo

from orderwatch.domain import timeline
from orderwatch.domain.lifecycle import STATUSES
from orderwatch.domain.money import show
from orderwatch.domain.order import OrderRec
from orderwatch.domain.rules import GapSpec, StuckSpec
from orderwatch.durations import format_duration_ms

LAST_EVENTS = 5

_ANOMALY_TEXT = {
    "illegal_transition": "illegal status change {detail}",
    "shipped_without_tracking": "marked shipped without a tracking number",
    "conflicting_tracking": "shipped with a tracking number other than the one known: {detail}",
    "amount_mismatch": "payment amount differs from the payable amount {detail}",
    "duplicate_payment": "paid more than once {detail}",
}

# Worded as of the alert's start, not "ago": the text is read (API, resends) long after.
_GAP_TEXT = {
    "paid_without_wms": "paid, but the warehouse had no outbound order {dwell} later (漏发)",
    "wms_without_payment": "left the warehouse unpaid: no successful payment {dwell} after the "
    "outbound (未付先发)",
    "payment_not_applied": "payment succeeded, but the order was still `{status}` {dwell} later "
    "(已付仍待付款)",
}

_ACTION = {
    "paid_without_wms": "Check the push to WMS for this order (callback logs, ERP pre-allocation, "
    "rejected_events on its timeline); re-push the outbound order or cancel and refund.",
    "wms_without_payment": "Hold the parcel: confirm the payment with the gateway (and "
    "rejected_events on the timeline) before it ships.",
    "payment_not_applied": "Check the payment callback handler and rejected_events on the "
    "timeline; apply the payment (or let the reconcile job do it) before the order auto-closes.",
    "OrderStuck": "Open the order's timeline (GET {timeline}) and find the step that "
    "did not happen or was rejected (rejected_events).",
    "illegal_transition": "Find which system sent the new status (the source of each event in "
    "the timeline) and whether callbacks raced; correct the status in the OMS if it is wrong.",
    "shipped_without_tracking": "Get the waybill number from the WMS or the carrier and add it "
    "to the order: the customer cannot track the parcel.",
    "conflicting_tracking": "Two waybills for one order: confirm which parcel the carrier took "
    "and void the other waybill.",
    "amount_mismatch": "Reconcile the payment with the gateway (pay_no, amount) and the "
    "payable amount; refund or collect the difference.",
    "duplicate_payment": "Confirm the payments with the gateway and refund the extra one "
    "(pay_no and paid_amount list them).",
}


@lru_cache(maxsize=16)
def _zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def local_time(ms: int, zone: str) -> str:
    """`2026-01-20 08:00:00 +08:00 (Asia/Shanghai)`: explicit about the zone."""
    dt = datetime.fromtimestamp(ms / 1000, _zone(zone))
    off = dt.strftime("%z")
    return f"{dt:%Y-%m-%d %H:%M:%S} {off[:3]}:{off[3:]} ({zone})"


def last_events(rec: OrderRec, zone: str) -> str:
    lines = []
    for e in timeline.entries(rec.log, rec.log_n, rec.log_status)[-LAST_EVENTS:]:
        when = datetime.fromtimestamp(e.ts // 1000, _zone(zone)).isoformat(" ")
        lines.append(f"{when} {e.describe()}" + (f" [{e.note}]" if e.note else ""))
    return "\n".join(lines)


def labels(
    alertname: str, rule: str, severity: str, order_id: str, rec: OrderRec
) -> dict[str, str]:
    out = {"alertname": alertname, "rule": rule, "severity": severity, "order_id": order_id}
    if rec.channel:
        out["channel"] = rec.channel
    if rec.warehouse:
        out["warehouse"] = rec.warehouse
    return out


def timeline_path(order_id: str) -> str:
    """The order's `GET /v1/orders/{id}` path, the id percent-encoded: order numbers such as
    `PO/2026/0001` would otherwise name another path."""
    return "/v1/orders/" + quote(order_id, safe="")


def _common(order_id: str, rec: OrderRec, zone: str) -> dict[str, str]:
    out = {
        "order_id": order_id,
        "status": rec.status or "unknown",
        "status_since": local_time(rec.since, zone) if rec.status else "",
        "last_events": last_events(rec, zone),
        "timeline": timeline_path(order_id),
    }
    if rec.channel:
        out["channel"] = rec.channel
    if rec.warehouse:
        out["warehouse"] = rec.warehouse
    if rec.payable is not None:
        out["amount"] = show(rec.payable)
    if rec.tracking:
        out["tracking_no"] = rec.tracking
    return out


def stuck(
    spec: StuckSpec, clock: int, at: int, order_id: str, rec: OrderRec, zone: str
) -> dict[str, str]:
    dwell = format_duration_ms(at - clock)
    limit = format_duration_ms(spec.max_dwell_ms)
    if spec.since_entered:
        where = "/".join(sorted(spec.statuses, key=STATUSES.index))
        now = f", now {rec.status}" if len(spec.statuses) > 1 else ""
        text = f"Order {order_id} stuck in {where} for {dwell} (limit {limit}{now})"
    else:
        text = f"Order {order_id} without any update for {dwell} while {rec.status} (limit {limit})"
    fields = {
        "order_id": order_id,
        "timeline": timeline_path(order_id),
        "status": rec.status or "unknown",
        "dwell": dwell,
        "limit": limit,
        "channel": rec.channel or "unknown",
        "warehouse": rec.warehouse or "unknown",
        "tracking_no": rec.tracking or "none",
    }
    text = spec.summary.format(**fields) if spec.summary else text
    step = spec.description or _ACTION["OrderStuck"]
    clock_name = "entered_at" if spec.since_entered else "last_update_at"
    out = {
        "summary": text,
        "description": f"{text}; status {rec.status} since {local_time(rec.since, zone)}. "
        + step.format(**fields),
        clock_name: local_time(clock, zone),
        "dwell": dwell,
        **_common(order_id, rec, zone),
    }
    if spec.runbook_url:
        out["runbook_url"] = spec.runbook_url
    return out


def gap(
    spec: GapSpec, clock: int, at: int, order_id: str, rec: OrderRec, zone: str
) -> dict[str, str]:
    dwell = format_duration_ms(at - clock)
    text = f"Order {order_id} " + _GAP_TEXT[spec.name].format(dwell=dwell, status=rec.status)
    out = {
        "summary": text,
        "description": f"{text}. {_ACTION[spec.name]}",
        "window": format_duration_ms(spec.within_ms),
        **_common(order_id, rec, zone),
    }
    _payments(out, rec, zone)
    if rec.wms_at is not None:
        out["wms_at"] = local_time(rec.wms_at, zone)
    if spec.runbook_url:
        out["runbook_url"] = spec.runbook_url
    return out


def _payments(out: dict[str, str], rec: OrderRec, zone: str) -> None:
    if rec.paid_at is not None:
        out["paid_at"] = local_time(rec.paid_at, zone)
    if rec.pay_nos:
        out["pay_no"] = ",".join(rec.pay_nos)
        paid = [show(a) for a in rec.paid if a is not None]
        if paid:
            out["paid_amount"] = ",".join(paid)


def anomaly(
    kind: str, detail: str, at: int, order_id: str, rec: OrderRec, zone: str
) -> dict[str, str]:
    text = f"Order {order_id} " + _ANOMALY_TEXT[kind].format(detail=detail).rstrip()
    out = {
        "summary": text,
        "description": f"{text} at {local_time(at, zone)}. {_ACTION[kind]}",
        "detail": detail,
        **_common(order_id, rec, zone),
    }
    _payments(out, rec, zone)
    return out


def ended_before_due(what: str, rec: OrderRec) -> str:
    """The `resolution` of an alert whose condition had ended before it was due."""
    return f"ended before it was due: {what}; the order is now {rec.status or 'unknown'}"


def resolution(record: bytes, rec: OrderRec, zone: str, starts_at: int) -> str:
    """What a resolved alert adds, as its `resolution`: the event that ended its condition
    (`record`, its timeline record) and the order's status now, so "paid, applied" and "closed
    with the money in it" read apart. The firing's own annotations stay as they were (a firing
    re-announced from the store's outbox drops just this one)."""
    (e,) = timeline.entries(record, 1, None)
    when = local_time(e.ts, zone)
    if e.ts < starts_at:  # late: `endsAt` is clamped to the start; say why it reads so
        when = f"{when}, which arrived late, after the alert had started"
    return f"ended by {e.describe()} at {when}; the order is now {rec.status or 'unknown'}"
