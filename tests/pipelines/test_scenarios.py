"""Each simulator scenario, replayed through the real dataflow, raises the alert it is meant to."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson
import pytest

from orderwatch.config import load_config, validate_config
from orderwatch.replay import Summary, run_here
from orderwatch.simulate import Simulator, write_jsonl
from tests.factories import BASE, HOUR

CONTRACT = load_config("examples/orderwatch.yaml")
BACKLOG_RULES = validate_config(
    {
        "rules": {
            "stuck": [{"name": "allocation_backlog", "statuses": ["allocated"], "max_dwell": "10m"}]
        }
    }
)
DAY = 24 * HOUR


def replay(
    tmp: Path, scenario: str | None, share: float, cfg=CONTRACT, days: float = 1.2
) -> tuple[dict[str, set[str]], Summary, dict[str, list[str]]]:
    """Simulate 2 h of orders (then let them finish), replay, and group alerts by rule."""
    sim = Simulator(
        seed=7,
        start_ms=BASE,
        orders_per_minute=4,
        scenarios={scenario: share} if scenario else {},
        orders_until_ms=BASE + 2 * HOUR,
        access_logs_per_second=0.5,
    )
    tmp.mkdir(parents=True, exist_ok=True)
    events = tmp / "events.jsonl"
    with events.open("wb") as f:
        write_jsonl(sim.events(until_ms=BASE + int(days * DAY)), f)
    out = tmp / "alerts.jsonl"
    summary = run_here(events, cfg, out, tmp / "dead.jsonl")
    by_rule: dict[str, set[str]] = defaultdict(set)
    for line in out.read_bytes().splitlines():
        a = orjson.loads(line)
        if a["status"] == "firing":
            by_rule[a["labels"]["rule"]].add(a["labels"].get("order_id", ""))
    return by_rule, summary, dict(sim.injected)


def test_healthy_traffic_raises_nothing(tmp_path: Path) -> None:
    """Without faults, the contract's rules stay silent on a realistic stream."""
    by_rule, summary, _ = replay(tmp_path, None, 0)
    assert summary.events_total > 10_000
    assert dict(by_rule) == {}
    assert summary.rejected == {}


@pytest.mark.parametrize(
    ("scenario", "rules"),
    [
        ("wms_push_lost", {"paid_without_wms", "paid_not_allocated", "paid_not_shipped"}),
        ("callback_delay", {"payment_not_applied"}),
        ("logistics_stall", {"logistics_stalled"}),
        ("double_ship", {"conflicting_tracking"}),
        ("ship_without_tracking", {"shipped_without_tracking"}),
        ("status_jump", {"illegal_transition"}),
        ("amount_mismatch", {"amount_mismatch"}),
        ("duplicate_payment", {"duplicate_payment"}),
        ("unpaid_shipment", {"wms_without_payment"}),
    ],
)
def test_scenario_raises_its_alert_for_exactly_its_orders(
    tmp_path: Path, scenario: str, rules: set[str]
) -> None:
    """The scenario's rule(s) fire for the injected orders and for no other."""
    days = 4.5 if scenario == "logistics_stall" else 1.2  # a stall resumes after 50-80 h
    by_rule, _, injected = replay(tmp_path, scenario, 0.05, days=days)
    hit = set(injected[scenario])
    assert len(hit) >= 5
    for rule in rules:
        assert by_rule[rule] == hit, rule


def test_duplicate_callbacks_are_dropped_without_alerts(tmp_path: Path) -> None:
    """Redelivered callbacks are counted as duplicates and change nothing."""
    by_rule, summary, injected = replay(tmp_path, "duplicate_callback", 0.1)
    assert len(injected["duplicate_callback"]) >= 5
    assert summary.duplicates >= len(injected["duplicate_callback"])
    assert dict(by_rule) == {}


def test_naive_timestamps_are_dead_lettered(tmp_path: Path) -> None:
    """A system without offsets is rejected line by line; the rest still runs."""
    by_rule, summary, _ = replay(tmp_path, "naive_timestamp", 0.05)
    assert summary.rejected["naive_timestamp"] > 0
    assert set(by_rule) <= {"paid_without_wms", "paid_not_allocated", "paid_not_shipped"}
    dead = [orjson.loads(x) for x in (tmp_path / "dead.jsonl").read_bytes().splitlines()]
    assert {d["reason"] for d in dead} == {"naive_timestamp"}


def _error_share(summary: Summary, route: str) -> float:
    total = sum(n for k, n in summary.http.items() if k.startswith(route + " "))
    return summary.http[f"{route} 5xx"] / total


def test_callback_storm_shows_in_access_log_traffic(tmp_path: Path) -> None:
    """A callback storm is visible as many more 5xx replies on /api/pay/callback."""
    _, calm, _ = replay(tmp_path / "calm", None, 0, days=0.2)
    _, storm, injected = replay(tmp_path / "storm", "callback_storm", 0.3, days=0.2)
    assert injected["callback_storm"] == ["/api/pay/callback"]
    route = "/api/pay/callback"
    assert _error_share(storm, route) > 3 * _error_share(calm, route)
    assert sum(n for k, n in storm.http.items() if k.startswith(route)) > 2 * sum(
        n for k, n in calm.http.items() if k.startswith(route)
    )


def test_allocation_backlog_trips_a_backlog_rule(tmp_path: Path) -> None:
    """Orders waiting 10-30 min in `allocated` fire a 10 min allocation rule."""
    by_rule, _, injected = replay(tmp_path, "allocation_backlog", 0.3, cfg=BACKLOG_RULES, days=0.5)
    assert len(by_rule["allocation_backlog"]) >= 3
    assert injected["allocation_backlog"]
