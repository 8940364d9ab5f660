"""Each fault scenario, switched on alone, shows its signature and lists exactly its ids.

For the per-order faults the signature is checked both ways: every id in ``injected`` shows it,
and no other order does (a fault-free journey never looks like a fault).
"""

from __future__ import annotations

import itertools
from collections import Counter, defaultdict
from datetime import datetime
from decimal import Decimal
from typing import Any

import pytest

from orderwatch.simulate import Simulator

START = 1_794_326_400_000  # 2026-11-11T00:00:00+08:00 (双11)
SEC, MIN, HOUR = 1_000, 60_000, 3_600_000
PAID_NAMES = {"paid", "WAIT_SELLER_SEND_GOODS", "已付款"}

Events = list[dict[str, Any]]
Orders = dict[str, dict[str, list[tuple[int, dict[str, Any]]]]]


def ts_ms(ts: str | int, *, naive_as_beijing: bool = False) -> int:
    """Epoch ms of a timestamp (a naive one read as Beijing time only when asked)."""
    if isinstance(ts, int):
        return ts
    if naive_as_beijing and len(ts) == 19:
        ts += "+08:00"
    dt = datetime.fromisoformat(ts)
    assert dt.tzinfo is not None, ts
    return round(dt.timestamp() * 1000)


def group(events: Events) -> Orders:
    """order_id -> type -> [(ts ms, event)] in arrival order (naive stamps read as +08:00)."""
    orders: Orders = defaultdict(lambda: defaultdict(list))
    for ev in events:
        if ev["type"] != "access_log":
            ts = ts_ms(ev["ts"], naive_as_beijing=True)
            orders[ev["order_id"]][ev["type"]].append((ts, ev))
    return orders


def status_of(ev: dict[str, Any]) -> str:
    return "paid" if ev["status"] in PAID_NAMES else ev["status"]


def successes(o: dict[str, list[tuple[int, dict[str, Any]]]]) -> list[tuple[int, dict]]:
    return [(ts, ev) for ts, ev in o["payment"] if ev["status"] == "success"]


def run(name: str, share: float, *, until_ms: int | None = None, **kwargs: Any) -> tuple:
    """Run one scenario alone: 30 min of orders at 60/min, to the end or ``until_ms``."""
    params: dict[str, Any] = {
        "seed": 101,
        "start_ms": START,
        "orders_per_minute": 60.0,
        "access_logs_per_second": 0.0,
        "orders_until_ms": START + 30 * MIN,
        "scenarios": {name: share},
    }
    params.update(kwargs)
    sim = Simulator(**params)
    events = list(sim.events(until_ms=until_ms))
    injected = sim.injected
    assert set(injected) == {name}
    return sim, events, group(events), set(injected[name])


def test_wms_push_lost() -> None:
    """漏发: paid orders with no WMS event at all for hours, and only those."""
    _, _, orders, ids = run("wms_push_lost", 0.05, until_ms=START + 100 * MIN)
    assert len(ids) > 40
    lost = set()
    for oid, o in orders.items():
        pays = successes(o)
        statuses = [status_of(ev) for _, ev in o["order"]]
        if pays and not o["wms"] and statuses[-1] == "paid":
            assert START + 100 * MIN - pays[0][0] > 60 * MIN  # 1 h and more without WMS
            lost.add(oid)
    assert lost == ids
    for oid in ids:
        assert successes(orders[oid]) and not orders[oid]["wms"]
        assert [status_of(ev) for _, ev in orders[oid]["order"]][-1] == "paid"


def test_wms_push_lost_is_repushed_hours_later() -> None:
    """The lost push is redone by hand 3-6 h after `paid`; the order then ships normally."""
    _, _, orders, ids = run("wms_push_lost", 0.05, orders_until_ms=START + 10 * MIN)
    assert ids
    for oid in ids:
        at = {status_of(ev): ts for ts, ev in orders[oid]["order"]}
        assert 3 * HOUR <= at["allocated"] - at["paid"] <= 6 * HOUR + 1
        assert "completed" in at


