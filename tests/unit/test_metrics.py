"""Prometheus metrics computed at scrape time from real trackers, intake counters and the store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import orjson
from prometheus_client import CollectorRegistry

from orderwatch.alerts.store import AlertStore
from orderwatch.config import Config
from orderwatch.connectors.raw import RawChunk
from orderwatch.domain.alert import AlertChange
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.stats import LabelCap, ShardStats
from orderwatch.domain.tracker import ShardTracker
from orderwatch.events import Decoder
from orderwatch.metrics import SPECS, OrderwatchCollector, build_registry, reference_markdown
from orderwatch.pipelines.route import DEAD_LETTER_KEY, Router
from orderwatch.runtime import Runtime
from tests.factories import (
    BASE,
    HOUR,
    MIN,
    SEC,
    config,
    event,
    order,
    pack_everything,
    payment,
    wms,
)

NOW = BASE + 24 * HOUR  # wall clock of the test, seconds-resolution checks below


class World:
    """A runtime whose shard trackers were fed through the real router, plus an alert store."""

    def __init__(self, cfg: Config | None = None, shards: int = 4) -> None:
        self.cfg = cfg or config()
        self.rules = RuleSet.from_config(self.cfg)
        self.runtime = Runtime(shards=shards)
        self.store = AlertStore(None)
        self.channels = LabelCap(self.cfg.metrics.max_label_values)
        self.router = Router(
            Decoder(self.cfg.status_map),
            self.runtime,
            lateness_ms=self.cfg.lateness,
            live=True,
            now_ms=lambda: NOW,
        )
        self.changes: list[AlertChange] = []

    def feed(self, lines: list[bytes], until: int) -> World:
        for key, item in self.router.route(RawChunk("test", 1, lines)):
            if key == DEAD_LETTER_KEY:
                continue
            tracker = self.runtime.trackers.get(key)
            if tracker is None:
                tracker = ShardTracker(self.rules, ShardStats(self.channels))
                self.runtime.trackers[key] = tracker
            for ts, ev in item.events:
                tracker.ingest(ts, ev)
        out: list[AlertChange] = []
        for tracker in self.runtime.trackers.values():  # all up to `until` done
            out.extend(tracker.advance(BASE + until, final=True))
        out.sort(key=AlertChange.sort_key)
        self.changes.extend(self.store.apply(out))
        return self

    def registry(self, **kw: Any) -> CollectorRegistry:
        return build_registry(
            self.runtime, self.store, self.cfg.metrics, now=lambda: NOW / 1000, **kw
        )


def value(reg: CollectorRegistry, name: str, **labels: str) -> float | None:
    return reg.get_sample_value(name, labels)


def test_intake_counts_events_rejections_and_bytes() -> None:
    """Decoded events count by source and type; bad lines count as rejected dead letters."""
    lines = [order(0, "A", "created"), payment(0, "A"), b"{not json", order(0, "B", "wat")]
    reg = World().feed(lines, until=0).registry()
    assert value(reg, "orderwatch_events_total", source="test", type="order") == 1
    assert value(reg, "orderwatch_events_total", source="test", type="payment") == 1
    labels = {"source": "test", "reason": "malformed_json"}
    assert value(reg, "orderwatch_events_rejected_total", **labels) == 1
    assert value(reg, "orderwatch_events_rejected_total", source="test", reason="unknown_status")
    assert value(reg, "orderwatch_dead_letters_total") == 2
    assert value(reg, "orderwatch_input_bytes_total") == sum(len(x) for x in lines)
    assert value(reg, "orderwatch_event_lag_seconds_count", source="test") == 2


def test_event_lag_counts_access_logs_too() -> None:
    """Access-log events feed the lag of their source like the others: an access-log source
    that falls behind shows in `orderwatch_event_lag_seconds` (and its alerting rule)."""
    hit = event("access_log", 0, route="/api/pay", method="POST", status=200, latency_ms=9)
    lines = [hit, hit, order(0, "A", "paid")]
    reg = World().feed(lines, until=0).registry()
    assert value(reg, "orderwatch_event_lag_seconds_count", source="test") == 3


def test_orders_by_status_and_tracked_count() -> None:
    """`orderwatch_orders` sums status counts over shards, with zero-valued statuses present."""
    lines = [order(0, "A", "created"), order(0, "B", "paid"), order(0, "C", "paid"), wms(0, "D")]
    reg = World().feed(lines, until=0).registry()
    assert value(reg, "orderwatch_orders", status="paid") == 2
    assert value(reg, "orderwatch_orders", status="created") == 1
    assert value(reg, "orderwatch_orders", status="unknown") == 1
    assert value(reg, "orderwatch_orders", status="delivered") == 0
    assert value(reg, "orderwatch_orders_tracked") == 4
    assert value(reg, "orderwatch_orders_packed") == 0
    assert value(reg, "orderwatch_shards") == len(World().feed(lines, until=0).runtime.trackers)


def test_packed_orders_are_counted_until_an_event_unpacks_them() -> None:
    """`orderwatch_orders_packed` and its bytes follow packing both ways; tracked orders stay."""
    world = World().feed([order(0, "A", "created"), order(0, "B", "paid")], until=0)
    for tracker in world.runtime.trackers.values():
        pack_everything(tracker)

    def blobs() -> list[bytes]:
        trackers = world.runtime.trackers.values()
        return [r for t in trackers for r in t.orders.values() if isinstance(r, bytes)]

    reg = world.registry()
    assert value(reg, "orderwatch_orders_packed") == 2
    assert value(reg, "orderwatch_orders_packed_bytes") == sum(map(len, blobs())) > 0
    world.feed([order(MIN, "A", "paid")], until=MIN)
    reg = world.registry()
    assert value(reg, "orderwatch_orders_packed") == 1
    assert value(reg, "orderwatch_orders_tracked") == 2
    assert value(reg, "orderwatch_orders_packed_bytes") == sum(map(len, blobs())) > 0


def test_dwell_histogram_observes_time_in_status_on_leaving() -> None:
    """Ten minutes in `created` lands in the 600 s bucket, not in the 300 s one."""
    lines = [order(0, "A", "created", channel="tmall"), order(10 * MIN, "A", "paid")]
    reg = World().feed(lines, until=10 * MIN).registry()
    name = "orderwatch_status_dwell_seconds_bucket"
    assert value(reg, name, status="created", channel="tmall", le="300.0") == 0
    assert value(reg, name, status="created", channel="tmall", le="600.0") == 1
    assert value(reg, name, status="created", channel="tmall", le="+Inf") == 1
    assert (
        value(reg, "orderwatch_status_dwell_seconds_sum", status="created", channel="tmall") == 600
    )


def test_pay_to_collect_histogram_and_sla_ratio() -> None:
    """One order collected in 1 h and one in 5 h give a within-SLA ratio of 0.5 (SLA 4 h)."""
    lines = [
        order(0, "A", "paid", tracking_no="T1"),
        order(0, "B", "paid", tracking_no="T2"),
        order(HOUR, "A", "shipped", tracking_no="T1"),
        order(5 * HOUR, "B", "shipped", tracking_no="T2"),
    ]
    reg = World().feed(lines, until=5 * HOUR).registry()
    assert value(reg, "orderwatch_pay_to_collect_seconds_count") == 2
    assert value(reg, "orderwatch_pay_to_collect_seconds_sum") == 6 * 3600
    assert value(reg, "orderwatch_pay_to_collect_within_sla_total") == 1
    assert value(reg, "orderwatch_pay_to_collect_sla_ratio") == 0.5
    assert value(reg, "orderwatch_pay_to_collect_sla_seconds") == 4 * 3600


def test_no_pay_to_collect_observation_means_no_ratio_sample() -> None:
    """Before the first observation the SLA ratio is absent rather than a made-up number."""
    reg = World().feed([order(0, "A", "paid")], until=0).registry()
    assert value(reg, "orderwatch_pay_to_collect_sla_ratio") is None


def test_alerts_firing_and_anomalies_come_from_store_and_shards() -> None:
    """Firing alerts by rule come from the store; anomalies by kind from the shards."""
    lines = [
        order(0, "A", "created", amount="10"),
        payment(0, "A", amount="12"),
        order(0, "A", "paid"),
        order(0, "B", "paid"),
    ]
    reg = World().feed(lines, until=HOUR).registry()
    stuck = {"alertname": "OrderStuck", "rule": "paid_not_allocated", "severity": "warning"}
    assert value(reg, "orderwatch_alerts_firing", **stuck) == 2
    assert value(reg, "orderwatch_alerts_fired_total", **stuck) == 2
    assert value(reg, "orderwatch_anomalies_total", kind="amount_mismatch") == 1
    assert value(reg, "orderwatch_anomalies_total", kind="duplicate_payment") == 0
    one_shot = {"alertname": "OrderAnomaly", "rule": "amount_mismatch", "severity": "warning"}
    assert value(reg, "orderwatch_alerts_firing", **one_shot) is None
    # a configured rule with nothing firing has its series, at 0 ("No data" hid why)
    gap = {"alertname": "OrderGap", "rule": "wms_without_payment", "severity": "warning"}
    assert value(reg, "orderwatch_alerts_firing", **gap) == 0


def test_stuck_gauge_keeps_only_the_oldest_n_per_rule() -> None:
    """With 30 stuck orders and top_stuck=5, only the 5 oldest per rule get an order_id series."""
    cfg = config(metrics={"top_stuck": 5})
    lines = [order(i * MIN, f"O{i:02d}", "paid") for i in range(30)]
    world = World(cfg).feed(lines, until=3 * HOUR)
    reg = world.registry()
    samples = [
        s
        for fam in reg.collect()
        if fam.name == "orderwatch_stuck_order_age_seconds"
        for s in fam.samples
    ]
    by_rule: dict[str, set[str]] = {}
    for s in samples:
        by_rule.setdefault(s.labels["rule"], set()).add(s.labels["order_id"])
    assert by_rule == {
        "paid_not_allocated": {f"O{i:02d}" for i in range(5)},
        "paid_not_shipped": {f"O{i:02d}" for i in range(5)},
    }
    wm = world.runtime.watermark()
    assert wm == BASE + 3 * HOUR
    got = value(reg, "orderwatch_stuck_order_age_seconds", rule="paid_not_shipped", order_id="O03")
    assert got == (3 * HOUR - 3 * MIN) / 1000  # watermark minus the time O03 entered `paid`


def test_reconcile_gaps_payments_outbounds_and_leaks() -> None:
    """Open gaps, the oldest gap's age and the leak counters line up for the leak-rate query."""
    lines = [
        order(0, "A", "paid", channel="tmall", warehouse="W1"),
        payment(0, "A"),
        order(0, "B", "paid", channel="tmall"),
        payment(5 * MIN, "B"),
        order(0, "C", "paid", channel="jd"),
        payment(0, "C"),
        wms(MIN, "C"),
    ]
    reg = World().feed(lines, until=30 * MIN).registry()
    assert value(reg, "orderwatch_gaps_open", rule="paid_without_wms") == 2
    assert value(reg, "orderwatch_gaps_open", rule="wms_without_payment") == 0
    assert value(reg, "orderwatch_gap_oldest_age_seconds", rule="paid_without_wms") == 30 * 60
    assert value(reg, "orderwatch_gap_oldest_age_seconds", rule="payment_not_applied") == 0
    assert value(reg, "orderwatch_payments_success_total", channel="tmall") == 2
    assert value(reg, "orderwatch_payments_success_total", channel="jd") == 1
    assert value(reg, "orderwatch_wms_outbounds_total", channel="jd") == 1
    leak = "orderwatch_paid_without_wms_total"
    assert value(reg, leak, channel="tmall", warehouse="W1") == 1
    assert value(reg, leak, channel="tmall", warehouse="unknown") == 1


