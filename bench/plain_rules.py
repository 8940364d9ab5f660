"""The order-health rules as a plain, single-threaded script: a yardstick and an oracle.

Written from CONTRACT.md §1-§4, not from orderwatch's code: read every line, decode, validate
minimally, drop duplicate event_ids, sort by (event time, kind, line), then walk the events
with one dict per order and a heap of deadlines. A deadline T fires before the first event
with ts > T (an event at exactly T is applied first); at the end every deadline <= the largest
event time fires. For a stream without late events its alerts equal `orderwatch replay`'s.

    python bench/plain_rules.py EVENTS.jsonl --config CONFIG.yaml [--alerts-out FILE]

`run(lines, cfg)` takes the raw lines and the config as a plain dict (parsed YAML).
Only stdlib and orjson; PyYAML is imported by the command line alone.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import json
import re
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import MAX_PREC, Decimal, InvalidOperation, localcontext
from itertools import combinations
from typing import Any

import orjson

FORWARD = ("created", "deposit_paid", "paid", "allocated", "label_printed", "shipped",
           "in_transit", "delivered", "completed")  # fmt: skip
STATUSES = frozenset((*FORWARD, "cancelled", "refund_requested", "refunded", "closed"))
TERMINAL = frozenset(("completed", "cancelled", "refunded", "closed"))
KIND_RANK = {"order": 0, "payment": 1, "wms": 2, "logistics": 3, "access_log": 4}
ENUMS = {
    "payment": ("status", frozenset(("success", "failed", "refunded", "closed"))),
    "wms": ("action", frozenset(("outbound_created", "picked", "packed", "shipped", "cancelled"))),
    "logistics": ("node", frozenset(("collected", "in_transit", "out_for_delivery", "delivered",
                                      "exception", "returned"))),
}  # fmt: skip
GAPS = ("paid_without_wms", "wms_without_payment", "payment_not_applied")
ANOMALIES = ("illegal_transition", "shipped_without_tracking", "conflicting_tracking",
             "amount_mismatch", "duplicate_payment")  # fmt: skip
MIN_MS, MAX_MS = 100_000_000_000, 4_102_444_800_000  # 1973 .. 2100
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_MS = timedelta(milliseconds=1)
_UNITS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def duration_ms(v: str | int | float) -> int:
    """`90s`, `30m`, `1h30m`, `7d` (or a number of seconds) -> milliseconds."""
    if isinstance(v, int | float):
        return round(v * 1000)
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)", v.replace(" ", ""))
    if not parts or "".join(n + u for n, u in parts) != v.replace(" ", ""):
        raise ValueError(f"bad duration {v!r}")
    return round(sum(float(n) * _UNITS[u] for n, u in parts))


def default_transitions() -> set[tuple[str, str]]:
    pairs = {(a, b) for i, a in enumerate(FORWARD) for b in FORWARD[i + 1 :]}
    pairs |= {(a, b) for a in FORWARD[:5] for b in ("cancelled", "closed")}
    pairs |= {(a, "refund_requested") for a in FORWARD[1:8]}
    pairs.add(("refund_requested", "refunded"))  # and back to where it came from: see allowed()
    return pairs


class Rules:
    """The parts of the config that decide alerts."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        rules = cfg.get("rules") or {}
        self.stuck = [
            (f"stuck:{r['name']}", r["name"], frozenset(r["statuses"]), duration_ms(r["max_dwell"]),
             r.get("since", "entered") == "last_update", r.get("severity", "warning"),
             None if r.get("channels") is None else frozenset(r["channels"]),
             None if r.get("warehouses") is None else frozenset(r["warehouses"]))
            for r in rules.get("stuck") or []
        ]  # fmt: skip
        gaps = rules.get("gaps") or {}
        self.gaps = {
            g: (duration_ms(gaps[g]["within"]), gaps[g].get("severity", "warning"))
            for g in GAPS
            if gaps.get(g)
        }
        an = rules.get("anomalies") or {}
        disabled = set(an.get("disabled") or ())
        sev = an.get("severities") or {}
        self.anomalies = {
            k: sev.get(k, an.get("severity", "warning")) for k in ANOMALIES if k not in disabled
        }
        life = cfg.get("lifecycle") or {}
        self.forbid = {(a, b) for a, bs in (life.get("forbid") or {}).items() for b in bs}
        allow = {(a, b) for a, bs in (life.get("allow") or {}).items() for b in bs}
        self.allow = (default_transitions() | allow) - self.forbid
        # first seen in refund_requested: it may go back to anywhere a refund is asked from
        self.any_origin = {a for a, b in self.allow if b == "refund_requested"}
        self.status_map = {**{s: s for s in STATUSES}, **(cfg.get("status_map") or {})}
        engine = cfg.get("engine") or {}
        self.retention = duration_ms(engine.get("terminal_retention", "1h"))
        self.ttl = duration_ms(engine.get("order_ttl", "30d"))
        self.dedup_horizon = duration_ms(engine.get("dedup_horizon", "24h"))
        self.max_bytes = int(engine.get("max_event_bytes", 65_536))