def test_callback_storm() -> None:
    """回调积压: x20 callback QPS with 1-5 s latency and 5xx inside windows; callbacks delayed."""
    sim, events, orders, ids = run(
        "callback_storm", 0.15, access_logs_per_second=20.0, until_ms=START + 40 * MIN
    )
    assert ids == {"/api/pay/callback"}
    windows = sim.windows["callback_storm"]
    assert windows and 2 * MIN <= windows[0][0] - START <= 5 * MIN
    assert all(3 * MIN <= end - begin <= 8 * MIN for begin, end in windows)

    def inside(ts: int) -> bool:
        return any(begin <= ts < end for begin, end in windows)

    logs = [e for e in events if e["type"] == "access_log" and e["route"] == "/api/pay/callback"]
    stormy = [e for e in logs if inside(ts_ms(e["ts"]))]
    calm = [e for e in logs if not inside(ts_ms(e["ts"]))]
    storm_ms = sum(min(end, START + 40 * MIN) - begin for begin, end in windows)
    calm_ms = 40 * MIN - storm_ms
    assert len(stormy) / storm_ms > 12 * len(calm) / calm_ms
    assert all(e["latency_ms"] >= 1_000 for e in stormy)
    assert all(e["latency_ms"] < 1_000 for e in calm)
    errors = Counter(e["status"] for e in stormy if e["status"] >= 500)
    assert errors[504] > 0.25 * len(stormy) and sum(errors.values()) < 0.7 * len(stormy)
    # Order callbacks due inside a window come 2-8 min late; the `paid` update follows them.
    late = 0
    for o in orders.values():
        pays = successes(o)
        if not pays:
            continue
        created = o["order"][0][0]
        delay = pays[0][0] - created
        if delay > 3 * MIN:
            late += 1
            assert delay < 11 * MIN
            assert any(b < created + 3 * MIN and created + 5 * SEC < e for b, e in windows)
        paid = [ts for ts, ev in o["order"] if status_of(ev) in ("paid", "deposit_paid")]
        assert paid and paid[0] - pays[0][0] <= 20 * SEC
    assert late > 20


def test_callback_delay() -> None:
    """Paid but still 待付款: the callback lands 6-15 min after creation, `paid` 6-8 min later."""
    _, _, orders, ids = run("callback_delay", 0.05)
    assert len(ids) > 40
    slow = set()
    for oid, o in orders.items():
        pays = successes(o)
        paid = [ts for ts, ev in o["order"] if status_of(ev) == "paid"]
        if pays and paid and paid[0] - pays[0][0] >= 5 * MIN:
            slow.add(oid)
    assert slow == ids
    for oid in ids:
        o = orders[oid]
        callback = successes(o)[0][0]
        assert 6 * MIN <= callback - o["order"][0][0] <= 15 * MIN
        paid_at = next(ts for ts, ev in o["order"] if status_of(ev) == "paid")
        assert 6 * MIN <= paid_at - callback <= 8 * MIN
        outbound = next(ts for ts, ev in o["wms"] if ev["action"] == "outbound_created")
        assert outbound - callback < 10 * MIN  # only payment_not_applied, not paid_without_wms


def test_logistics_stall() -> None:
    """物流停滞: no event about the order for 50-80 h after its first in_transit, then delivery."""
    _, _, orders, ids = run("logistics_stall", 0.05)
    assert len(ids) > 40
    stalled = set()
    for oid, o in orders.items():
        times = sorted(ts for kind in ("order", "wms", "logistics") for ts, _ in o[kind])
        gaps = [b - a for a, b in itertools.pairwise(times)]
        if gaps and max(gaps) > 48 * HOUR:
            stalled.add(oid)
            biggest = max(gaps)
            assert 50 * HOUR <= biggest <= 80 * HOUR
            before = [ev for ts, ev in o["order"] if ts < times[gaps.index(biggest) + 1]]
            assert status_of(before[-1]) == "in_transit"
            assert status_of(o["order"][-1][1]) == "completed"
    assert stalled == ids


