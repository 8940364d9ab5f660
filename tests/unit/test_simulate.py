"""Unit tests of the traffic simulator: determinism, schema, arrival order, health, memory.

The scenario-by-scenario signatures are in ``test_simulate_scenarios.py``.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import os
import re
import subprocess
import sys
import tracemalloc
from collections import defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest

from orderwatch.simulate import SCENARIOS, Simulator, write_jsonl

START = 1_794_326_400_000  # 2026-11-11T00:00:00+08:00 (双11)
SEC, MIN, HOUR = 1_000, 60_000, 3_600_000

CANONICAL = [
    *("created", "deposit_paid", "paid", "allocated", "label_printed", "shipped", "in_transit"),
    *("delivered", "completed", "cancelled", "refund_requested", "refunded", "closed"),
]
NATIVE = {"WAIT_SELLER_SEND_GOODS": ("tmall", "paid"), "已付款": ("pos", "paid")}
FORWARD = CANONICAL[:9]
TERMINAL = {"completed", "cancelled", "refunded", "closed"}
BEFORE_SHIPPING = {"created", "deposit_paid", "paid", "allocated", "label_printed"}
AFTER_PAYMENT = {"paid", "allocated", "label_printed", "shipped", "in_transit", "delivered"}
AMOUNT_RE = re.compile(r"^\d+\.\d{2}$")

FIELDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # type: (required field -> python type(s), optional field -> type(s))
    "order": (
        {"order_id": str, "status": str, "channel": str, "source": str},
        {
            "amount": (str, int, float),
            "buyer_id": str,
            "warehouse": str,
            "tracking_no": str,
            "carrier": str,
        },
    ),
    "payment": ({"order_id": str, "pay_no": str, "status": str, "amount": (str, int, float)}, {}),
    "wms": ({"order_id": str, "action": str, "wms_order_no": str, "warehouse": str}, {}),
    "logistics": ({"order_id": str, "tracking_no": str, "carrier": str, "node": str}, {}),
    "access_log": (
        {"route": str, "method": str, "status": int, "latency_ms": (int, float), "service": str},
        {},
    ),
}
ENUMS = {
    "payment": ("status", {"success", "failed", "refunded", "closed"}),
    "wms": ("action", {"outbound_created", "picked", "packed", "shipped", "cancelled"}),
    "logistics": (
        "node",
        {"collected", "in_transit", "out_for_delivery", "delivered", "exception", "returned"},
    ),
}
REQUIRED_ROUTES = {
    ("/api/pay/callback", "POST"),
    ("/api/order/create", "POST"),
    ("/api/inventory/check", "GET"),
    ("/api/order/query", "GET"),
}


def parse_ts(ts: str | int) -> int:
    """Epoch ms of a contract timestamp; raises on a naive or malformed one."""
    if isinstance(ts, int) and not isinstance(ts, bool):
        return ts
    if not isinstance(ts, str):
        raise ValueError(f"not a timestamp: {ts!r}")
    dt = datetime.fromisoformat(ts)
    if dt.tzinfo is None:
        raise ValueError(f"naive timestamp {ts!r}")
    return round(dt.timestamp() * 1000)


def dec(amount: str | float) -> Decimal:
    """An amount as an exact decimal, the way the contract compares them."""
    return Decimal(str(amount))


def schema_errors(ev: dict[str, Any], *, naive_ok: bool = False) -> list[str]:
    """What is wrong with one event against the brief's schema (empty if nothing)."""
    kind = ev.get("type")
    if kind not in FIELDS:
        return [f"unknown type {kind!r}"]
    errors = []
    if not isinstance(ev.get("event_id"), str) or not ev["event_id"]:
        errors.append("event_id")
    try:
        parse_ts(ev["ts"])
    except (KeyError, TypeError, ValueError) as exc:
        if not (naive_ok and isinstance(ev.get("ts"), str)):
            errors.append(f"ts: {exc}")
    required, optional = FIELDS[kind]
    for name, types in required.items():
        value = ev.get(name)
        if not isinstance(value, types) or isinstance(value, bool):
            errors.append(f"{name}={value!r}")
    for name, types in optional.items():
        if name in ev and (not isinstance(ev[name], types) or isinstance(ev[name], bool)):
            errors.append(f"{name}={ev[name]!r}")
    extra = set(ev) - set(required) - set(optional) - {"type", "event_id", "ts"}
    if extra:
        errors.append(f"unexpected fields {sorted(extra)}")
    if kind in ENUMS:
        name, allowed = ENUMS[kind]
        if ev.get(name) not in allowed:
            errors.append(f"{name}={ev.get(name)!r}")
    if kind != "access_log" and not 1 <= len(ev.get("order_id", "")) <= 128:
        errors.append("order_id length")
    if "amount" in ev and isinstance(ev["amount"], str) and not AMOUNT_RE.match(ev["amount"]):
        errors.append(f"amount={ev['amount']!r}")
    if kind == "order":
        status = ev.get("status")
        if status in NATIVE:
            if (ev.get("channel"), "paid") != NATIVE[status]:
                errors.append(f"native status {status!r} from {ev.get('channel')!r}")
        elif status not in CANONICAL:
            errors.append(f"status={status!r}")
    if kind == "access_log":
        if not 100 <= ev["status"] <= 599 or ev["latency_ms"] < 0:
            errors.append("access_log status/latency")
        if ev["method"] not in ("GET", "POST"):
            errors.append(f"method={ev['method']!r}")
    return errors


