"""bench/plain_rules.py, an independent plain-Python implementation, agrees with orderwatch."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from hypothesis import given, settings

from bench.plain_rules import fingerprint, run
from orderwatch.config import validate_config
from orderwatch.connectors.raw import RawChunk
from orderwatch.domain.alert import AlertChange
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from orderwatch.domain.watermark import WatermarkClock
from orderwatch.events import Decoder
from orderwatch.pipelines.orders import ShardLogic
from orderwatch.pipelines.route import DEAD_LETTER_KEY, Router
from orderwatch.runtime import Runtime
from tests.factories import MIN, order, payment, wms
from tests.strategies import RULES, STATUS_MAP, adversarial_streams, streams
from tests.unit.test_properties import reference

ROOT = Path(__file__).resolve().parents[2]
# The same config as tests.strategies.rules_config(), as the plain dict a YAML file gives.
RAW_CFG: dict[str, Any] = {
    "rules": RULES,
    "lateness": "60s",
    "engine": {"terminal_retention": "30m"},
    "status_map": STATUS_MAP,
}


def comparable(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Everything but the wording."""
    return [{k: v for k, v in a.items() if k != "annotations"} for a in alerts]


def as_dicts(changes: list[AlertChange]) -> list[dict[str, Any]]:
    return comparable([orjson.loads(orjson.dumps(c.to_json())) for c in changes])


def orderwatch_routed(raw_cfg: dict[str, Any], lines: list[bytes]) -> list[dict[str, Any]]:
    """As test_properties.through_router, for any config: the real router and shard logic."""
    cfg = validate_config(raw_cfg)
    runtime = Runtime(shards=cfg.engine.shards)
    router = Router(Decoder(cfg.status_map), runtime, lateness_ms=cfg.lateness)
    logics: dict[str, ShardLogic] = {}
    out: list[AlertChange] = []
    for key, item in router.route(RawChunk("t", 1, lines)):
        if key == DEAD_LETTER_KEY:
            continue
        if key not in logics:
            tracker = ShardTracker(RuleSet.from_config(cfg))
            logics[key] = ShardLogic(tracker, WatermarkClock(cfg.lateness), runtime, lambda: 0)
        out.extend(logics[key].on_batch([item])[0])
    for logic in logics.values():
        out.extend(logic.on_eof()[0])
    return as_dicts(sorted(out, key=AlertChange.sort_key))


@settings(max_examples=100, deadline=None)
@given(lines=streams())
def test_plain_script_equals_orderwatch(lines: list[bytes]) -> None:
    """Same stream, same config: exactly the alert changes orderwatch gives, in its order."""
    assert comparable(run(lines, RAW_CFG)) == as_dicts(reference(lines))


def test_simulated_stream_with_every_fault_agrees() -> None:
    """A realistic simulator stream with faults: the same alert changes from both."""
    from tests.pipelines.test_dataflow import SAMPLE

    expected = as_dicts(reference(SAMPLE))
    assert len(expected) > 50
    assert comparable(run(SAMPLE, RAW_CFG)) == expected


def test_sample_events_give_the_replay_alerts() -> None:
    """The README's sample gives the same 19 alert changes as `orderwatch replay`."""
    cfg = yaml.safe_load((ROOT / "examples/orderwatch.yaml").read_text("utf-8"))
    lines = (ROOT / "examples/sample-events.jsonl").read_bytes().splitlines()
    alerts = run(lines, cfg)
    changes = {(a["labels"]["order_id"], a["labels"]["rule"], a["status"]) for a in alerts}
    assert ("O1003", "payment_not_applied", "resolved") in changes
    assert ("O1006", "conflicting_tracking", "firing") in changes
    assert ("O1008", "illegal_transition", "firing") in changes
    assert len(alerts) == 19


def test_fingerprint_is_the_alertmanager_label_signature() -> None:
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a 64 offset basis
    # prometheus/common model/signature_test.go
    labels = {"name": "garland, briggs", "fear": "love is not enough"}
    assert int(fingerprint(labels), 16) == 5799056148416392346