def parse_ts(v: Any) -> int | str:
    """Epoch ms, or a rejection reason."""
    if type(v) is int:
        ms = v
    elif isinstance(v, str):
        try:
            dt = datetime.fromisoformat(v)
        except ValueError:
            try:  # RFC 3339 allows a lowercase "t" and "z"
                dt = datetime.fromisoformat(v.upper())
            except ValueError:
                return "invalid_timestamp"
        if dt.tzinfo is None:
            return "naive_timestamp"
        ms = (dt - EPOCH) // ONE_MS  # exact integer arithmetic, no float rounding
    else:
        return "invalid_field" if v is not None else "missing_field"
    return ms if MIN_MS <= ms < MAX_MS else "invalid_timestamp"


def to_decimal(v: Any, raw: bytes) -> Decimal | str | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float, str)):
        return "invalid_field"
    if isinstance(v, float):  # orjson read the JSON number as a binary float: read it exactly
        v = json.loads(raw, parse_float=Decimal).get("amount")
    try:
        d = Decimal(v)
    except InvalidOperation:
        return "invalid_field"
    # below 10^12 in size, as orderwatch decided (README "Events"): larger is a unit mistake
    return d if d.is_finite() and d.adjusted() < 12 else "invalid_field"


def decode(raw: bytes, rules: Rules) -> tuple[int, str, dict[str, Any]] | str:
    """(ts, type, event) or a rejection reason."""
    if len(raw) > rules.max_bytes:
        return "oversized"
    try:
        ev = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return "malformed_json"
    if not isinstance(ev, dict):
        return "malformed_json"
    kind = ev.get("type")
    if kind not in KIND_RANK:
        return "missing_field" if kind is None else "unknown_type"
    ts = parse_ts(ev.get("ts"))
    if isinstance(ts, str):
        return ts
    for f in ("event_id", "channel", "warehouse", "tracking_no"):
        if f in ev and ev[f] is not None and not isinstance(ev[f], str):
            return "invalid_field"
        if ev.get(f) == "":
            ev[f] = None  # an empty value is no value (and no label: Prometheus drops "")
    if kind == "access_log":
        return ts, kind, ev
    oid = ev.get("order_id")
    if not isinstance(oid, str) or not 1 <= len(oid) <= 128:
        return "missing_field" if oid is None else "invalid_field"
    if kind == "order":
        if not isinstance(ev.get("status"), str):
            return "missing_field"
        ev["status"] = rules.status_map.get(ev["status"])
        if ev["status"] is None:
            return "unknown_status"
    else:
        if kind == "payment" and (not isinstance(ev.get("pay_no"), str) or not ev["pay_no"]):
            return "missing_field"
        name, allowed = ENUMS[kind]
        if ev.get(name) not in allowed:
            return "missing_field" if ev.get(name) is None else "invalid_field"
    if kind in ("order", "payment"):
        amount = to_decimal(ev.get("amount"), raw)
        if isinstance(amount, str):
            return amount
        ev["amount"] = amount
    return ts, kind, ev


def fingerprint(labels: dict[str, str]) -> str:
    """Prometheus label signature: FNV-1a 64 over sorted `name 0xff value 0xff`."""
    h = 0xCBF29CE484222325
    for name in sorted(labels):
        for b in name.encode() + b"\xff" + labels[name].encode() + b"\xff":
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def rfc3339(ms: int) -> str:
    return (EPOCH + timedelta(milliseconds=ms)).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