def canonical(status: str) -> str:
    """The canonical status of a (possibly channel-native) status name."""
    return NATIVE[status][1] if status in NATIVE else status


def by_order(events: list[dict[str, Any]]) -> dict[str, dict[str, list[tuple[int, dict]]]]:
    """order_id -> type -> [(ts ms, event)] in arrival order."""
    orders: dict[str, dict[str, list[tuple[int, dict]]]] = defaultdict(lambda: defaultdict(list))
    for ev in events:
        if ev["type"] != "access_log":
            orders[ev["order_id"]][ev["type"]].append((parse_ts(ev["ts"]), ev))
    return orders


def transition_ok(prev: str, new: str, came_from: str | None) -> bool:
    """The default state machine of CONTRACT §2."""
    if prev == new:
        return True
    if prev in TERMINAL:
        return False
    if new in ("cancelled", "closed"):
        return prev in BEFORE_SHIPPING
    if new == "refund_requested":
        return prev in AFTER_PAYMENT
    if prev == "refund_requested":
        return new == "refunded" or new == came_from
    if prev in FORWARD and new in FORWARD:
        return FORWARD.index(new) > FORWARD.index(prev)
    return False


def healthy_violations(events: list[dict[str, Any]]) -> list[str]:
    """Every way the stream would alert under the contract's example rules, plus demo timings."""
    end = max(parse_ts(ev["ts"]) for ev in events)
    problems: list[str] = []
    for oid, streams in by_order(events).items():
        statuses = [(ts, canonical(ev["status"]), ev) for ts, ev in streams["order"]]
        pays = [(ts, ev) for ts, ev in streams["payment"] if ev["status"] == "success"]
        wms = streams["wms"]
        scans = streams["logistics"]

        def p(msg: str, oid: str = oid) -> None:
            problems.append(f"{oid}: {msg}")

        # transitions, tracking, dwell in sets
        prev, came_from = None, None
        entered: dict[frozenset[str], int | None] = {
            frozenset({"paid"}): None,
            frozenset({"paid", "allocated", "label_printed"}): None,
        }
        limits = {
            frozenset({"paid"}): 30 * MIN,
            frozenset({"paid", "allocated", "label_printed"}): 2 * HOUR,
        }
        for ts, status, ev in statuses:
            if prev is not None and not transition_ok(prev, status, came_from):
                p(f"illegal {prev} -> {status}")
            if status == "shipped" and not ev.get("tracking_no"):
                p("shipped without tracking")
            for group, since in entered.items():
                inside = status in group
                if inside and since is None:
                    entered[group] = ts
                elif not inside and since is not None:
                    if ts - since > limits[group]:
                        p(f"dwell {sorted(group)} {ts - since} ms")
                    entered[group] = None
            if status == "refund_requested" and prev != "refund_requested":
                came_from = prev
            prev = status
        for group, since in entered.items():
            if since is not None and end - since > limits[group]:
                p(f"stuck in {sorted(group)}")
        # logistics_stalled: last_update clock while shipped/in_transit
        updates = sorted([ts for ts, _, _ in statuses] + [ts for ts, _ in wms + scans])
        for ts, status, _ in statuses:
            if status in ("shipped", "in_transit"):
                later = [u for u in updates if u > ts]
                gaps = [b - a for a, b in zip([ts, *later], later, strict=False)]
                if any(g > 48 * HOUR for g in gaps):
                    p("logistics stalled")
        shipped_tracking = {ev.get("tracking_no") for _, s, ev in statuses if s == "shipped"}
        if len(shipped_tracking) > 1:
            p("conflicting tracking")
        # payments: one success (presale: two summing to the payable amount)
        payable = next((dec(ev["amount"]) for _, _, ev in statuses if "amount" in ev), None)
        presale = any(s == "deposit_paid" for _, s, _ in statuses)
        pay_nos = {ev["pay_no"] for _, ev in pays}
        if presale:
            if len(pay_nos) != 2 or sum(dec(ev["amount"]) for _, ev in pays) != payable:
                p("presale payments")
        else:
            if len(pay_nos) > 1:
                p("duplicate payment")
            if any(dec(ev["amount"]) != payable for _, ev in pays):
                p("amount mismatch")
        if pays:
            tp = min(ts for ts, _ in pays)
            ok_wms = [ts for ts, ev in wms if ev["action"] != "cancelled"]
            ends = [ts for ts, s, _ in statuses if s in ("cancelled", "refunded", "closed")]
            deadline = tp + 10 * MIN
            if deadline <= end and not any(ts <= deadline for ts in ok_wms + ends):
                p("paid_without_wms")
            left_created = [ts for ts, s, _ in statuses if s != "created"]
            if tp + 5 * MIN <= end and not any(ts <= tp + 5 * MIN for ts in left_created):
                p("payment_not_applied")
        outbound = [ts for ts, ev in wms if ev["action"] == "outbound_created"]
        if outbound:
            deadline = min(outbound) + 10 * MIN
            if deadline <= end and not any(ts <= deadline for ts, _ in pays):
                p("wms_without_payment")
    return problems


