"""The read API over real HTTP (CONTRACT §6) and the alert-queue consumer."""

from __future__ import annotations

import asyncio
import queue
import sqlite3
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from orderwatch.alerts.store import AlertStore
from orderwatch.config import Config
from orderwatch.connectors.sinks import DeadLetterSink
from orderwatch.control.api import build_app
from orderwatch.control.server import (
    STOP,
    bound_port,
    consume_alerts,
    start_control_plane,
    stop_control_plane,
)
from orderwatch.domain.alert import AlertChange
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.tracker import ShardTracker
from orderwatch.domain.watermark import WatermarkClock
from orderwatch.events import Decoder
from orderwatch.metrics import build_registry
from orderwatch.pipelines.route import shard_keys, shard_of
from orderwatch.runtime import Runtime, SourceHealth
from tests.factories import (
    BASE,
    HOUR,
    MIN,
    config,
    decode_all,
    order,
    pack_everything,
    payment,
    wms,
)

Check = Callable[[TestClient[Any, Any]], Awaitable[None]]
ZONE = "Asia/Shanghai"


class Daemon:
    """Real trackers registered per shard key, a store fed with their alerts, and the app."""

    def __init__(self, cfg: Config | None = None, shards: int = 4) -> None:
        self.cfg = cfg or config(metrics={"top_stuck": 3})
        self.rules = RuleSet.from_config(self.cfg)
        self.runtime = Runtime(shards=shards, alert_queue=queue.Queue())
        self.store = AlertStore(None)
        self.registry = build_registry(self.runtime, self.store, self.cfg.metrics, process=False)

    def feed(self, lines: list[bytes], until: int) -> Daemon:
        n = self.runtime.shards
        for d in decode_all(lines, self.cfg):
            key = shard_keys(n)[shard_of(d.event.order_id, n)]  # type: ignore[union-attr]
            tracker = self.runtime.trackers.get(key)
            if tracker is None:
                tracker = self.runtime.trackers[key] = ShardTracker(self.rules)
            tracker.ingest(d.ts_ms, d.event)  # type: ignore[arg-type]
        for key in shard_keys(n):  # every shard shares the watermark
            tracker = self.runtime.trackers.setdefault(key, ShardTracker(self.rules))
            self.store.apply(sorted(tracker.advance(BASE + until), key=AlertChange.sort_key))
        return self

    def app(self) -> web.Application:
        return build_app(self.runtime, self.store, self.registry, rules=self.rules, timezone=ZONE)


def serve(app: web.Application, check: Check) -> None:
    async def main() -> None:
        async with TestClient(TestServer(app)) as client:
            await check(client)

    asyncio.run(main())


SCENARIO = [
    order(0, "A", "created", amount="10", channel="tmall"),
    payment(MIN, "A", amount="12"),
    order(MIN, "A", "paid", event_id="e-1"),
    order(10 * MIN, "B", "paid", channel="jd", warehouse="W1"),
    wms(11 * MIN, "B", warehouse="W1"),
    order(20 * MIN, "C", "paid"),
]


def test_healthz_and_readyz() -> None:
    """Liveness is always ok; readiness needs the dataflow running and sources connected."""
    d = Daemon()

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.get("/healthz")
        assert (r.status, await r.json()) == (200, {"status": "ok"})
        r = await client.get("/readyz")
        body = await r.json()
        assert r.status == 503
        assert body["missing"] == ["dataflow not running", "sources not connected"]
        assert "error" in body
        d.runtime.dataflow_running = d.runtime.sources_connected = True
        r = await client.get("/readyz")
        assert r.status == 200
        d.runtime.stopping.set()  # stopping: no more traffic, though it still runs
        r = await client.get("/readyz")
        assert r.status == 503
        assert (await r.json())["missing"][0].startswith("stopping")

    serve(d.app(), check)