def test_access_log_requests_and_latency() -> None:
    """Access logs give request counts by route, method and code class, and latency buckets."""

    def hit(at: int, status: int, ms: float, method: str = "POST") -> bytes:
        return event(
            "access_log", at, route="/api/pay", method=method, status=status, latency_ms=ms
        )

    lines = [hit(0, 200, 20), hit(SEC, 200, 300), hit(2 * SEC, 502, 3000), hit(0, 200, 1, "BREW")]
    reg = World().feed(lines, until=0).registry()
    req = "orderwatch_http_requests_total"
    assert value(reg, req, route="/api/pay", method="POST", code="2xx") == 2
    assert value(reg, req, route="/api/pay", method="POST", code="5xx") == 1
    assert value(reg, req, route="/api/pay", method="other", code="2xx") == 1
    dur = "orderwatch_http_request_duration_seconds_bucket"
    assert value(reg, dur, route="/api/pay", le="0.025") == 2
    assert value(reg, dur, route="/api/pay", le="0.5") == 3
    assert value(reg, dur, route="/api/pay", le="+Inf") == 4


def test_watermark_and_its_lag() -> None:
    """The watermark gauge is in seconds and its lag is wall clock minus watermark."""
    reg = World().feed([order(0, "A", "created")], until=HOUR).registry()
    assert value(reg, "orderwatch_watermark_timestamp_seconds") == (BASE + HOUR) / 1000
    assert value(reg, "orderwatch_watermark_lag_seconds") == 23 * 3600