def collect(sim: Simulator, **kwargs: Any) -> list[dict[str, Any]]:
    """All events of a (finite) run."""
    return list(sim.events(**kwargs))


def finite(seed: int = 7, **kwargs: Any) -> Simulator:
    """A run that ends by itself: no access logs, orders only during the first 30 min."""
    params: dict[str, Any] = {
        "seed": seed,
        "start_ms": START,
        "orders_per_minute": 30.0,
        "access_logs_per_second": 0.0,
        "orders_until_ms": START + 30 * MIN,
    }
    params.update(kwargs)
    return Simulator(**params)


def digest(events: list[dict[str, Any]]) -> str:
    """A stable fingerprint of a stream."""
    buf = io.BytesIO()
    write_jsonl(events, buf)
    return hashlib.sha256(buf.getvalue()).hexdigest()


# ---- determinism --------------------------------------------------------------------------------


def test_same_seed_gives_identical_stream() -> None:
    """Two simulators with the same seed and arguments produce byte-identical streams."""
    scen = {"callback_storm": 0.2, "double_ship": 0.01, "duplicate_callback": 0.01}
    a = Simulator(seed=42, start_ms=START, scenarios=scen).events(max_events=30_000)
    b = Simulator(seed=42, start_ms=START, scenarios=scen).events(max_events=30_000)
    assert digest(list(a)) == digest(list(b))


