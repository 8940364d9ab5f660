# ruff: noqa: E501  (the reference table below is Markdown: one row per line)
"""Every orderwatch metric, defined once, computed when Prometheus scrapes.

The hot path never touches prometheus_client: shards and intake threads bump plain ints in
`ShardStats` / `IntakeStats` they own, and `OrderwatchCollector.collect()` sums them over
every tracker and intake thread of this process at scrape time, together with the alert
state of the `AlertStore`. Each process serves its own `/metrics`; Prometheus sums them.
The table below is the reference: it is parsed at import to give every family its type,
labels and help text, so the code and the documentation cannot drift apart.

<!-- metrics-reference -->
| metric | type | labels | meaning |
|---|---|---|---|
| `orderwatch_up` | gauge | | 1 while the daemon serves metrics |
| `orderwatch_build_info` | gauge | version | always 1; the running orderwatch version |
| `orderwatch_start_time_seconds` | gauge | | when this process started, unix seconds |
| `orderwatch_dataflow_running` | gauge | | 1 while the bytewax dataflow runs |
| `orderwatch_sources_connected` | gauge | | 1 when every input source is connected (0 while a followed file is gone, as `/readyz` says) |
| `orderwatch_shards` | gauge | | order shards served by this process (each from its first input, or from its snapshot on a resume) |
| `orderwatch_alerts_waiting` | gauge | | alert changes held in memory because the alert store refuses writes (disk full, locked); retried until it takes them while the dataflow waits, `/readyz` says why |
| `orderwatch_alert_store_write_failures_total` | counter | | failed writes to the alert store (each one retried) |
| `orderwatch_events_total` | counter | source, type | events decoded, by source and event type |
| `orderwatch_events_rejected_total` | counter | source, reason | inputs rejected to the dead-letter output, by bounded reason |
| `orderwatch_dead_letters_total` | counter | | dead letters written (all rejection reasons) |
| `orderwatch_events_duplicate_total` | counter | | events dropped because their `event_id` was already seen |
| `orderwatch_events_late_total` | counter | | events that arrived behind the watermark (still applied) |
| `orderwatch_events_buffered` | gauge | | events waiting for the watermark to reach them |
| `orderwatch_input_bytes_total` | counter | | raw input bytes read |
| `orderwatch_input_lines_total` | counter | | raw input lines or messages read |
| `orderwatch_event_lag_seconds` | histogram | source | processing time minus event time of every valid event (access logs included), live sources only |
| `orderwatch_watermark_timestamp_seconds` | gauge | | the event-time watermark every shard reached, unix seconds |
| `orderwatch_watermark_lag_seconds` | gauge | | wall clock minus the watermark |
| `orderwatch_orders` | gauge | status | orders tracked now, by canonical status (`unknown`: seen only via payment, WMS or logistics) |
| `orderwatch_orders_tracked` | gauge | | orders held in memory |
| `orderwatch_orders_packed` | gauge | | of those, idle orders held packed (`engine.pack_after`) |
| `orderwatch_orders_packed_bytes` | gauge | | the packed orders' size (after compression, `engine.pack_compression`) |
| `orderwatch_orders_forgotten_total` | counter | | orders dropped after their retention |
| `orderwatch_status_dwell_seconds` | histogram | status, channel | time spent in a status, observed when the order leaves it |
| `orderwatch_pay_to_collect_seconds` | histogram | | payment to carrier collection: from the first successful payment callback (or the move to `paid`, if that came first) to the first of `shipped`, `in_transit`, `delivered`, `completed` |
| `orderwatch_pay_to_collect_within_sla_total` | counter | | pay-to-collect observations within the fulfilment SLA |
| `orderwatch_pay_to_collect_sla_ratio` | gauge | | share of pay-to-collect observations within the SLA since the process started (已揽收达成时效; absent before the first; over a window, the query below) |
| `orderwatch_pay_to_collect_sla_seconds` | gauge | | the fulfilment SLA (`rules.fulfilment_sla`) |
| `orderwatch_anomalies_total` | counter | kind | one-shot anomalies detected, by kind |
| `orderwatch_alerts_firing` | gauge | alertname, rule, severity | alerts firing now (one-shot anomalies excluded); every configured stuck and gap rule has its series, 0 when none fires |
| `orderwatch_alerts_fired_total` | counter | alertname, rule, severity | alerts that started firing (deduplicated, one-shots included) |
| `orderwatch_stuck_order_age_seconds` | gauge | rule, order_id | the N (`metrics.top_stuck`) oldest stuck orders per rule: watermark minus the rule's clock (time in the status set, or since the last update) |
| `orderwatch_gaps_open` | gauge | rule | payment ↔ warehouse gaps firing now (`OrderGap` alerts) |
| `orderwatch_gap_oldest_age_seconds` | gauge | rule | age of the oldest open gap: watermark minus its first payment (or WMS outbound); 0 when none |
| `orderwatch_payments_success_total` | counter | channel | distinct successful payments |
| `orderwatch_wms_outbounds_total` | counter | channel | orders that reached the warehouse (first WMS event other than `cancelled`) |
| `orderwatch_paid_without_wms_total` | counter | channel, warehouse | `paid_without_wms` (漏发) alerts that started firing |
| `orderwatch_http_requests_total` | counter | route, method, code | requests seen in access logs; `code` is the class `2xx`..`5xx` |
| `orderwatch_http_request_duration_seconds` | histogram | route | request latency from access logs |

Label values are bounded: `channel`, `warehouse` and `route` keep the first
`metrics.max_label_values` values seen (plus `metrics.channels` / `metrics.routes`) and
report the rest as `other`; `method` outside the standard HTTP methods is `other`;
`order_id` appears only in `orderwatch_stuck_order_age_seconds`, at most
`metrics.top_stuck` series per stuck rule. Ages use the event-time watermark (the wall
clock before the first shard reports), so a replay shows the ages the live run would have
shown. Counters restart at zero with the process, as Prometheus expects; a daemon resumed
with `state.recovery` re-reads the input since its last snapshot (about
`state.snapshot_interval` of it) and counts those events, and what they detect, again: an
`increase()` across the restart can be that much high (the alerts themselves are not
repeated: the alert store absorbs them).

Useful queries:

- leak rate (漏发率): `sum by (channel) (rate(orderwatch_paid_without_wms_total[1h]))
  / sum by (channel) (rate(orderwatch_payments_success_total[1h]))`; since start:
  `sum by (channel) (orderwatch_paid_without_wms_total)
  / sum by (channel) (orderwatch_payments_success_total)`
- payments vs warehouse outbounds: `sum by (channel) (rate(orderwatch_payments_success_total[5m]))`
  beside `sum by (channel) (rate(orderwatch_wms_outbounds_total[5m]))`
- route QPS: `sum by (route) (rate(orderwatch_http_requests_total[1m]))`
- route error ratio: `sum by (route) (rate(orderwatch_http_requests_total{code="5xx"}[5m]))
  / sum by (route) (rate(orderwatch_http_requests_total[5m]))`
- p99 latency: `histogram_quantile(0.99, sum by (route, le)
  (rate(orderwatch_http_request_duration_seconds_bucket[5m])))`
- pay-to-collect within SLA over a day: `increase(orderwatch_pay_to_collect_within_sla_total[1d])
  / increase(orderwatch_pay_to_collect_seconds_count[1d])`
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any, TypeVar

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orderwatch.domain.lifecycle import STATUSES
from orderwatch.domain.rules import ANOMALIES, GAP_ALERT, GAP_RULES, STUCK_ALERT, RuleSet
from orderwatch.domain.stats import DWELL_BUCKETS, LAG_BUCKETS, Histogram
from orderwatch.pipelines.route import _LATENCY_BUCKETS

if TYPE_CHECKING:
    from orderwatch.alerts.store import AlertStore
    from orderwatch.config import MetricsCfg
    from orderwatch.runtime import Runtime

K = TypeVar("K")
V = TypeVar("V")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "CONNECT"})
_MARK = "<!-- metrics-reference -->"


@dataclass(frozen=True)
class Spec:
    name: str
    kind: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    help: str


def _parse_reference(doc: str) -> dict[str, Spec]:
    specs: dict[str, Spec] = {}
    for line in doc.split(_MARK, 1)[1].splitlines():
        m = re.match(r"^\|\s*`(\w+)`\s*\|\s*(\w+)\s*\|([\w, ]*)\|\s*(.+?)\s*\|$", line.strip())
        if m:
            labels = tuple(x.strip() for x in m.group(3).split(",") if x.strip())
            specs[m.group(1)] = Spec(m.group(1), m.group(2), labels, m.group(4).replace("`", ""))
    return specs


SPECS: dict[str, Spec] = _parse_reference(__doc__ or "")


def reference_markdown() -> str:
    """The metrics reference (table, label bounds, useful queries) as Markdown for the README."""
    return (__doc__ or "").split(_MARK, 1)[1].strip() + "\n"


def _family(name: str) -> Any:
    spec = SPECS[name]
    cls = {
        "counter": CounterMetricFamily,
        "gauge": GaugeMetricFamily,
        "histogram": HistogramMetricFamily,
    }[spec.kind]
    return cls(name, spec.help, labels=spec.labels)


def _items(d: Mapping[K, V]) -> list[tuple[K, V]]:
    """Copy a mapping a worker thread may be changing: retry once if it changed under us."""
    try:
        return list(d.items())
    except RuntimeError:
        return list(d.items())


def _copy(d: Mapping[K, V]) -> dict[K, V]:
    return dict(_items(d))


def _values(d: Mapping[K, V]) -> list[V]:
    return [v for _, v in _items(d)]


def _watermark(runtime: Runtime, now: Callable[[], float] = time.time) -> int | None:
    wall = int(now() * 1000)
    try:
        return runtime.watermark(wall)
    except RuntimeError:
        return runtime.watermark(wall)


def _buckets(hists: Iterable[Histogram], bounds: Sequence[float]) -> tuple[list[Any], float]:
    """Merge same-bounds histograms into Prometheus' cumulative (le, count) pairs and a sum."""
    counts = [0] * (len(bounds) + 1)
    total = 0.0
    for h in hists:
        for i, c in enumerate(list(h.counts)):
            counts[i] += c
        total += h.total
    out: list[Any] = []
    running = 0
    for bound, c in zip((*bounds, float("inf")), counts, strict=True):
        running += c
        out.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
    return out, total