def test_readyz_names_a_source_that_lost_its_input() -> None:
    """A followed file that is gone made no difference: readiness stayed 200."""
    d = Daemon()
    d.runtime.dataflow_running = d.runtime.sources_connected = True
    tailed, other = SourceHealth("sources[0]"), SourceHealth("sources[1]")
    d.runtime.sources += [tailed, other]
    tailed.problem = "/var/log/x.jsonl is gone (deleted or moved, not re-created)"

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.get("/readyz")
        body = await r.json()
        said = "sources[0]: /var/log/x.jsonl is gone (deleted or moved, not re-created)"
        assert (r.status, body["missing"], body["error"]) == (503, [said], f"not ready: {said}")
        tailed.problem = None
        assert (await client.get("/readyz")).status == 200

    serve(d.app(), check)


def test_metrics_endpoint_parses_as_prometheus_text() -> None:
    """`/metrics` is valid exposition text carrying the injected registry's samples."""
    d = Daemon().feed(SCENARIO, until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.get("/metrics")
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        families = {f.name: f for f in text_string_to_metric_families(await r.text())}
        firing = families["orderwatch_alerts_firing"].samples
        stuck = {"alertname": "OrderStuck", "rule": "paid_not_allocated", "severity": "warning"}
        assert [s.value for s in firing if s.labels == stuck] == [3]
        ages = families["orderwatch_stuck_order_age_seconds"].samples
        assert sorted(s.labels["order_id"] for s in ages) == ["A", "B", "C"]

    serve(d.app(), check)


def test_alerts_lists_firing_with_filters_and_one_shots_apart() -> None:
    """Firing alerts use the CONTRACT §4 shape, filter by labels, and one-shots sit apart."""
    d = Daemon().feed(SCENARIO, until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.get("/v1/alerts")
        assert r.headers["Content-Type"] == "application/json; charset=utf-8"
        assert "漏发" in await r.text()  # UTF-8 as it is, not \u escapes
        body = await r.json()
        assert body["count"] == len(body["alerts"]) == len(d.store.firing())
        # the annotations are served from the JSON they are kept as: the same as decoded
        assert body["alerts"] == [a.to_json() for a in d.store.firing()]
        first = body["alerts"][0]
        assert set(first) == {
            "status",
            "labels",
            "annotations",
            "startsAt",
            "endsAt",
            "fingerprint",
        }
        assert [a["labels"]["rule"] for a in body["anomalies"]] == ["amount_mismatch"]
        body = await (await client.get("/v1/alerts?rule=paid_without_wms")).json()
        assert [a["labels"]["order_id"] for a in body["alerts"]] == ["A"]
        assert body["anomalies"] == []
        body = await (await client.get("/v1/alerts?severity=critical&alertname=OrderStuck")).json()
        assert body["alerts"] == []  # paid_not_shipped (2 h) has not fired within the hour
        r = await client.get("/v1/alerts?severty=critical")
        assert r.status == 400
        assert "severty" in (await r.json())["error"]

    serve(d.app(), check)


def test_alerts_limit_gives_the_oldest_matching_and_their_total() -> None:
    """`limit` caps the answer (a storm's alerts all at once are a large one): the oldest
    matching alerts, in the same order as without it, with `total` of those matching; with
    an alertname the store's per-rule lists answer, with the same result as a full scan."""
    lines = [order(i * MIN, f"O{i:02d}", "paid") for i in range(12)]
    d = Daemon().feed([*SCENARIO, *lines], until=3 * HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        every = (await (await client.get("/v1/alerts")).json())["alerts"]
        assert len(every) > 12
        body = await (await client.get("/v1/alerts?limit=5")).json()
        assert body["alerts"] == every[:5]
        assert (body["count"], body["total"], body["limit"]) == (5, len(every), 5)
        stuck = [a for a in every if a["labels"]["alertname"] == "OrderStuck"]
        shipped = [a for a in stuck if a["labels"]["rule"] == "paid_not_shipped"]
        for query, expected in (
            ("alertname=OrderStuck", stuck),
            ("alertname=OrderStuck&rule=paid_not_shipped&limit=4", shipped[:4]),
            ("rule=paid_not_shipped&limit=4", shipped[:4]),
            ("alertname=OrderStuck&severity=critical", shipped),
        ):
            body = await (await client.get(f"/v1/alerts?{query}")).json()
            assert body["alerts"] == expected, query
        assert body["total"] == len(shipped) > 4
        for bad in ("0", "100001", "x"):
            await _rejected(client, f"/v1/alerts?limit={bad}", "limit", "1 to 100000")

    serve(d.app(), check)


def test_stuck_orders_oldest_first_with_limit() -> None:
    """Stuck orders come oldest first; `limit` caps the list and `rule` filters it."""
    d = Daemon().feed(SCENARIO, until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        body = await (await client.get("/v1/orders/stuck")).json()
        assert [o["order_id"] for o in body["orders"]] == ["A", "B", "C"]
        assert body["orders"][0]["age_seconds"] == (HOUR - MIN) / 1000
        assert body["orders"][0]["timeline"] == "/v1/orders/A"
        body = await (await client.get("/v1/orders/stuck?rule=paid_not_allocated&limit=2")).json()
        assert [o["order_id"] for o in body["orders"]] == ["A", "B"]
        assert body["total"] == 3
        body = await (await client.get("/v1/orders/stuck?rule=paid_not_shipped")).json()
        assert body["orders"] == []  # a rule of the config that has not fired

    serve(d.app(), check)


def test_stuck_orders_across_rules_are_oldest_first_by_age_not_by_start() -> None:
    """An order stuck 3 h under a 2 h rule is older than one stuck 2 h under a 30 min rule,
    though the latter's alert started first."""
    rules = {
        "stuck": [
            {"name": "short", "statuses": ["paid"], "max_dwell": "30m"},
            {"name": "long", "statuses": ["allocated"], "max_dwell": "2h"},
        ]
    }
    lines = [order(0, "L", "allocated"), order(60 * MIN, "S", "paid")]
    d = Daemon(config(rules)).feed(lines, until=3 * HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        body = await (await client.get("/v1/orders/stuck")).json()
        got = [(o["order_id"], o["age_seconds"]) for o in body["orders"]]
        assert got == [("L", 3 * HOUR / 1000), ("S", 2 * HOUR / 1000)]
        assert body["orders"][0]["startsAt"] > body["orders"][1]["startsAt"]

    serve(d.app(), check)


def test_stuck_orders_rejects_a_bad_limit() -> None:
    """A `limit` outside 1..1000 or not a number is a 400 naming the parameter."""
    d = Daemon()

    async def check(client: TestClient[Any, Any]) -> None:
        for bad in ("0", "1001", "abc", "-3", "+5", "%205", "1_0", "%D9%A3", "9" * 5000):
            r = await client.get(f"/v1/orders/stuck?limit={bad}")
            assert r.status == 400, bad
            assert "limit" in (await r.json())["error"]
        assert (await client.get("/v1/orders/stuck?limit=1000")).status == 200
        assert (await client.get("/v1/orders/stuck?limit=007")).status == 200

    serve(d.app(), check)


async def _rejected(client: TestClient[Any, Any], url: str, *words: str) -> dict[str, Any]:
    """GET `url`, expect a JSON 400 whose error mentions every one of `words`."""
    r = await client.get(url)
    assert (r.status, r.content_type) == (400, "application/json"), url
    body: dict[str, Any] = await r.json()
    for word in words:
        assert word in body["error"], (url, word, body)
    return body


@pytest.mark.parametrize(
    ("path", "param"),
    [("/v1/alerts", "severity=info"), ("/v1/orders/stuck", "limit=1"), ("/v1/orders/A", None)],
)
def test_every_v1_endpoint_rejects_unknown_repeated_and_empty_parameters(
    path: str, param: str | None
) -> None:
    """Unknown, repeated and empty query parameters are a JSON 400 naming the parameter on
    every /v1 endpoint, the order timeline included; the same request without them works."""
    d = Daemon().feed(SCENARIO, until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        name = "" if param is None else param.partition("=")[0]
        if param is not None:
            await _rejected(client, f"{path}?{param}&{param}", name, "2 times")
            await _rejected(client, f"{path}?{param}&{name}=2", name, "2 times")
            await _rejected(client, f"{path}?{name}=", name, "empty")
            await _rejected(client, f"{path}?{name}", name, "empty")
        await _rejected(client, f"{path}?x=1&x=2", "'x'")
        body = await _rejected(client, f"{path}?x=1", "unknown query parameter 'x'")
        assert body["parameter"] == "x"
        assert (body["allowed"] == []) if param is None else (name in body["allowed"])
        ok = await client.get(path if param is None else f"{path}?{param}")
        assert ok.status == 200
        assert (await client.get("/healthz?x=1")).status == 200  # only /v1 is checked

    serve(d.app(), check)


def test_alerts_rejects_names_the_config_cannot_produce() -> None:
    """A severity, alertname or rule outside what the running config can produce is a 400
    listing the allowed values; an allowed one that matches nothing is an empty 200."""
    d = Daemon().feed(SCENARIO, until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        body = await _rejected(client, "/v1/alerts?severity=bogus", "severity", "'bogus'")
        assert body["allowed"] == ["info", "warning", "critical"]
        assert "info, warning, critical" in body["error"]
        body = await _rejected(client, "/v1/alerts?alertname=OrderStuk", "alertname")
        assert body["allowed"] == ["OrderStuck", "OrderGap", "OrderAnomaly"]
        body = await _rejected(client, "/v1/alerts?rule=nope", "rule", "'nope'", "running config")
        assert body["allowed"] == [
            "paid_not_allocated",
            "paid_not_shipped",
            "logistics_stalled",
            "paid_without_wms",
            "wms_without_payment",
            "payment_not_applied",
            "illegal_transition",
            "shipped_without_tracking",
            "conflicting_tracking",
            "amount_mismatch",
            "duplicate_payment",
        ]
        await _rejected(client, "/v1/alerts?order_id=" + "x" * 129, "order_id", "128")
        await _rejected(client, "/v1/alerts?alertname=OrderGap&rule=nope", "'nope'")
        for fine in (
            "severity=info",
            "rule=logistics_stalled",
            "alertname=OrderAnomaly&severity=critical",
        ):
            r = await client.get(f"/v1/alerts?{fine}")
            body = await r.json()
            assert r.status == 200, fine
            assert body["alerts"] == body["anomalies"] == []
        body = await (await client.get("/v1/alerts?rule=amount_mismatch")).json()
        assert [a["labels"]["order_id"] for a in body["anomalies"]] == ["A"]

    serve(d.app(), check)


def test_stuck_orders_rejects_a_rule_that_is_not_a_stuck_rule_of_the_config() -> None:
    """`rule` on /v1/orders/stuck must name a stuck rule of the running config: anything else
    (a typo, a gap rule) is a 400 listing the stuck rules."""
    d = Daemon().feed(SCENARIO, until=HOUR)
    stuck_rules = ["paid_not_allocated", "paid_not_shipped", "logistics_stalled"]

    async def check(client: TestClient[Any, Any]) -> None:
        for bad in ("nope", "paid_without_wms", "Paid_Not_Allocated"):
            body = await _rejected(client, f"/v1/orders/stuck?rule={bad}", "rule", repr(bad))
            assert body["allowed"] == stuck_rules
            assert ", ".join(stuck_rules) in body["error"]
        r = await client.get("/v1/orders/stuck?rule=logistics_stalled")
        assert r.status == 200 and (await r.json())["orders"] == []

    serve(d.app(), check)


def test_rule_names_are_checked_before_any_shard() -> None:
    """Rule names come from the running config, so they are checked from the first request,
    before this process has a shard."""
    d = Daemon()

    async def check(client: TestClient[Any, Any]) -> None:
        assert not d.runtime.trackers
        await _rejected(client, "/v1/orders/stuck?rule=nope", "paid_not_allocated")
        await _rejected(client, "/v1/alerts?rule=nope", "duplicate_payment")
        assert (await client.get("/v1/alerts?rule=duplicate_payment")).status == 200

    serve(d.app(), check)


@pytest.mark.parametrize("packed", [False, True])
def test_order_timeline_shows_state_events_and_alerts(packed: bool) -> None:
    """The timeline carries the order's state, every kept event and its alerts, whether the
    order is in use or packed while idle."""
    d = Daemon().feed(SCENARIO, until=HOUR)
    tracker = d.runtime.trackers[shard_keys(4)[shard_of("A", 4)]]
    if packed:
        pack_everything(tracker)
    assert isinstance(tracker.orders["A"], bytes) == packed

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.get("/v1/orders/A")
        assert r.status == 200
        body = await r.json()
        assert (body["status"], body["channel"], body["payable"]) == ("paid", "tmall", "10.00")
        assert body["since"] == "2026-11-10T16:01:00.000Z"
        assert body["since_local"] == "2026-11-11T00:01:00.000+08:00"
        assert body["paid_at_local"] == "2026-11-11T00:01:00.000+08:00"
        assert [e["type"] for e in body["events"]] == ["order", "order", "payment"]
        paid = body["events"][1]
        assert paid["event_id"] == "e-1" and paid["status_after"] == "paid"
        assert paid["description"].startswith("order paid")
        assert {a["labels"]["rule"] for a in body["alerts"]} == {
            "paid_not_allocated",
            "paid_without_wms",
        }
        assert [a["labels"]["rule"] for a in body["anomalies"]] == ["amount_mismatch"]

    serve(d.app(), check)


def test_an_order_whose_events_wait_for_the_watermark_is_not_called_never_seen() -> None:
    """Its first events still buffered, an order was 404 "never seen"; a one-process daemon
    also blamed a shard it had not started yet as "not served by this process"."""
    d = Daemon().feed([order(0, "A", "created"), order(2 * HOUR, "LATER", "created")], until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        waiting = (await (await client.get("/v1/orders/LATER")).json())["error"]
        assert "still waiting for the watermark" in waiting and waiting.endswith(": 1)")
        d.runtime.trackers.clear()  # as before any input reached the shards
        unknown = (await (await client.get("/v1/orders/A")).json())["error"]
        assert "not tracked" in unknown and "not served" not in unknown

    serve(d.app(), check)


def test_order_timeline_shows_the_orders_rejected_inputs(tmp_path: Path) -> None:
    """A rejected line never reaches its order, yet is often why it looks stuck: the timeline
    shows the dead letters that name the order, and an order all of whose inputs were rejected
    is a 404 that says so instead of "never seen"."""
    d = Daemon().feed(SCENARIO, until=HOUR)
    sink = DeadLetterSink(tmp_path / "dead.jsonl", index=d.runtime.rejected)
    part = sink.build_part("dl", "dead-letters", None)
    decoder = Decoder()
    lines = [
        b'{"type":"order","ts":"2026-11-11T01:00:00","order_id":"A","status":"allocated"}',
        b'{"type":"order","ts":"2026-11-11T01:00:00","order_id":"Z","status":"created"}',
        b'{"type":"order","order_id":"Z","status":"pai',
    ]
    part.write_batch([decoder.decode(raw, "file:oms.jsonl", str(i)) for i, raw in enumerate(lines)])
    part.close()

    async def check(client: TestClient[Any, Any]) -> None:
        body = await (await client.get("/v1/orders/A")).json()
        assert body["status"] == "paid" and body["rejected_count"] == 1
        (got,) = body["rejected_events"]
        assert (got["reason"], got["source"], got["position"]) == (
            "naive_timestamp",
            "file:oms.jsonl",
            "0",
        )
        assert '"status":"allocated"' in got["raw"]
        body = await (await client.get("/v1/orders/B")).json()
        assert (body["rejected_count"], body["rejected_events"]) == (0, [])
        r = await client.get("/v1/orders/Z")
        body = await r.json()
        assert r.status == 404 and body["rejected_count"] == 2
        assert "2 of its inputs were rejected" in body["error"]
        assert "malformed_json, naive_timestamp" in body["error"]
        assert "file:oms.jsonl 2" in body["error"]
        assert [e["position"] for e in body["rejected_events"]] == ["1", "2"]
        assert "rejected" not in (await (await client.get("/v1/orders/NOPE")).json())["error"]
        stuck = {
            o["order_id"]: o
            for o in (await (await client.get("/v1/orders/stuck")).json())["orders"]
        }
        assert (stuck["A"]["rejected_count"], stuck["C"]["rejected_count"]) == (1, 0)

    serve(d.app(), check)


def test_an_alerts_timeline_link_leads_to_its_order_whatever_the_id_holds() -> None:
    """The `timeline` annotation, the stuck list's link and the stuck rule's next step named
    `/v1/orders/PO/2026/0001`, a path no order is at: the id is percent-encoded now."""
    oid = "PO/2026 0001?#%"
    d = Daemon().feed([order(0, oid, "paid")], until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        body = await (await client.get("/v1/alerts")).json()
        (alert,) = [a for a in body["alerts"] if a["labels"]["alertname"] == "OrderStuck"]
        link = alert["annotations"]["timeline"]
        assert f"(GET {link})" in alert["annotations"]["description"]
        stuck = await (await client.get("/v1/orders/stuck")).json()
        assert stuck["orders"][0]["timeline"] == link
        r = await client.get(link)
        assert r.status == 200 and (await r.json())["order_id"] == oid

    serve(d.app(), check)


def test_order_timeline_errors_are_json() -> None:
    """An unknown order is a JSON 404 that mentions retention; an over-long id is a 400."""
    d = Daemon().feed(SCENARIO, until=HOUR)

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.get("/v1/orders/NOPE")
        body = await r.json()
        assert r.status == 404
        assert "NOPE is not tracked" in body["error"] and "retention" in body["error"]
        r = await client.get("/v1/orders/" + "x" * 129)
        assert r.status == 400
        assert "128" in (await r.json())["error"]
        assert (await client.get("/v1/orders/" + "x" * 128)).status == 404

    serve(d.app(), check)


def test_unknown_path_wrong_method_and_crash_are_json() -> None:
    """aiohttp's own 404/405 and an unexpected exception all answer `{"error": ...}`."""

    class BrokenStore(AlertStore):
        def firing(self) -> list[AlertChange]:
            raise RuntimeError("boom")

    runtime = Runtime()
    store = BrokenStore(None)
    registry = build_registry(runtime, store, process=False)
    app = build_app(runtime, store, registry, rules=RuleSet.from_config(config()), timezone=ZONE)

    async def check(client: TestClient[Any, Any]) -> None:
        r = await client.get("/nope")
        assert (r.status, r.content_type) == (404, "application/json")
        assert "/nope" in (await r.json())["error"]
        r = await client.post("/healthz")
        assert r.status == 405
        assert "POST" in (await r.json())["error"]
        r = await client.get("/v1/alerts")
        assert r.status == 500
        assert "error" in await r.json()

    serve(app, check)


def test_a_request_aiohttps_parser_refuses_gets_its_plain_text_400_as_the_readme_says() -> None:
    """The README's one exception to JSON errors, pinned: aiohttp answers these itself, with no
    supported hook to shape the reply. If an aiohttp upgrade changes that, so must the README."""

    async def main() -> None:
        runner = await start_control_plane(Daemon().app(), "127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", bound_port(runner))
            writer.write(b"GET /v1/alerts?rule=\xe4\xb8\xad HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = await asyncio.wait_for(reader.read(), 10)  # then it closes the connection
            writer.close()
        finally:
            await stop_control_plane(runner)
        head, _, body = reply.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 400 Bad Request\r\n")
        assert b"Content-Type: text/plain" in head
        assert body.startswith(b"Invalid char in url query")

    asyncio.run(main())


def test_control_plane_serves_on_a_real_port() -> None:
    """`start_control_plane` on port 0 serves real HTTP until `stop_control_plane`."""
    d = Daemon()

    async def main() -> None:
        runner = await start_control_plane(d.app(), "127.0.0.1", 0)
        port = bound_port(runner)
        try:
            async with (
                aiohttp.ClientSession() as s,
                s.get(f"http://127.0.0.1:{port}/healthz") as r,
            ):
                assert r.status == 200
        finally:
            await stop_control_plane(runner)
        async with aiohttp.ClientSession() as s:
            try:
                await s.get(f"http://127.0.0.1:{port}/healthz")
            except aiohttp.ClientConnectionError:
                return
        raise AssertionError("still serving after stop")

    asyncio.run(main())


def test_consumer_applies_batches_and_passes_on_effective_changes(tmp_path: Path) -> None:
    """Queued batches reach the store; duplicates are dropped before `on_change` sees them."""
    d = Daemon()
    lines = [order(0, "A", "paid"), order(0, "B", "paid")]
    tracker = ShardTracker(d.rules)
    for ev in decode_all(lines):
        tracker.ingest(ev.ts_ms, ev.event)  # type: ignore[arg-type]
    batch = tracker.advance(BASE + HOUR)
    assert len(batch) == 2
    d.store = AlertStore(tmp_path / "alerts.db")
    seen: list[list[AlertChange]] = []

    async def on_change(changes: list[AlertChange]) -> None:
        seen.append(changes)

    q = d.runtime.alert_queue
    assert q is not None
    q.put(batch)
    q.put(list(batch))  # a replay of the same output
    q.put(STOP)
    asyncio.run(asyncio.wait_for(consume_alerts(d.runtime, d.store, on_change), 5))
    assert seen == [batch]
    assert len(d.store.firing()) == 2


class RefusingStore(AlertStore):
    """A real store whose writes fail while `refuse` is set, as with a full disk."""

    refuse = True

    def apply(self, changes: Any, progress: int | None = None) -> list[AlertChange]:
        if self.refuse:
            raise sqlite3.OperationalError("database or disk is full")
        return super().apply(changes, progress)


def test_a_store_that_refuses_writes_delays_alerts_and_never_drops_them(tmp_path: Path) -> None:
    """They wait in memory, in order; /readyz, the log and two metrics say why; once the store
    takes writes again they are stored and announced. (Three failures used to drop them.)"""
    d = Daemon()
    tracker = ShardTracker(d.rules)
    for ev in decode_all([order(0, "A", "paid"), order(MIN, "B", "paid")]):
        tracker.ingest(ev.ts_ms, ev.event)  # type: ignore[arg-type]
    first, second = tracker.advance(BASE + HOUR)
    d.store = RefusingStore(tmp_path / "alerts.db")
    seen: list[AlertChange] = []
    q = d.runtime.alert_queue
    assert q is not None

    async def main() -> None:
        consumer = asyncio.create_task(consume_alerts(d.runtime, d.store, seen.extend))
        q.put([first])
        q.put([second])
        await asyncio.sleep(2)  # several failed attempts
        assert seen == [] and d.runtime.alerts_waiting == 2
        assert d.runtime.alert_store_failures >= 3

        async def probe(client: TestClient[Any, Any]) -> None:
            r = await client.get("/readyz")
            assert r.status == 503
            assert "alert store not writable (2 alert changes waiting)" in (await r.json())["error"]
            text = await (await client.get("/metrics")).text()
            assert "orderwatch_alerts_waiting 2.0" in text

        async with TestClient(TestServer(d.app())) as client:
            d.runtime.dataflow_running = d.runtime.sources_connected = True
            await probe(client)
            d.store.refuse = False  # type: ignore[attr-defined]
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.1)
            assert (await client.get("/readyz")).status == 200
        q.put(STOP)
        await asyncio.wait_for(consumer, 5)

    asyncio.run(main())
    assert seen == [first, second]
    assert d.runtime.alerts_waiting == 0 and len(d.store.firing()) == 2


class WatchedStore(AlertStore):
    """A real store that says when a write starts and when it ended."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.writing, self.written = threading.Event(), False

    def apply(self, changes: Any, progress: int | None = None) -> list[AlertChange]:
        self.writing.set()
        try:
            return super().apply(changes, progress)
        finally:
            self.written = True


def test_a_write_waiting_for_a_lock_holds_up_no_request(tmp_path: Path) -> None:
    """Another process holds the alert store's lock (a backup, a sqlite3 shell): the write
    waits for it in a worker thread, holding only the database's lock, while scrapes and the
    API are answered from what the store holds in memory; once the lock is free the alert is
    written and announced. The write used to run on the control plane's loop under the one
    lock, so every request waited for it (up to the 5 s busy timeout per attempt)."""
    d = Daemon().feed([order(0, "A", "paid"), order(MIN, "B", "paid")], until=HOUR)
    first, second = d.store.firing()
    path = tmp_path / "alerts.db"
    with AlertStore(path) as before:
        before.apply([first])
    store = d.store = WatchedStore(path)
    d.registry = build_registry(d.runtime, store, d.cfg.metrics, process=False)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    seen: list[AlertChange] = []
    q = d.runtime.alert_queue
    assert q is not None

    async def main() -> None:
        consumer = asyncio.create_task(consume_alerts(d.runtime, store, seen.extend))
        q.put([second])
        async with TestClient(TestServer(d.app())) as client:
            await asyncio.to_thread(store.writing.wait, 5)
            await asyncio.sleep(0.2)  # into SQLite's wait for the lock
            # the order's stored alerts wait for the database, in a thread of their own
            timeline = asyncio.create_task(client.get("/v1/orders/A"))
            text = await (await client.get("/metrics")).text()
            body = await (await client.get("/v1/alerts")).json()
            assert not store.written, "the requests waited for the write"
            assert "orderwatch_alerts_waiting 1.0" in text
            assert 'orderwatch_alerts_firing{alertname="OrderStuck"' in text
            assert [a["labels"]["order_id"] for a in body["alerts"]] == ["A"]
            holder.execute("ROLLBACK")
            got = await (await timeline).json()
            assert [a["labels"]["order_id"] for a in got["alerts"]] == ["A"]
            for _ in range(100):
                if seen:
                    break
                await asyncio.sleep(0.05)
        q.put(STOP)
        await asyncio.wait_for(consumer, 5)

    try:
        asyncio.run(main())
    finally:
        holder.close()
    assert seen == [second] and len(store.firing()) == 2


def test_at_shutdown_alerts_the_store_would_not_take_are_announced_not_lost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("orderwatch.control.server._LAST_TRIES_SECONDS", 0.5)
    d = Daemon()
    tracker = ShardTracker(d.rules)
    for ev in decode_all([order(0, "A", "paid")]):
        tracker.ingest(ev.ts_ms, ev.event)  # type: ignore[arg-type]
    batch = tracker.advance(BASE + HOUR)
    d.store = RefusingStore(tmp_path / "alerts.db")
    seen: list[AlertChange] = []
    q = d.runtime.alert_queue
    assert q is not None
    q.put(batch)
    q.put(STOP)
    asyncio.run(asyncio.wait_for(consume_alerts(d.runtime, d.store, seen.extend), 5))
    assert seen == batch


def test_an_order_timeline_shows_its_shards_watermark_moving_on_while_idle() -> None:
    """Live and idle, a shard is not woken to advance its tracker; the timeline's `watermark`
    is read from its clock, as the metric's and `/v1/orders/stuck`'s `as_of` are (it showed
    the last advance, seconds behind)."""
    d = Daemon().feed(SCENARIO, until=HOUR)
    key = shard_keys(4)[shard_of("A", 4)]
    clock = d.runtime.clocks[key] = WatermarkClock(lateness_ms=1_000, idle_after_ms=1_000)
    clock.observe(BASE + HOUR + 1_000, wall_ms=0)  # the last input, a wall-clock epoch ago
    assert d.runtime.trackers[key].watermark == BASE + HOUR

    async def check(client: TestClient[Any, Any]) -> None:
        body = await (await client.get("/v1/orders/A")).json()
        shown = datetime.fromisoformat(body["watermark"]).timestamp() * 1000
        assert shown > BASE + 2 * HOUR  # quiet ever since: far past the last advance

    serve(d.app(), check)