def test_daemon_health_gauges_follow_the_runtime() -> None:
    """`up` is 1, build_info carries a version, dataflow_running follows the runtime flag."""
    world = World()
    reg = world.registry()
    assert value(reg, "orderwatch_up") == 1
    assert value(reg, "orderwatch_dataflow_running") == 0
    world.runtime.dataflow_running = True
    assert value(reg, "orderwatch_dataflow_running") == 1
    infos = [s for f in reg.collect() if f.name == "orderwatch_build_info" for s in f.samples]
    assert len(infos) == 1 and infos[0].labels["version"]
    assert value(reg, "process_cpu_seconds_total") is not None


def test_every_family_matches_the_reference_table() -> None:
    """Each collected family is in the documented table with the same type and label names."""
    lines = [
        order(0, "A", "created", channel="tmall", amount="1"),
        payment(0, "A", amount="2"),
        order(MIN, "A", "paid"),
        event("access_log", 0, route="/x", method="GET", status=200, latency_ms=3),
    ]
    world = World().feed(lines, until=3 * HOUR)
    registry = CollectorRegistry()
    registry.register(OrderwatchCollector(world.runtime, world.store, rules=world.rules))
    seen = {}
    for fam in registry.collect():
        full = fam.name + "_total" if fam.type == "counter" else fam.name
        spec = SPECS[full]
        assert fam.type == spec.kind, full
        for s in fam.samples:
            assert set(s.labels) - {"le"} == set(spec.labels), (full, s.labels)
        seen[full] = len(fam.samples)
    assert set(seen) == set(SPECS)
    doc = reference_markdown()
    assert all(f"`{name}`" in doc for name in SPECS)
    assert "orderwatch_paid_without_wms_total" in doc.split("leak rate", 1)[1]