def test_double_ship() -> None:
    """双击发货: a second `shipped` with another tracking_no 2-30 s after the first."""
    _, _, orders, ids = run("double_ship", 0.05)
    assert len(ids) > 40
    doubled = set()
    for oid, o in orders.items():
        shipped = [(ts, ev) for ts, ev in o["order"] if ev["status"] == "shipped"]
        if len(shipped) > 1:
            doubled.add(oid)
            (t1, e1), (t2, e2) = shipped
            assert e1["tracking_no"] != e2["tracking_no"] and 2 * SEC <= t2 - t1 <= 30 * SEC
            assert {ev["tracking_no"] for _, ev in o["logistics"]} == {e1["tracking_no"]}
    assert doubled == ids


def test_ship_without_tracking() -> None:
    """状态错乱: `shipped` without tracking_no; the carrier still scans the parcel."""
    _, _, orders, ids = run("ship_without_tracking", 0.05)
    assert len(ids) > 40
    bare = {
        oid
        for oid, o in orders.items()
        if any(ev["status"] == "shipped" and "tracking_no" not in ev for _, ev in o["order"])
    }
    assert bare == ids
    assert all(orders[oid]["logistics"] for oid in ids)


def test_status_jump() -> None:
    """状态跳变: `paid` after `delivered` (illegal), then `delivered` again, then `completed`."""
    _, _, orders, ids = run("status_jump", 0.05)
    assert len(ids) > 40
    jumped = set()
    for oid, o in orders.items():
        seq = [status_of(ev) for _, ev in o["order"]]
        if "delivered" in seq and "paid" in seq[seq.index("delivered") :]:
            jumped.add(oid)
            assert seq[-4:] == ["delivered", "paid", "delivered", "completed"]
            jump = next(ev for _, ev in o["order"][-3:] if ev["status"] == "paid")
            assert jump["source"] == "erp"
    assert jumped == ids


def test_amount_mismatch() -> None:
    """对账差异: the successful payment differs from the payable amount, mostly by 37.80."""
    _, _, orders, ids = run("amount_mismatch", 0.05)
    assert len(ids) > 40
    diffs = {}
    for oid, o in orders.items():
        payable = Decimal(str(o["order"][0][1]["amount"]))
        paid = [Decimal(ev["amount"]) for _, ev in successes(o)]
        if len(paid) == 1 and paid[0] != payable:
            diffs[oid] = abs(paid[0] - payable)
    assert set(diffs) == ids
    assert sum(d == Decimal("37.80") for d in diffs.values()) > 0.6 * len(diffs)


def test_duplicate_callback() -> None:
    """重复回调: the same callback (same event_id, same content) 2-4 times; one pay_no only."""
    _, events, orders, ids = run("duplicate_callback", 0.05)
    assert len(ids) > 40
    copies: dict[str, list[dict]] = defaultdict(list)
    for ev in events:
        copies[ev["event_id"]].append(ev)
    repeated = {eid: evs for eid, evs in copies.items() if len(evs) > 1}
    assert {evs[0]["order_id"] for evs in repeated.values()} == ids
    for evs in repeated.values():
        assert 2 <= len(evs) <= 4 and all(ev == evs[0] for ev in evs)
        assert evs[0]["type"] == "payment" and evs[0]["status"] == "success"
    for oid in ids:
        assert len({ev["pay_no"] for _, ev in successes(orders[oid])}) == 1


def test_duplicate_payment() -> None:
    """重复支付: two successful payments with different pay_no (presale orders aside)."""
    _, _, orders, ids = run("duplicate_payment", 0.05)
    assert len(ids) > 40
    twice = set()
    for oid, o in orders.items():
        presale = any(ev["status"] == "deposit_paid" for _, ev in o["order"])
        pays = successes(o)
        if not presale and len({ev["pay_no"] for _, ev in pays}) > 1:
            twice.add(oid)
            assert len(pays) == 2 and pays[0][1]["amount"] == pays[1][1]["amount"]
    assert twice == ids