# Minimal streams where orderwatch and the plain script once differed; each was settled
# (see the README's notes on duplicates, presale orders and refunds) and must stay equal.
SETTLED: dict[str, tuple[dict[str, Any], list[bytes]]] = {
    "an event_id reused by another order is not a redelivery (dedup is per order)": (
        {},
        [
            order(0, "A", "created", event_id="x"),
            payment(MIN, "B", event_id="x"),
            order(60 * MIN, "C", "created"),
        ],
    ),
    "lifecycle.forbid also forbids going back from refund_requested": (
        {"lifecycle": {"forbid": {"refund_requested": ["allocated"]}}},
        [
            order(0, "A", "allocated"),
            order(MIN, "A", "refund_requested"),
            order(2 * MIN, "A", "allocated"),
        ],
    ),
    "a refunded pay_no is final: a later success for it does not count": (
        {},
        [
            order(0, "A", "paid"),
            payment(0, "A", "P1"),
            wms(MIN, "A"),
            payment(5 * MIN, "A", "P1", status="refunded"),
            payment(6 * MIN, "A", "P1"),
            payment(7 * MIN, "A", "P2"),
        ],
    ),
    "presale: the deposit does not start the 漏发 clock, even after payment_not_applied": (
        {},
        [
            order(0, "A", "created", amount="100"),
            payment(0, "A", "D", amount="10"),
            order(6 * MIN, "A", "deposit_paid"),
            order(20 * MIN, "Z", "created"),
        ],
    ),
    # found by a differential fuzz of the two (~17,000 small random streams)
    "an order created again after it was forgotten still drops its earlier event ids": (
        {},
        [
            order(0, "A", "cancelled", event_id="e1"),
            order(120 * MIN, "A", "paid", event_id="e2"),
            order(121 * MIN, "A", "cancelled", event_id="e1"),
            order(150 * MIN, "Z", "created"),
        ],
    ),
    "an order past its retention goes as soon as its last alert resolves": (
        {},
        [
            payment(0, "A", "P1"),
            order(MIN, "A", "completed"),
            wms(90 * MIN, "A"),
            payment(91 * MIN, "A", "P2"),
        ],
    ),
    "refunding one of two payments is not the order's refund": (
        {},
        [
            order(0, "A", "created"),
            payment(MIN, "A", "P1"),
            order(MIN, "A", "paid"),
            payment(2 * MIN, "A", "P2"),
            payment(4 * MIN, "A", "P2", status="refunded"),
            order(60 * MIN, "Z", "created"),
        ],
    ),
    "back in created by an illegal transition, the payment was applied once": (
        {},
        [
            order(0, "A", "created"),
            payment(MIN, "A"),
            order(2 * MIN, "A", "paid"),
            order(3 * MIN, "A", "created"),
            order(60 * MIN, "Z", "created"),
        ],
    ),
    "a closed order is kept until its gap deadlines passed": (
        {"engine": {"terminal_retention": "5m"}},
        [
            order(0, "A", "created"),
            wms(MIN, "A"),
            order(2 * MIN, "A", "closed"),  # retention ends at 7 min, wms_without_payment at 11
            order(60 * MIN, "Z", "created"),
        ],
    ),
    "the warehouse cancelling an unpaid outbound ends wms_without_payment, unless it shipped": (
        {},
        [
            wms(0, "A"),
            wms(0, "B"),
            wms(0, "C"),
            wms(0, "D"),
            wms(MIN, "B", "cancelled"),  # before the deadline: fires and resolves at 10 min
            wms(MIN, "C", "shipped"),
            wms(MIN, "D", "cancelled"),
            wms(2 * MIN, "D", "picked"),  # out again before the deadline: stays firing
            wms(20 * MIN, "A", "cancelled"),  # after the deadline: resolves it
            wms(20 * MIN, "C", "cancelled"),  # the goods left: stays firing
            wms(25 * MIN, "A", "outbound_created"),  # out again, unpaid: fires again at 35 min
            order(60 * MIN, "Z", "created"),
        ],
    ),
    "payments checked one by one are summed once the order turns presale": (
        {},
        [
            payment(0, "A", "P1", amount="299.00"),
            payment(MIN, "A", "P2", amount="299.00"),
            order(2 * MIN, "A", "paid", amount="299.00"),
            order(3 * MIN, "A", "deposit_paid"),
            order(4 * MIN, "A", "paid"),
        ],
    ),
    "a label re-printed under a new number before shipping is no conflict": (
        {},
        [
            order(0, "A", "label_printed", tracking_no="T1"),
            order(MIN, "A", "label_printed", tracking_no="T2"),
            order(2 * MIN, "A", "shipped", tracking_no="T2"),
            order(3 * MIN, "A", "shipped", tracking_no="T1"),
        ],
    ),
    "first seen in refund_requested, it may go back to any status a refund comes from": (
        {},
        [order(0, "A", "refund_requested"), order(MIN, "A", "delivered")],
    ),
    "a presale's duplicate balance is not an amount mismatch too": (
        {},
        [
            order(0, "A", "created", amount="100.00"),
            payment(MIN, "A", "D", amount="20.00"),
            order(MIN, "A", "deposit_paid"),
            payment(2 * MIN, "A", "B1", amount="80.00"),
            payment(3 * MIN, "A", "B2", amount="80.00"),
            order(4 * MIN, "A", "paid"),
        ],
    ),
    "an empty tracking_no or channel is none": (
        {},
        [order(0, "A", "label_printed", channel=""), order(MIN, "A", "shipped", tracking_no="")],
    ),
    "RFC 3339 allows a lowercase t and z": (
        {},
        [order(0, "A", "delivered"), order(MIN, "A", "paid", ts="2025-11-10t16:01:00z")],
    ),
    "a JSON-number amount is an exact decimal, not a float": (
        {},
        [
            order(0, "A", "paid", amount="299.00"),
            b'{"type":"payment","ts":1762790460000,"order_id":"A","pay_no":"P1",'
            b'"status":"success","amount":299.000000000000000001}',
        ],
    ),
    "non-ASCII digits in a timestamp are invalid": (
        {},
        [
            order(0, "A", "created", ts="2025-11-10T16:00:00.000Z"),
            order(0, "A", "delivered", ts="2025-11-10T16:00:00.²³¹Z"),
            order(0, "A", "delivered", ts="2025-11-10T16:00:00.١٢٣Z"),
            order(0, "A", "paid", ts="2025-11-10T16:00:01.000Z"),
        ],
    ),
    "amounts of 10^12 and more are invalid": (
        {},
        [order(0, "A", "delivered"), order(MIN, "A", "paid", amount="1000000000000")],
    ),
}


@pytest.mark.parametrize("case", list(SETTLED))
def test_settled_cases_agree(case: str) -> None:
    """Cases where the two implementations once differed now agree (through the real router)."""
    extra, lines = SETTLED[case]
    cfg = {**RAW_CFG, **extra}
    assert comparable(run(lines, cfg)) == orderwatch_routed(cfg, lines)


@settings(max_examples=300, deadline=None)
@given(lines=adversarial_streams())
def test_plain_script_equals_orderwatch_on_adversarial_streams(lines: list[bytes]) -> None:
    """Any event in any order about three orders, on the rule boundaries: the same alerts.
    The dedup horizon (2 h, a step of the streams) is shorter than they span, so ids are
    seen again both within it (copies) and beyond it (new events), live and forgotten."""
    cfg = {**RAW_CFG, "engine": {"terminal_retention": "30m", "dedup_horizon": "2h"}}
    assert comparable(run(lines, cfg)) == orderwatch_routed(cfg, lines)