def _version() -> str:
    try:
        return version("orderwatch")
    except PackageNotFoundError:
        return "unknown"


def rule_windows(runtime: Runtime, rules: RuleSet | None = None) -> dict[tuple[str, str], int]:
    """`(alertname, rule)` → ms between the rule's clock and its alert's `startsAt`."""
    if rules is None:
        trackers = _values(runtime.trackers)
        if not trackers:
            return {}
        rules = trackers[0].rules
    out = {(STUCK_ALERT, s.name): s.max_dwell_ms for s in rules.stuck}
    out.update({(GAP_ALERT, g.name): g.within_ms for g in rules.gaps.values()})
    return out


def event_clock_ms(runtime: Runtime, now: Callable[[], float] = time.time) -> int:
    """The process watermark, or the wall clock before any shard has one."""
    mark = _watermark(runtime, now)
    return mark if mark is not None else int(now() * 1000)


class OrderwatchCollector(Collector):
    """Reads the runtime's trackers and intake counters and the alert store at scrape time."""

    def __init__(
        self,
        runtime: Runtime,
        store: AlertStore,
        top_stuck: int = 20,
        *,
        rules: RuleSet | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.runtime = runtime
        self.store = store
        self.top_stuck = top_stuck
        self.rules = rules
        self.now = now
        self._version = _version()

    def describe(self) -> Iterable[Metric]:
        return [_family(name) for name in SPECS]

    def collect(self) -> Iterator[Metric]:
        yield from self._health()
        yield from self._intake()
        yield from self._orders()
        yield from self._alerts()
        yield from self._reconcile()

    def _health(self) -> Iterator[Metric]:
        rt = self.runtime
        values = {
            "orderwatch_up": 1.0,
            "orderwatch_start_time_seconds": rt.started,
            "orderwatch_dataflow_running": float(rt.dataflow_running),
            "orderwatch_sources_connected": float(rt.all_sources_connected()),
            "orderwatch_alerts_waiting": float(rt.alerts_waiting),
            "orderwatch_shards": float(len(rt.trackers)),
        }
        for name, value in values.items():
            fam = _family(name)
            fam.add_metric([], value)
            yield fam
        yield self._counter(
            "orderwatch_alert_store_write_failures_total", {(): rt.alert_store_failures}
        )
        info = _family("orderwatch_build_info")
        info.add_metric([self._version], 1.0)
        yield info

    def _intake(self) -> Iterator[Metric]:
        events: Counter[tuple[str, str]] = Counter()
        rejected: Counter[tuple[str, str]] = Counter()
        requests: Counter[tuple[str, str, str]] = Counter()
        lag: dict[str, list[Histogram]] = {}
        latency: dict[str, list[Histogram]] = {}
        size = lines = 0
        for s in self.runtime.intakes():
            events.update(_copy(s.events))
            rejected.update(_copy(s.rejected))
            for (route, method, code), n in _items(s.requests):
                method = method.upper()
                requests[(route, method if method in _METHODS else "other", code)] += n
            for src, h in _items(s.lag):
                lag.setdefault(src, []).append(h)
            for route, h in _items(s.latency):
                latency.setdefault(route, []).append(h)
            size += s.bytes_read
            lines += s.lines_read
        yield self._counter("orderwatch_events_total", events)
        yield self._counter("orderwatch_events_rejected_total", rejected)
        yield self._counter("orderwatch_dead_letters_total", {(): sum(rejected.values())})
        yield self._counter("orderwatch_input_bytes_total", {(): size})
        yield self._counter("orderwatch_input_lines_total", {(): lines})
        yield self._counter("orderwatch_http_requests_total", requests)
        yield self._histogram("orderwatch_event_lag_seconds", lag, LAG_BUCKETS)
        yield self._histogram("orderwatch_http_request_duration_seconds", latency, _LATENCY_BUCKETS)

    def _orders(self) -> Iterator[Metric]:
        trackers = _values(self.runtime.trackers)
        statuses: Counter[str] = Counter({s: 0 for s in (*STATUSES, "unknown")})
        anomalies: Counter[str] = Counter({k: 0 for k in ANOMALIES})
        dwell: dict[tuple[str, str], list[Histogram]] = {}
        collect: list[Histogram] = []
        tracked = packed = packed_bytes = buffered = forgotten = late = dups = within = 0
        for t in trackers:
            st = t.stats
            statuses.update(_copy(st.status_counts))
            anomalies.update(_copy(st.anomalies))
            for key, h in _items(st.dwell):
                dwell.setdefault(key, []).append(h)
            collect.append(st.pay_to_collect)
            within += st.pay_to_collect_within
            tracked += len(t.orders)
            packed += t.packed
            packed_bytes += t.packed_bytes
            buffered += t.buffered
            forgotten += st.forgotten
            late += st.late
            dups += st.duplicates
        yield self._gauge("orderwatch_orders", {(k,): max(v, 0) for k, v in statuses.items()})
        yield self._gauge("orderwatch_orders_tracked", {(): tracked})
        yield self._gauge("orderwatch_orders_packed", {(): packed})
        yield self._gauge("orderwatch_orders_packed_bytes", {(): packed_bytes})
        yield self._gauge("orderwatch_events_buffered", {(): buffered})
        yield self._counter("orderwatch_orders_forgotten_total", {(): forgotten})
        yield self._counter("orderwatch_events_late_total", {(): late})
        yield self._counter("orderwatch_events_duplicate_total", {(): dups})
        yield self._counter("orderwatch_anomalies_total", {(k,): v for k, v in anomalies.items()})
        yield self._histogram("orderwatch_status_dwell_seconds", dwell, DWELL_BUCKETS)
        fam = self._histogram("orderwatch_pay_to_collect_seconds", {(): collect}, DWELL_BUCKETS)
        yield fam
        total = next((s.value for s in fam.samples if s.name.endswith("_count")), 0)
        yield self._counter("orderwatch_pay_to_collect_within_sla_total", {(): within})
        yield self._gauge(
            "orderwatch_pay_to_collect_sla_ratio", {(): within / total} if total else {}
        )
        rules = self._rules()
        sla = {(): rules.fulfilment_sla_ms / 1000} if rules else {}
        yield self._gauge("orderwatch_pay_to_collect_sla_seconds", sla)
        yield from self._watermark()

    def _rules(self) -> RuleSet | None:
        """The configured rules (given, or any shard's: all shards share them)."""
        trackers = _values(self.runtime.trackers)
        return self.rules or (trackers[0].rules if trackers else None)

    def _watermark(self) -> Iterator[Metric]:
        mark = _watermark(self.runtime, self.now)
        ts = {(): mark / 1000} if mark is not None else {}
        yield self._gauge("orderwatch_watermark_timestamp_seconds", ts)
        lag = {(): max(self.now() - mark / 1000, 0.0)} if mark is not None else {}
        yield self._gauge("orderwatch_watermark_lag_seconds", lag)

    def _alerts(self) -> Iterator[Metric]:
        # Every configured rule has its series, at 0 when nothing fires: a series that vanished
        # at zero showed as "No data" in Grafana, and `== 0` / `absent()` could not tell why.
        rules = self._rules()
        firing: dict[Any, int] = {}
        if rules is not None:
            firing.update({(STUCK_ALERT, s.name, s.severity): 0 for s in rules.stuck})
            firing.update({(GAP_ALERT, g.name, g.severity): 0 for g in rules.gaps.values()})
        firing.update(self.store.counts())
        yield self._gauge("orderwatch_alerts_firing", firing)
        yield self._counter("orderwatch_alerts_fired_total", self.store.fired())
        clock = event_clock_ms(self.runtime, self.now)
        windows = rule_windows(self.runtime, rules)
        ages: dict[tuple[str, str], float] = {}
        # rules no longer configured have no clock to measure from
        for (name, rule), window in windows.items():
            if name != STUCK_ALERT:
                continue
            for alert in self.store.oldest(STUCK_ALERT, rule, self.top_stuck):
                age = (clock - alert.starts_at + window) / 1000
                ages[(rule, alert.labels.get("order_id", ""))] = max(age, 0.0)
        yield self._gauge("orderwatch_stuck_order_age_seconds", ages)

    def _reconcile(self) -> Iterator[Metric]:
        clock = event_clock_ms(self.runtime, self.now)
        windows = rule_windows(self.runtime, self.rules)
        open_ = {r: self.store.firing_count(GAP_ALERT, r) for r in GAP_RULES}
        oldest: dict[str, float] = {r: 0.0 for r in GAP_RULES}
        for rule in GAP_RULES:
            for alert in self.store.oldest(GAP_ALERT, rule, 1):
                window = windows.get((GAP_ALERT, rule), 0)
                oldest[rule] = max((clock - alert.starts_at + window) / 1000, 0.0)
        yield self._gauge("orderwatch_gaps_open", {(r,): n for r, n in open_.items()})
        yield self._gauge("orderwatch_gap_oldest_age_seconds", {(r,): v for r, v in oldest.items()})
        payments: Counter[str] = Counter()
        outbounds: Counter[str] = Counter()
        for t in _values(self.runtime.trackers):
            payments.update(_copy(t.stats.payments))
            outbounds.update(_copy(t.stats.wms_outbounds))
        yield self._counter(
            "orderwatch_payments_success_total", {(k,): v for k, v in payments.items()}
        )
        yield self._counter(
            "orderwatch_wms_outbounds_total", {(k,): v for k, v in outbounds.items()}
        )
        yield self._counter("orderwatch_paid_without_wms_total", self.store.leaks())

    # --- family builders -----------------------------------------------------------------------

    @staticmethod
    def _counter(name: str, values: Mapping[Any, float]) -> Metric:
        fam = _family(name)
        for key, value in sorted(values.items()):
            fam.add_metric(list(key), value)
        return fam  # type: ignore[no-any-return]

    _gauge = _counter

    @staticmethod
    def _histogram(name: str, hists: dict[Any, list[Histogram]], bounds: Sequence[float]) -> Metric:
        fam = _family(name)
        for key, group in sorted(hists.items()):
            labels = [key] if isinstance(key, str) else list(key)
            buckets, total = _buckets(group, bounds)
            fam.add_metric(labels, buckets, total)
        return fam  # type: ignore[no-any-return]


def build_registry(
    runtime: Runtime,
    store: AlertStore,
    cfg_metrics: MetricsCfg | None = None,
    *,
    rules: RuleSet | None = None,
    process: bool = True,
    now: Callable[[], float] = time.time,
) -> CollectorRegistry:
    """A fresh registry with the orderwatch collector (and the process collector)."""
    registry = CollectorRegistry()
    top = cfg_metrics.top_stuck if cfg_metrics is not None else 20
    registry.register(OrderwatchCollector(runtime, store, top, rules=rules, now=now))
    if process:
        ProcessCollector(registry=registry)
    return registry
