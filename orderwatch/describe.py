"""`orderwatch check-config`: what a valid config would run, in plain words, secrets redacted."""

from __future__ import annotations

from urllib.parse import urlsplit

from orderwatch.config import Config, FileSource, KafkaSource, SimulatorSource
from orderwatch.durations import format_duration_ms as fmt


def _redact(url: str | None) -> str:
    """Scheme and host only: webhook URLs carry their key in the path or query, and a
    password in the user part (`https://user:pass@host/`)."""
    if not url:
        return "-"
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    where = f"{parts.scheme}://{'…@' if '@' in parts.netloc else ''}{host}"
    return f"{where}/…" if parts.path not in ("", "/") or parts.query else where


#: What the config schema (CONTRACT §5) holds but this build does not run yet.
NOT_BUILT = "breakers, switches, notifiers, alert routing, the switch API"


def describe(cfg: Config) -> str:
    lines = ["config OK", ""]
    lines.append(
        f"event time: lateness {fmt(cfg.lateness)}, idle after {fmt(cfg.idle_after)}, "
        f"display zone {cfg.timezone}, naive timestamps "
        + (f"read as {cfg.assume_timezone}" if cfg.assume_timezone else "rejected")
    )
    lines.append("sources:")
    for s in cfg.sources or []:
        if isinstance(s, KafkaSource):
            lines.append(
                f"  kafka {','.join(s.brokers)} topics "
                + ", ".join(f"{t}→{k}" for t, k in s.topics.items())
            )
        elif isinstance(s, FileSource):
            mode = "follow" if s.follow else "read once"
            lines.append(f"  file {s.path} ({s.format}, {s.type or 'mixed'}, {mode})")
        elif isinstance(s, SimulatorSource):
            lines.append(
                f"  simulator {s.rate:g} events/s at {s.speed:g}x, scenarios: "
                + (", ".join(s.scenarios) or "none")
            )
    if not cfg.sources:
        lines.append("  (none: `run` would use the embedded simulator)")
    lines.append("stuck rules:")
    for r in cfg.rules.stuck:
        filt = ""
        if r.channels:
            filt += f" channels={','.join(r.channels)}"
        if r.warehouses:
            filt += f" warehouses={','.join(r.warehouses)}"
        lines.append(
            f"  {r.name}: {'/'.join(r.statuses)} longer than {fmt(r.max_dwell)} "
            f"since {r.since} → {r.severity}{filt}"
        )
        if r.description:
            lines.append(f"    next step: {r.description}")
        if r.runbook_url:
            lines.append(f"    runbook: {r.runbook_url}")
    lines.append("gap rules:")
    for name in ("paid_without_wms", "wms_without_payment", "payment_not_applied"):
        g = getattr(cfg.rules.gaps, name)
        lines.append(f"  {name}: " + (f"within {fmt(g.within)} → {g.severity}" if g else "off"))
        if g and g.runbook_url:
            lines.append(f"    runbook: {g.runbook_url}")
    off = set(cfg.rules.anomalies.disabled)
    lines.append(
        f"anomalies ({cfg.rules.anomalies.severity}): "
        + ", ".join(
            k
            for k in (
                "illegal_transition",
                "shipped_without_tracking",
                "conflicting_tracking",
                "amount_mismatch",
                "duplicate_payment",
            )
            if k not in off
        )
    )
    lines.append(f"fulfilment SLA (pay → collect): {fmt(cfg.rules.fulfilment_sla)}")
    for verb, changes in (("allows", cfg.lifecycle.allow), ("forbids", cfg.lifecycle.forbid)):
        if changes:
            pairs = (f"{old}→{new}" for old, news in changes.items() for new in news)
            lines.append(f"lifecycle also {verb}: " + ", ".join(pairs))
    if cfg.status_map:
        lines.append("status map: " + ", ".join(f"{k}→{v}" for k, v in cfg.status_map.items()))
    lines.append("alerts: printed on the console (always); GET /v1/alerts")
    lines.append(f"http: {cfg.http.listen} (read-only API and /metrics)")
    kept = "alerts kept in memory only" if cfg.state.alert_store == "memory" else "alerts.db"
    resume = "on" if cfg.state.recovery else "off: a restart rebuilds the orders from its input"
    lines.append(
        f"state dir: {cfg.state.dir} ({kept}); recovery {resume}; shards: {cfg.engine.shards}"
    )
    lines += ["", f"validated, not run by this build ({NOT_BUILT}):"]
    for b in cfg.breakers:
        watch = f"route {b.route}" if b.route else f"backlog in {b.backlog.status}"  # type: ignore[union-attr]
        lines.append(f"  breaker {b.name}: {watch} → switches {', '.join(b.switches) or '-'}")
    if cfg.switches:
        lines.append("  switches: " + ", ".join(cfg.switches))
    for n in cfg.notifiers:
        if n.kind == "console":
            continue  # that one is built: the console line above
        match = " when " + ",".join(f"{k}={v}" for k, v in n.match.items()) if n.match else ""
        signed = " (signed)" if n.secret else ""
        lines.append(f"  notifier {n.kind} {_redact(n.url)}{signed}{match}")
    rt = cfg.routing
    lines.append(
        f"  routing: group by {','.join(rt.group_by)}, wait {fmt(rt.group_wait)}, "
        f"interval {fmt(rt.group_interval)}, repeat {fmt(rt.repeat_interval)}"
    )
    token = str(cfg.http.token_file) if cfg.http.token_file else f"${cfg.http.token_env}"
    lines.append(f"  http token (for the switch API) from {token}")
    return "\n".join(lines)