def test_different_seed_gives_different_stream() -> None:
    """Changing only the seed changes the events (ids, times and amounts)."""
    a = list(Simulator(seed=1, start_ms=START).events(max_events=2_000))
    b = list(Simulator(seed=2, start_ms=START).events(max_events=2_000))
    assert digest(a) != digest(b)
    assert {e["event_id"] for e in a}.isdisjoint({e["event_id"] for e in b})


def test_stream_is_identical_across_processes_and_hash_seeds() -> None:
    """The stream does not depend on PYTHONHASHSEED (no set or hash ordering leaks into it)."""
    code = (
        "import hashlib, io; from orderwatch.simulate import Simulator, write_jsonl; "
        f"s = Simulator(seed=5, start_ms={START}, scenarios={{'callback_storm': 0.3, "
        "'allocation_backlog': 0.3, 'status_jump': 0.05}); "
        "b = io.BytesIO(); write_jsonl(s.events(max_events=20000), b); "
        "print(hashlib.sha256(b.getvalue()).hexdigest(), sorted(s.injected.items()))"
    )
    outs = set()
    for hash_seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        res = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
        )
        outs.add(res.stdout)
    assert len(outs) == 1


def test_chunked_consumption_equals_one_pass() -> None:
    """Reading with until_ms/max_events in chunks continues the same stream and ground truth."""
    one = finite(seed=3, scenarios={"double_ship": 0.05})
    whole = collect(one, until_ms=START + 2 * HOUR)
    two = finite(seed=3, scenarios={"double_ship": 0.05})
    parts = collect(two, until_ms=START + 20 * MIN)
    parts += collect(two, max_events=1_000)
    parts += collect(two, until_ms=START + 2 * HOUR)
    assert parts == whole
    assert one.injected == two.injected
    assert collect(two, until_ms=START + 2 * HOUR) == []


def test_timed_events_arrival_is_monotonic_and_respects_until() -> None:
    """timed_events gives non-decreasing arrival times, none after until_ms."""
    sim = Simulator(seed=9, start_ms=START)
    arrivals = [a for a, _ in sim.timed_events(until_ms=START + 5 * MIN)]
    assert arrivals == sorted(arrivals)
    assert arrivals[-1] <= START + 5 * MIN
    assert arrivals[0] >= START - 20 * SEC


# ---- schema -------------------------------------------------------------------------------------


def test_every_event_matches_the_schema_with_all_scenarios_on() -> None:
    """Every event has the brief's fields and types; only naive_timestamp events lack an offset."""
    scen = {name: 0.02 for name in SCENARIOS}
    scen.update(callback_storm=0.3, allocation_backlog=0.3, wrong_offset=0.002)
    sim = Simulator(seed=11, start_ms=START, scenarios=scen)
    events = collect(sim, until_ms=START + 40 * MIN)
    naive_orders = set(sim.injected["naive_timestamp"])
    assert naive_orders
    bad = []
    naive_seen = 0
    for ev in events:
        naive_ok = ev["type"] == "wms" and ev["order_id"] in naive_orders
        errors = schema_errors(ev, naive_ok=naive_ok)
        if errors:
            bad.append((ev, errors))
        if naive_ok:
            assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", ev["ts"]), ev
            naive_seen += 1
    assert not bad, bad[:5]
    assert naive_seen
    assert len({e["event_id"] for e in events}) < len(events)  # duplicate callbacks only
    types = {e["type"] for e in events}
    assert types == set(FIELDS)
    routes = {(e["route"], e["method"]) for e in events if e["type"] == "access_log"}
    assert routes >= REQUIRED_ROUTES


def test_timestamp_styles_per_source() -> None:
    """OMS/WMS/nginx stamp +08:00, the payment gateway Z, the carrier integer milliseconds."""
    events = collect(finite(seed=4, access_logs_per_second=5.0), until_ms=START + 3 * HOUR)
    for ev in events:
        ts = ev["ts"]
        if ev["type"] == "logistics":
            assert isinstance(ts, int)
        elif ev["type"] == "payment":
            assert ts.endswith("Z") and len(ts) == 24, ts
        else:
            assert ts.endswith("+08:00") and len(ts) == 29, ts