def test_unpaid_shipment() -> None:
    """A WMS outbound for an order never paid; it is closed and the WMS order cancelled."""
    _, _, orders, ids = run("unpaid_shipment", 0.05)
    assert len(ids) > 40
    unpaid = {oid for oid, o in orders.items() if o["wms"] and not successes(o)}
    assert unpaid == ids
    for oid in ids:
        o = orders[oid]
        assert [ev["status"] for _, ev in o["order"]] == ["created", "closed"]
        actions = [ev["action"] for _, ev in sorted(o["wms"], key=lambda p: p[0])]
        assert actions == ["outbound_created", "picked", "cancelled"]
        outbound = o["wms"][0][0]
        assert o["order"][1][0] - outbound > 10 * MIN  # wms_without_payment fires first


def test_naive_timestamp() -> None:
    """时区事故: the legacy WMS of the last warehouse stamps Beijing time with no offset."""
    _, events, orders, ids = run("naive_timestamp", 0.05)
    assert len(ids) > 40
    naive = {e["order_id"] for e in events if isinstance(e["ts"], str) and len(e["ts"]) == 19}
    assert naive == ids
    for e in events:
        if e["order_id"] in ids and e["type"] == "wms":
            assert len(e["ts"]) == 19 and e["warehouse"] == "WH-CD-04"
        elif isinstance(e["ts"], str):
            ts_ms(e["ts"])  # everything else keeps its offset
    for oid in ids:  # read as +08:00 the naive stamps are the true instants
        o = orders[oid]
        at = {status_of(ev): ts for ts, ev in o["order"]}
        outbound = next(ts for ts, ev in o["wms"] if ev["action"] == "outbound_created")
        assert -1 * SEC < outbound - at["allocated"] <= 3 * SEC  # second precision


def test_wrong_offset() -> None:
    """时区事故: payment callbacks stamped with Beijing wall-clock and `Z`, 8 h in the future."""
    _, _, orders, ids = run("wrong_offset", 0.01)
    assert 5 <= len(ids) < 40
    future = set()
    for oid, o in orders.items():
        created = o["order"][0][0]
        for ts, ev in successes(o):
            if ts - created > HOUR:
                future.add(oid)
                assert 8 * HOUR + 5 * SEC <= ts - created <= 8 * HOUR + 3 * MIN
                assert ev["ts"].endswith("Z")
        if oid in ids:  # only the payment gateway is affected
            assert START <= created < START + 30 * MIN
            assert all(ts - created < 6 * MIN for ts, _ in o["order"][:2])
    assert future == ids


def test_allocation_backlog() -> None:
    """待分仓积压: in the backlog windows allocated orders wait 10-30 min for their label."""
    sim, _, orders, ids = run("allocation_backlog", 0.3)
    windows = sim.windows["allocation_backlog"]
    assert windows and 4 * MIN <= windows[0][0] - START <= 8 * MIN
    assert len(ids) > 200  # a burst: hundreds of orders in `allocated` at once
    slow = set()
    for oid, o in orders.items():
        at = {status_of(ev): ts for ts, ev in o["order"]}
        if "label_printed" in at:
            wait = at["label_printed"] - at["allocated"]
            in_window = any(b <= at["allocated"] < e for b, e in windows)
            assert (10 * MIN <= wait <= 30 * MIN) if in_window else (wait <= 8 * MIN)
            if in_window:
                slow.add(oid)
                assert at["shipped"] - at["paid"] < 2 * HOUR  # no paid_not_shipped
    labelled = {
        oid
        for oid, o in orders.items()
        if any(e["status"] == "label_printed" for _, e in o["order"])
    }
    assert slow == ids & labelled


@pytest.mark.parametrize(
    "name", ["double_ship", "status_jump", "logistics_stall", "duplicate_callback"]
)
def test_shares_are_respected(name: str) -> None:
    """A share of 0.05 faults about 5 % of the orders."""
    sim, _, _, ids = run(name, 0.05, orders_until_ms=START + 60 * MIN)
    assert 0.03 * sim.orders_created < len(ids) < 0.07 * sim.orders_created