def test_readme_carries_the_reference_table_whole() -> None:
    """The README's "Metrics reference" is the module's table, every row of it, verbatim: a
    bench-table update once cut 27 rows out of the README's copy and nothing noticed."""
    readme = (Path(__file__).parents[2] / "README.md").read_text("utf-8")
    reference = reference_markdown()
    rows = [line for line in reference.splitlines() if line.startswith("| `orderwatch_")]
    assert len(rows) == len(SPECS)
    assert reference in readme
    assert sum(line.startswith("| `orderwatch_") for line in readme.splitlines()) == len(rows)


def test_scrapes_tolerate_a_worker_changing_its_shard() -> None:
    """Scraping while a worker thread ingests never raises and never reports negative counts."""
    world = World(shards=1)
    world.feed([order(0, "seed", "created")], until=0)
    tracker = next(iter(world.runtime.trackers.values()))
    reg = world.registry(process=False)
    stop = threading.Event()

    def work() -> None:
        decoder = Decoder()
        i = 0
        while not stop.is_set() and i < 20_000:
            d: Any = decoder.decode(order(i, f"X{i}", "paid", channel=f"c{i % 80}"), "t", "1")
            tracker.ingest(d.ts_ms, d.event)
            if i % 50 == 0:
                tracker.advance(BASE + i)
            i += 1

    worker = threading.Thread(target=work)
    worker.start()
    try:
        for _ in range(50):
            for fam in reg.collect():
                assert all(s.value >= 0 for s in fam.samples), fam.name
    finally:
        stop.set()
        worker.join()