def test_amount_representations_and_status_names() -> None:
    """Amounts are mostly decimal strings, sometimes numbers; native names only tmall/pos `paid`."""
    events = collect(finite(seed=5, orders_per_minute=60.0), until_ms=START + 40 * MIN)
    amounts = [e["amount"] for e in events if e["type"] == "order" and "amount" in e]
    numbers = sum(not isinstance(a, str) for a in amounts)
    assert 0 < numbers < 0.15 * len(amounts)
    statuses = [e for e in events if e["type"] == "order"]
    native = [e for e in statuses if e["status"] in NATIVE]
    assert native and len(native) < 0.05 * len(statuses)
    assert all(NATIVE[e["status"]][0] == e["channel"] for e in native)
    sources = {e["source"] for e in statuses}
    assert {"oms", "erp"} <= sources


def test_write_jsonl_round_trips() -> None:
    """write_jsonl writes one compact JSON object per line and returns the count."""
    events = list(Simulator(seed=6, start_ms=START).events(max_events=5_000))
    buf = io.BytesIO()
    assert write_jsonl(iter(events), buf) == 5_000
    lines = buf.getvalue().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 5_001
    assert [orjson.loads(line) for line in lines[:-1]] == events
    assert b", " not in lines[0] and b": " not in lines[0]


# ---- arrival order ------------------------------------------------------------------------------


@pytest.mark.parametrize("disorder", [0, 5_000, 20_000])
def test_arrival_disorder_is_bounded(disorder: int) -> None:
    """Async events arrive within max_disorder_ms of their place among order events."""
    sim = Simulator(
        seed=13,
        start_ms=START,
        max_disorder_ms=disorder,
        scenarios={"duplicate_callback": 0.05},
    )
    max_order_ts = max_async_ts = -(10**15)
    last_order_ts: dict[str, int] = {}
    lateness_seen = 0
    for arrival, ev in sim.timed_events(until_ms=START + 30 * MIN):
        ts = parse_ts(ev["ts"])
        if ev["type"] in ("order", "access_log"):
            assert arrival == ts
        else:
            assert abs(arrival - ts) <= disorder
        if ev["type"] == "order":
            assert ts >= max_async_ts - disorder
            assert ts >= last_order_ts.get(ev["order_id"], ts)
            last_order_ts[ev["order_id"]] = ts
            max_order_ts = max(max_order_ts, ts)
        elif ev["type"] != "access_log":
            assert ts >= max_order_ts - disorder
            lateness_seen = max(lateness_seen, max_order_ts - ts)
            max_async_ts = max(max_async_ts, ts)
    if disorder:
        assert lateness_seen > disorder // 2  # the jitter really uses the allowed range
    else:
        assert lateness_seen <= 0


# ---- healthy journeys ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def healthy_events() -> list[dict[str, Any]]:
    """A complete fault-free run: 30 min of orders, every journey run to its end."""
    return collect(finite(seed=21, orders_per_minute=60.0))


def test_healthy_run_triggers_no_example_rule(healthy_events: list[dict[str, Any]]) -> None:
    """Without scenarios no order breaks the contract's example rules or state machine."""
    assert len(healthy_events) > 20_000
    assert healthy_violations(healthy_events) == []


def test_healthy_run_journey_mix(healthy_events: list[dict[str, Any]]) -> None:
    """The fault-free mix has ~8 % unpaid, ~3 % presale and a few refunds and cancellations."""
    finals: dict[str, list[str]] = defaultdict(list)
    for ev in healthy_events:
        if ev["type"] == "order":
            finals[ev["order_id"]].append(canonical(ev["status"]))
    n = len(finals)
    unpaid = sum(s == ["created", "closed"] for s in finals.values())
    presale = sum("deposit_paid" in s for s in finals.values())
    refunded = sum(s[-1] == "refunded" for s in finals.values())
    cancelled = sum(s[-1] == "cancelled" for s in finals.values())
    completed = sum(s[-1] == "completed" for s in finals.values())
    assert 0.05 * n < unpaid < 0.11 * n
    assert 0.01 * n < presale < 0.05 * n
    assert 0 < refunded < 0.03 * n and 0 < cancelled < 0.03 * n
    assert completed > 0.83 * n
    nodes = {e["node"] for e in healthy_events if e["type"] == "logistics"}
    assert {"collected", "in_transit", "out_for_delivery", "delivered", "returned"} <= nodes