class Order:
    def __init__(self, oid: str) -> None:
        self.oid = oid
        self.status: str | None = None
        self.presale = False
        self.channel: str | None = None
        self.warehouse: str | None = None
        self.payable: Decimal | None = None
        self.tracking: str | None = None  # the first shipped's, or the latest before it
        self.shipped = False  # an order event said `shipped`
        self.before_refund: str | None = None
        self.pays: dict[str, Decimal | None] = {}  # successful, not refunded
        self.refunded: set[str] = set()
        self.ever_paid = False  # any successful payment (deposit included)
        self.paid_at: int | None = None
        self.wms_at: int | None = None  # first WMS event other than cancelled
        self.wms_cancelled = False  # the WMS cancelled the outbound (not sent out again)
        self.wms_shipped = False  # the WMS shipped it: a cancel comes too late
        self.pww_cleared = False  # WMS, cancel/refund/close or a refund seen
        self.done: set[str] = set()  # one-shot anomalies and gaps already fired
        self.firing: dict[str, tuple[dict[str, str], int]] = {}  # key -> (labels, startsAt)
        self.due: dict[str, int] = {}  # deadline key -> T
        self.last_seen = 0
        self.overdue = False  # due to be forgotten but an alert was firing
        self.left_unpaid = False  # was past created/deposit_paid: no payment_not_applied