def test_a_scrape_reads_only_the_alerts_it_reports(monkeypatch: Any) -> None:
    """In a 漏发 storm tens of thousands of alerts fire: a scrape must not list or sort them
    all (it took ~1 s at 300,000, blocking the control plane). The store keeps counts and
    oldest-first lists per rule; listing every alert is refused here, and the figures are
    still those of the alerts."""
    cfg = config(metrics={"top_stuck": 3})
    lines = [order(i * MIN, f"O{i:03d}", "paid", channel="tmall") for i in range(200)]
    lines += [payment(i * MIN, f"O{i:03d}") for i in range(200)]
    world = World(cfg).feed(lines, until=6 * HOUR)

    def refuse() -> None:
        raise AssertionError("a scrape listed every firing alert")

    monkeypatch.setattr(world.store, "firing", refuse)
    reg = world.registry()
    stuck = {"alertname": "OrderStuck", "rule": "paid_not_shipped", "severity": "critical"}
    assert value(reg, "orderwatch_alerts_firing", **stuck) == 200
    assert value(reg, "orderwatch_gaps_open", rule="paid_without_wms") == 200
    # the oldest gap fired 10 min after O000 was paid at 0; the watermark is at 6 h
    assert value(reg, "orderwatch_gap_oldest_age_seconds", rule="paid_without_wms") == 6 * 3600
    ages = {
        s.labels["order_id"]
        for fam in reg.collect()
        if fam.name == "orderwatch_stuck_order_age_seconds"
        for s in fam.samples
        if s.labels["rule"] == "paid_not_shipped"
    }
    assert ages == {"O000", "O001", "O002"}


def test_replay_caps_routes_at_max_label_values(tmp_path: Path) -> None:
    """A replay's access-log routes are capped by `metrics.max_label_values` and keep
    `metrics.routes`, as the daemon's are (replay capped them at a built-in 50)."""
    from orderwatch.replay import run_here

    events = tmp_path / "events.jsonl"
    lines = [
        {
            "type": "access_log",
            "ts": f"2026-11-11T00:00:0{i}+08:00",
            "route": route,
            "method": "GET",
            "status": 200,
            "latency_ms": 5,
            "service": "api",
        }
        for i, route in enumerate(("/a", "/b", "/c", "/keep"))
    ]
    events.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    cfg = config(metrics={"max_label_values": 1, "routes": ["/keep"]})
    summary = run_here(events, cfg, tmp_path / "alerts.jsonl", tmp_path / "dead.jsonl")
    # the one value the cap admits, and /keep on top of it
    assert dict(summary.http) == {"/a 2xx": 1, "/keep 2xx": 1, "other 2xx": 2}