def test_healthy_run_obeys_demo_timings(healthy_events: list[dict[str, Any]]) -> None:
    """Journeys keep the brief's step timings, so a tighter demo config stays silent too."""
    for oid, s in by_order(healthy_events).items():
        order = {canonical(ev["status"]): ts for ts, ev in s["order"]}
        pays = sorted(ts for ts, ev in s["payment"] if ev["status"] == "success")
        wms = {ev["action"]: ts for ts, ev in s["wms"]}
        nodes: dict[str, list[int]] = defaultdict(list)
        for ts, ev in s["logistics"]:
            nodes[ev["node"]].append(ts)
        if set(order) == {"created", "closed"}:
            assert 10 * MIN <= order["closed"] - order["created"] <= 15 * MIN, oid
            assert not pays and not wms, oid
            continue
        assert 5 * SEC <= pays[0] - order["created"] <= 3 * MIN, oid
        if "deposit_paid" in order:
            assert len(pays) == 2 and 1 * MIN <= pays[1] - order["deposit_paid"] <= 4 * MIN, oid
        assert -4 * SEC <= order["paid"] - pays[-1] <= 20 * SEC, oid
        if "allocated" not in order:
            continue
        assert 30 * SEC <= order["allocated"] - order["paid"] <= 4 * MIN, oid
        assert 0 <= wms["outbound_created"] - order["allocated"] <= 3 * SEC, oid
        assert wms["outbound_created"] - pays[0] <= 10 * MIN, oid
        if "label_printed" not in order:
            continue
        assert 1 * MIN <= order["label_printed"] - order["allocated"] <= 8 * MIN, oid
        steps = (wms["picked"], wms["packed"], wms["shipped"], order["shipped"])
        assert all(step - order["allocated"] <= 40 * MIN for step in steps), oid
        assert order["shipped"] - order["allocated"] >= 10 * MIN, oid
        assert nodes["collected"][0] - order["allocated"] <= 40 * MIN, oid
        transit = nodes["in_transit"] + nodes["exception"]
        assert 0 < order["in_transit"] - min(transit) <= 2 * MIN, oid
        scans = sorted(nodes["collected"] + transit + nodes["out_for_delivery"])
        assert all(20 * MIN <= b - a <= 90 * MIN for a, b in itertools.pairwise(scans[:-1]))
        if "delivered" in order:
            assert 3 * HOUR <= nodes["delivered"][0] - order["shipped"] <= 12 * HOUR, oid
            assert 1 * HOUR <= order["completed"] - order["delivered"] <= 6 * HOUR, oid


@pytest.mark.parametrize(
    ("name", "symptom"),
    [
        ("wms_push_lost", "paid_without_wms"),
        ("callback_delay", "payment_not_applied"),
        ("logistics_stall", "logistics stalled"),
        ("double_ship", "conflicting tracking"),
        ("ship_without_tracking", "shipped without tracking"),
        ("status_jump", "illegal delivered -> paid"),
        ("amount_mismatch", "amount mismatch"),
        ("duplicate_payment", "duplicate payment"),
        ("unpaid_shipment", "wms_without_payment"),
    ],
)
def test_rule_checker_flags_exactly_the_injected_orders(name: str, symptom: str) -> None:
    """The checker used above is not blind: it flags each alerting scenario's orders, only them."""
    sim = finite(seed=23, orders_until_ms=START + 15 * MIN, scenarios={name: 0.05})
    problems = healthy_violations(collect(sim))
    injected = set(sim.injected[name])
    assert injected
    assert {p.split(":")[0] for p in problems if symptom in p} == injected
    assert {p.split(":")[0] for p in problems} == injected