class Engine:
    def __init__(self, rules: Rules) -> None:
        self.r = rules
        self.orders: dict[str, Order] = {}
        self.heap: list[tuple[int, int, int, Order, str]] = []
        self.seq = 0
        self.out: list[tuple[int, str, int, str, dict[str, str], int, int | None]] = []
        self.ended: dict[str, tuple[str, int]] = {}  # forgotten finished order -> status, last ts

    # -- alerts and deadlines ---------------------------------------------------------------
    def labels(self, o: Order, alertname: str, rule: str, severity: str) -> dict[str, str]:
        lab = {"alertname": alertname, "rule": rule, "severity": severity, "order_id": o.oid}
        if o.channel is not None:
            lab["channel"] = o.channel
        if o.warehouse is not None:
            lab["warehouse"] = o.warehouse
        return lab

    def emit(self, at: int, status: str, lab: dict[str, str], start: int, end: int | None) -> None:
        rank = 0 if status == "firing" else 1
        self.out.append((at, fingerprint(lab), rank, status, lab, start, end))

    def anomaly(self, o: Order, kind: str, ts: int) -> None:
        if kind in self.r.anomalies and kind not in o.done:
            o.done.add(kind)
            lab = self.labels(o, "OrderAnomaly", kind, self.r.anomalies[kind])
            self.emit(ts, "firing", lab, ts, ts)

    def open(self, o: Order, key: str, alertname: str, rule: str, severity: str, t: int) -> None:
        lab = self.labels(o, alertname, rule, severity)
        o.firing[key] = (lab, t)
        self.emit(t, "firing", lab, t, None)

    def resolve(self, o: Order, key: str, ts: int) -> None:
        if key in o.firing:
            lab, start = o.firing.pop(key)
            self.emit(ts, "resolved", lab, start, ts)

    def schedule(self, o: Order, key: str, t: int) -> None:
        o.due[key] = t
        self.seq += 1
        heapq.heappush(self.heap, (t, key == "forget", self.seq, o, key))

    def fire_until(self, limit: int) -> None:
        """Fire every deadline T <= limit, in time order."""
        heap = self.heap
        while heap and heap[0][0] <= limit:
            t, _, _, o, key = heapq.heappop(heap)
            if self.orders.get(o.oid) is o and o.due.get(key) == t:
                del o.due[key]
                self.on_deadline(o, key, t)

    def keep_until(self, o: Order) -> int:
        """An order is kept until the deadlines of the rules that may still fire for it."""
        due = [t for k, t in o.due.items() if k.startswith("stuck:")]  # only while in the set
        may_fire = {
            "paid_without_wms": not o.pww_cleared,
            "wms_without_payment": not o.ever_paid,
            "payment_not_applied": o.status in self.unapplied(o) and not o.left_unpaid,
        }
        for gap, (within, _) in self.r.gaps.items():
            clock = o.wms_at if gap == "wms_without_payment" else o.paid_at
            if clock is not None and gap not in o.done and may_fire[gap]:
                due.append(clock + within)
        return max(due, default=0)

    def on_deadline(self, o: Order, key: str, t: int) -> None:
        if key == "forget":  # terminal retention or idle TTL; a firing order is kept
            keep = self.keep_until(o)
            if keep > t:
                self.schedule(o, "forget", keep)
            elif o.status not in TERMINAL and t < o.last_seen + self.r.ttl:
                self.schedule(o, "forget", o.last_seen + self.r.ttl)
            elif o.firing:
                o.overdue = True  # forgotten once its last alert resolves
            else:
                self.forget(o)
        elif key == "paid_without_wms":
            if not o.pww_cleared:
                self.open_gap(o, key, t)
        elif key == "wms_without_payment":
            if not o.ever_paid:
                self.open_gap(o, key, t)
                if o.wms_cancelled:  # ended before it was due: it ends where it starts
                    self.resolve(o, key, t)
        elif key == "payment_not_applied":
            if o.status in self.unapplied(o) and not o.left_unpaid:
                self.open_gap(o, key, t)
        else:
            for k, name, statuses, _, _, sev, channels, warehouses in self.r.stuck:
                if (
                    k == key
                    and o.status in statuses
                    and (channels is None or o.channel in channels)
                    and (warehouses is None or o.warehouse in warehouses)
                ):
                    self.open(o, key, "OrderStuck", name, sev, t)

    def open_gap(self, o: Order, gap: str, t: int) -> None:
        o.done.add(gap)
        self.open(o, gap, "OrderGap", gap, self.r.gaps[gap][1], t)

    def schedule_gap(self, o: Order, gap: str, start: int) -> None:
        if gap in self.r.gaps and gap not in o.done:
            self.schedule(o, gap, start + self.r.gaps[gap][0])

    @staticmethod
    def unapplied(o: Order) -> tuple[str, ...]:
        """Statuses that mean "the full payment is not applied yet"."""
        balance_paid = o.presale and len(o.pays) >= 2
        return ("created", "deposit_paid") if balance_paid else ("created",)

    # -- events -----------------------------------------------------------------------------
    def apply(self, ts: int, kind: str, ev: dict[str, Any]) -> None:
        if self.heap and self.heap[0][0] < ts:
            self.fire_until(ts - 1)
        oid = ev["order_id"]
        o = self.orders.get(oid)
        if o is None:
            o = self.orders[oid] = Order(oid)
            self.schedule(o, "forget", ts + self.r.ttl)
            ended = self.ended.get(oid)
            if ended is not None and ts - ended[1] <= self.r.dedup_horizon:
                # a late event of a finished order: it goes on as it ended, gaps settled
                o.status = ended[0]
                o.done.update(GAPS)
                self.schedule(o, "forget", ts + self.r.retention)
        o.last_seen = ts
        if kind == "order":
            self.on_order(o, ts, ev)
        elif kind == "payment":
            self.on_payment(o, ts, ev)
        else:
            if kind == "wms":
                self.on_wms(o, ts, ev)
            elif o.tracking is None:  # the first tracking number known is the one to match
                o.tracking = ev.get("tracking_no")
            self.touch(o, ts)
        if o.overdue and o.status not in TERMINAL:  # active again: idle clock from now
            o.overdue = False
            self.schedule(o, "forget", ts + self.r.ttl)
        elif o.overdue and not o.firing:  # kept only for its alert, which this event resolved
            o.overdue = False
            keep = self.keep_until(o)
            if keep > ts:
                self.schedule(o, "forget", keep)
            else:
                self.forget(o)

    def forget(self, o: Order) -> None:
        del self.orders[o.oid]
        if o.status in TERMINAL:
            self.ended[o.oid] = (o.status, o.last_seen)

    def on_order(self, o: Order, ts: int, ev: dict[str, Any]) -> None:
        new, prev, trk = ev["status"], o.status, ev.get("tracking_no")
        for f in ("channel", "warehouse"):
            if ev.get(f) is not None:
                setattr(o, f, ev[f])
        if ev["amount"] is not None:
            o.payable = ev["amount"]
        # "a second shipped": compared with the number of the first; before it, labels re-print
        if new == "shipped" and trk is not None and o.shipped and o.tracking not in (None, trk):
            self.anomaly(o, "conflicting_tracking", ts)
        if new != prev:
            if prev is not None and not self.allowed(o, prev, new):
                self.anomaly(o, "illegal_transition", ts)
            if new == "shipped" and trk is None and o.tracking is None:
                self.anomaly(o, "shipped_without_tracking", ts)
        if trk is not None and (o.tracking is None or not o.shipped):
            o.tracking = trk
        if new == "shipped":
            o.shipped = True
        if new != prev:
            self.change_status(o, prev, new, ts)
        self.check_amount(o, ts)

    def allowed(self, o: Order, prev: str, new: str) -> bool:
        if (prev, new) in self.r.allow:
            return True
        origin = o.before_refund
        back = prev == "refund_requested" and (
            new == origin if origin is not None else new in self.r.any_origin
        )
        return back and (prev, new) not in self.r.forbid

    def change_status(self, o: Order, prev: str | None, new: str, ts: int) -> None:
        if new == "refund_requested":
            o.before_refund = prev
        o.status = new
        if new not in ("created", "deposit_paid"):
            o.left_unpaid = True
        for key, _, statuses, dwell, last_update, *_ in self.r.stuck:
            was, now = prev in statuses, new in statuses
            if last_update or (was and not now):
                self.resolve(o, key, ts)
                o.due.pop(key, None)
            if now and (last_update or not was):
                self.schedule(o, key, ts + dwell)
        if new == "deposit_paid":
            o.presale = True
            leaking = "paid_without_wms" in o.firing
            if len(o.pays) == 1 and not leaking:  # that payment was the deposit
                o.paid_at = None
                for gap in ("paid_without_wms", "payment_not_applied"):
                    o.done.discard(gap)
                    o.due.pop(gap, None)
        if new in ("cancelled", "refunded", "closed"):
            self.clear_pww(o, ts)
        if new not in self.unapplied(o) or o.left_unpaid:
            self.resolve(o, "payment_not_applied", ts)
        if new in TERMINAL:  # retention counts from the latest terminal status
            o.overdue = False
            self.schedule(o, "forget", ts + self.r.retention)

    def on_payment(self, o: Order, ts: int, ev: dict[str, Any]) -> None:
        if o.channel is None:  # the order's own channel wins over the gateway's
            o.channel = ev.get("channel")
        pay_no, status = ev["pay_no"], ev["status"]
        if status == "refunded":
            o.pays.pop(pay_no, None)
            o.refunded.add(pay_no)
            if not o.pays:  # refunding a duplicate leaves a paid order to ship
                self.clear_pww(o, ts)
        elif status == "success":
            o.ever_paid = True
            o.due.pop("wms_without_payment", None)
            self.resolve(o, "wms_without_payment", ts)
            if pay_no in o.pays or pay_no in o.refunded:
                return
            o.pays[pay_no] = ev["amount"]
            expected = 2 if o.presale else 1
            if len(o.pays) > expected:
                self.anomaly(o, "duplicate_payment", ts)
            if o.paid_at is None and len(o.pays) >= expected:
                o.paid_at = ts
                if not o.pww_cleared:
                    self.schedule_gap(o, "paid_without_wms", ts)
                self.schedule_gap(o, "payment_not_applied", ts)
            self.check_amount(o, ts)

    def on_wms(self, o: Order, ts: int, ev: dict[str, Any]) -> None:
        if ev.get("warehouse") is not None:
            o.warehouse = ev["warehouse"]
        if ev["action"] == "cancelled":
            if not o.wms_shipped:  # the goods stay: nothing leaves unpaid any more
                o.wms_cancelled = True
                self.resolve(o, "wms_without_payment", ts)
        else:
            if o.wms_cancelled and not o.ever_paid and "wms_without_payment" in o.done:
                # sent out again, unpaid, after the cancel ended the alert: a new clock
                o.wms_at = ts
                o.done.discard("wms_without_payment")
                self.schedule_gap(o, "wms_without_payment", ts)
            o.wms_cancelled = False
            o.wms_shipped = o.wms_shipped or ev["action"] == "shipped"
            self.clear_pww(o, ts)
            if o.wms_at is None:
                o.wms_at = ts
                if not o.ever_paid:
                    self.schedule_gap(o, "wms_without_payment", ts)

    def touch(self, o: Order, ts: int) -> None:
        """A WMS or logistics event: restarts every `since: last_update` clock."""
        for key, _, statuses, dwell, last_update, *_ in self.r.stuck:
            if last_update:
                self.resolve(o, key, ts)
                if o.status in statuses:
                    self.schedule(o, key, ts + dwell)

    def clear_pww(self, o: Order, ts: int) -> None:
        o.pww_cleared = True
        o.due.pop("paid_without_wms", None)
        self.resolve(o, "paid_without_wms", ts)

    def check_amount(self, o: Order, ts: int) -> None:
        if "amount_mismatch" in o.done or o.payable is None:
            return
        if o.status in (None, "created", "deposit_paid"):
            return
        amounts = [a for a in o.pays.values() if a is not None]
        if o.presale:  # deposit + balance; with a duplicate, any two of them (or all, if split)
            with localcontext(prec=MAX_PREC):
                sums = [sum(amounts), *(a + b for a, b in combinations(amounts, 2))]
            bad = len(amounts) >= 2 and o.payable not in sums
        else:
            bad = any(a != o.payable for a in amounts)
        if bad:
            self.anomaly(o, "amount_mismatch", ts)


