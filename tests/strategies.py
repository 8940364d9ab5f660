"""Hypothesis strategies: realistic mixed order streams with faults and bounded disorder.

Each order follows a journey through the lifecycle with random waits (biased to the rule
boundaries), optional faults (lost WMS push, late or duplicate callbacks, wrong amounts,
missing or conflicting tracking, illegal jumps, cancels and refunds). Payment, WMS and
logistics events arrive up to just under half the lateness early or late relative to their
timestamps; order events of one order keep their order. Such a stream never has a late
event, so every run over it must give exactly the same alerts.
"""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import strategies as st

from tests.factories import BASE, HOUR, MIN, SEC, config

LATENESS = MIN
MAX_JITTER = LATENESS // 2 - 1

RULES: dict[str, Any] = {
    "stuck": [
        {"name": "paid_30m", "statuses": ["paid"], "max_dwell": "30m"},
        {
            "name": "unshipped_2h",
            "statuses": ["paid", "allocated", "label_printed"],
            "max_dwell": "2h",
            "severity": "critical",
        },
        {
            "name": "stalled_6h",
            "statuses": ["shipped", "in_transit"],
            "max_dwell": "6h",
            "since": "last_update",
        },
    ],
    "gaps": {
        "paid_without_wms": {"within": "10m", "severity": "critical"},
        "wms_without_payment": {"within": "10m"},
        "payment_not_applied": {"within": "5m"},
    },
    "anomalies": {"severity": "warning"},
}


STATUS_MAP = {"WAIT_SELLER_SEND_GOODS": "paid", "已付款": "paid"}


def rules_config() -> Any:
    return config(
        RULES, lateness="60s", engine={"terminal_retention": "30m"}, status_map=STATUS_MAP
    )


# Waits that hit the rule boundaries exactly, just before and just after, or anywhere.
_BOUNDARIES = [0, 1, 5 * MIN, 10 * MIN, 30 * MIN, 2 * HOUR, 6 * HOUR]
wait = st.one_of(
    st.sampled_from([b + d for b in _BOUNDARIES for d in (-1, 0, 1) if b + d >= 0]),
    st.integers(0, 3 * HOUR),
    st.integers(0, 10 * MIN),
)

FORWARD = [
    "created",
    "paid",
    "allocated",
    "label_printed",
    "shipped",
    "in_transit",
    "delivered",
    "completed",
]


@st.composite
def journey(draw: st.DrawFn, oid: str) -> list[tuple[int, dict[str, Any]]]:
    """(arrival key, event) pairs for one order."""
    t = draw(st.integers(0, 4 * HOUR))
    out: list[tuple[int, dict[str, Any]]] = []
    amount = draw(st.sampled_from(["299.00", "59.9", "1.00"]))
    n_eid = [0]

    def emit(kind: str, at: int, jitter: bool = True, **fields: Any) -> dict[str, Any]:
        n_eid[0] += 1
        ev = {
            "type": kind,
            "ts": BASE + at,
            "order_id": oid,
            "event_id": f"{oid}-{n_eid[0]}",
            **fields,
        }
        j = draw(st.integers(-MAX_JITTER, MAX_JITTER)) if jitter else 0
        out.append((BASE + at + j, ev))
        return ev

    stop = draw(st.integers(1, len(FORWARD)))
    path = [s for s in FORWARD[:stop] if s == "created" or draw(st.integers(0, 9)) > 0]
    fault = draw(
        st.sampled_from(
            [
                "none",
                "none",
                "none",
                "no_wms",
                "cancel",
                "refund",
                "jump",
                "dup_pay",
                "mismatch",
                "no_tracking",
                "conflict",
                "late_pay",
            ]
        )
    )
    paid_at = None
    for status in path:
        t += draw(wait)
        fields: dict[str, Any] = {"status": status, "channel": "tmall"}
        if status == "created":
            fields["amount"] = amount
        if status == "paid":
            paid_at = t
            pay_t = t + draw(st.integers(-3 * MIN, 3 * MIN))
            if fault == "late_pay":
                pay_t = t - 20 * MIN
            pay_amount = "1.23" if fault == "mismatch" else amount
            cb = emit(
                "payment", max(pay_t, 0), pay_no=f"P{oid}", status="success", amount=pay_amount
            )
            if draw(st.booleans()):
                out.append((cb["ts"] + draw(st.integers(0, MAX_JITTER)), dict(cb)))  # redelivery
            if fault == "dup_pay":
                emit("payment", pay_t + MIN, pay_no=f"Q{oid}", status="success", amount=amount)
        if status == "allocated" and fault != "no_wms":
            emit(
                "wms",
                t + draw(st.integers(-MIN, 15 * MIN)),
                action="outbound_created",
                warehouse="WH1",
            )
        if status == "shipped" and fault != "no_tracking":
            fields["tracking_no"] = f"T{oid}"
        emit("order", t, jitter=False, **fields)
        if status == "shipped" and fault == "conflict":
            emit("order", t + SEC, jitter=False, status="shipped", tracking_no=f"X{oid}")
        if status in ("shipped", "in_transit"):
            emit("logistics", t + draw(wait), node="in_transit", tracking_no=f"T{oid}")
    t += draw(wait)
    if fault == "cancel" and path[-1] in ("created", "paid", "allocated"):
        emit("order", t, jitter=False, status="cancelled")
    elif fault == "refund" and paid_at is not None:
        emit("order", t, jitter=False, status="refund_requested")
        emit("payment", t + draw(wait), pay_no=f"P{oid}", status="refunded")
        emit("order", t + HOUR, jitter=False, status="refunded")
    elif fault == "jump":
        emit("order", t, jitter=False, status=draw(st.sampled_from(["paid", "created"])))
    return out


@st.composite
def streams(draw: st.DrawFn, max_orders: int = 12) -> list[bytes]:
    """A mixed stream of JSON lines in arrival order."""
    n = draw(st.integers(1, max_orders))
    pairs: list[tuple[int, int, dict[str, Any]]] = []
    seq = 0
    for i in range(n):
        for key, ev in draw(journey(f"O{i}")):
            pairs.append((key, seq, ev))
            seq += 1
    pairs.sort(key=lambda p: (p[0], p[1]))
    return [orjson.dumps(ev) for _, _, ev in pairs]