def test_no_duplicate_event_ids_without_duplicate_callbacks(
    healthy_events: list[dict[str, Any]],
) -> None:
    """Without the duplicate_callback scenario every event_id is unique."""
    ids = [e["event_id"] for e in healthy_events]
    assert len(ids) == len(set(ids))


# ---- memory -------------------------------------------------------------------------------------


def test_memory_stays_bounded_while_streaming() -> None:
    """Streaming 200k events peaks far below what holding them in a list takes."""
    tracemalloc.start()
    try:
        sim = Simulator(seed=17, start_ms=START)
        kept = list(sim.events(max_events=20_000))
        with_list = tracemalloc.get_traced_memory()[0]
        del kept
        list_cost_per_event = (with_list - tracemalloc.get_traced_memory()[0]) / 20_000
        del sim
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        sim = Simulator(seed=17, start_ms=START)
        n = 0
        for _ in sim.events(max_events=200_000):
            n += 1
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert n == 200_000
    assert peak < 0.25 * list_cost_per_event * n, (peak, list_cost_per_event)


def test_finished_run_leaves_nothing_behind() -> None:
    """Once every journey has ended, what the simulator holds does not grow with the order count."""

    def held_after(minutes: int) -> tuple[int, int]:
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            sim = finite(seed=19, orders_per_minute=120.0, orders_until_ms=START + minutes * MIN)
            for _ in sim.events():
                pass
            return tracemalloc.get_traced_memory()[0] - base, sim.orders_created
        finally:
            tracemalloc.stop()

    small, n_small = held_after(10)
    big, n_big = held_after(40)
    assert n_big > 4_000 and n_big > 3 * n_small
    # A leaked Journey (or pending event) costs 300+ bytes per order; what may grow is the
    # calendar's dict table and the timestamp caches, both bounded by time, not by orders.
    assert big - small < 150 * (n_big - n_small), (small, big)


# ---- API ----------------------------------------------------------------------------------------


def test_scenario_catalogue_and_validation() -> None:
    """SCENARIOS names the 14 scenarios; unknown names and bad shares are rejected."""
    assert set(SCENARIOS) == {
        "wms_push_lost",
        "callback_storm",
        "callback_delay",
        "logistics_stall",
        "double_ship",
        "ship_without_tracking",
        "status_jump",
        "amount_mismatch",
        "duplicate_callback",
        "duplicate_payment",
        "unpaid_shipment",
        "naive_timestamp",
        "wrong_offset",
        "allocation_backlog",
    }
    assert all(isinstance(d, str) and d for d in SCENARIOS.values())
    with pytest.raises(ValueError, match="unknown scenario"):
        Simulator(start_ms=START, scenarios={"wms_lost": 0.1})
    with pytest.raises(ValueError, match=r"0\.\.1"):
        Simulator(start_ms=START, scenarios={"double_ship": 1.5})
    with pytest.raises(ValueError, match="add up"):
        Simulator(start_ms=START, scenarios={"double_ship": 0.6, "status_jump": 0.6})
    with pytest.raises(ValueError):
        Simulator(start_ms=START, max_disorder_ms=-1)


def test_injected_lists_enabled_scenarios_only() -> None:
    """injected has a key per enabled scenario and grows as signature events are emitted."""
    sim = finite(seed=2, scenarios={"double_ship": 0.05, "status_jump": 0.0})
    assert sim.injected == {"double_ship": []}
    collect(sim, until_ms=START + 60 * MIN)
    assert set(sim.injected) == {"double_ship"} and sim.injected["double_ship"]
    assert Simulator(start_ms=START).injected == {}


def test_zero_rates_end_the_stream() -> None:
    """With no orders and no access logs the stream is empty; rates scale the volume."""
    assert collect(Simulator(start_ms=START, orders_per_minute=0, access_logs_per_second=0)) == []
    logs = collect(
        Simulator(start_ms=START, orders_per_minute=0, access_logs_per_second=50.0),
        until_ms=START + 60 * SEC,
    )
    assert 2_400 < len(logs) < 3_600 and {e["type"] for e in logs} == {"access_log"}