def run(
    lines: Iterable[bytes], cfg: dict[str, Any], rejected: Counter[str] | None = None
) -> list[dict[str, Any]]:
    """Alert changes for `lines`, sorted like `orderwatch replay --alerts-out`."""
    rules = Rules(cfg)
    rejected = Counter() if rejected is None else rejected
    events: list[tuple[int, int, int, str, dict[str, Any]]] = []
    seen: dict[str, int] = {}
    last_ts = None  # access logs move the end of input but touch no order
    for n, raw in enumerate(lines):
        if not raw.strip():
            continue
        d = decode(raw, rules)
        if isinstance(d, str):
            rejected[d] += 1
            continue
        ts, kind, ev = d
        last_ts = ts if last_ts is None else max(ts, last_ts)  # a duplicate is input too
        if kind != "access_log":
            events.append((ts, KIND_RANK[kind], n, kind, ev))
    events.sort()  # (ts, kind rank, line) is unique: the dicts are never compared
    engine = Engine(rules)
    for ts, _, _, kind, ev in events:
        eid = ev.get("event_id")
        if eid is not None:  # in event-time order: of two copies, the earlier one counts
            key = f"{ev['order_id']}\x1f{eid}"  # a redelivery is the same event of the same order
            first = seen.get(key)
            if first is not None and abs(ts - first) <= rules.dedup_horizon:
                rejected["duplicate"] += 1
                continue
            seen[key] = ts
        engine.apply(ts, kind, ev)
    if last_ts is not None:
        engine.fire_until(last_ts)
    engine.out.sort(key=lambda a: a[:3])
    return [
        {
            "status": status,
            "labels": lab,
            "annotations": {"summary": f"{lab['alertname']} {lab['rule']} on {lab['order_id']}"},
            "startsAt": rfc3339(start),
            "endsAt": None if end is None else rfc3339(end),
            "fingerprint": fp,
        }
        for _, fp, _, status, lab, start, end in engine.out
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("events")
    p.add_argument("--config", required=True)
    p.add_argument("--alerts-out")
    args = p.parse_args(argv)
    import yaml

    with open(args.config, encoding="utf-8") as cf:
        cfg = yaml.safe_load(cf) or {}
    gc.disable()  # no reference cycles here: the collector would only rescan the event list
    t0 = time.perf_counter()
    rejected: Counter[str] = Counter()
    n = 0

    def counted(lines: Iterable[bytes]) -> Iterator[bytes]:
        nonlocal n
        for line in lines:
            n += 1
            yield line

    with open(args.events, "rb") as f:
        alerts = run(counted(f), cfg, rejected)
    elapsed = time.perf_counter() - t0
    if args.alerts_out:
        with open(args.alerts_out, "wb") as out:
            out.writelines(orjson.dumps(a) + b"\n" for a in alerts)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{n} lines, dropped {dict(rejected)}, {len(alerts)} alert changes")
    print(f"{n / elapsed:,.0f} events/s ({elapsed:.3f} s), peak RSS {rss_mib:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
