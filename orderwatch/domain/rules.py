"""Rules compiled from the config into the plain, immutable shapes the tracker runs."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from orderwatch.domain.lifecycle import StateMachine

if TYPE_CHECKING:
    from orderwatch.config import Config

# alertname per family; `rule` names the specific rule.
STUCK_ALERT = "OrderStuck"
GAP_ALERT = "OrderGap"
ANOMALY_ALERT = "OrderAnomaly"

PAID_WITHOUT_WMS = "paid_without_wms"
WMS_WITHOUT_PAYMENT = "wms_without_payment"
PAYMENT_NOT_APPLIED = "payment_not_applied"
GAP_RULES = (PAID_WITHOUT_WMS, WMS_WITHOUT_PAYMENT, PAYMENT_NOT_APPLIED)

ILLEGAL_TRANSITION = "illegal_transition"
SHIPPED_WITHOUT_TRACKING = "shipped_without_tracking"
CONFLICTING_TRACKING = "conflicting_tracking"
AMOUNT_MISMATCH = "amount_mismatch"
DUPLICATE_PAYMENT = "duplicate_payment"
ANOMALIES = (
    ILLEGAL_TRANSITION,
    SHIPPED_WITHOUT_TRACKING,
    CONFLICTING_TRACKING,
    AMOUNT_MISMATCH,
    DUPLICATE_PAYMENT,
)


@dataclass(frozen=True, slots=True)
class StuckSpec:
    index: int
    name: str
    statuses: frozenset[str]
    max_dwell_ms: int
    since_entered: bool  # False: the clock restarts at every order/WMS/logistics event
    severity: str
    channels: frozenset[str] | None = None
    warehouses: frozenset[str] | None = None
    summary: str | None = None  # templates (`config.TEMPLATE_FIELDS`)
    description: str | None = None
    runbook_url: str | None = None

    def applies_to(self, channel: str | None, warehouse: str | None) -> bool:
        if self.channels is not None and channel not in self.channels:
            return False
        return self.warehouses is None or warehouse in self.warehouses


@dataclass(frozen=True, slots=True)
class GapSpec:
    name: str
    within_ms: int
    severity: str
    runbook_url: str | None = None


@dataclass(frozen=True)
class RuleSet:
    stuck: tuple[StuckSpec, ...] = ()
    gaps: dict[str, GapSpec] = field(default_factory=dict)
    anomalies: dict[str, str] = field(default_factory=dict)  # enabled kind -> severity
    machine: StateMachine = field(default_factory=StateMachine.build)
    fulfilment_sla_ms: int = 4 * 3_600_000
    terminal_retention_ms: int = 3_600_000
    order_ttl_ms: int = 30 * 86_400_000
    dedup_horizon_ms: int = 86_400_000
    timeline_events: int = 20
    pack_after: int = 0  # orders unpacked at once before the idle ones are packed (0: never)
    pack_compression: bool = True  # zstd with a dictionary trained on the shard's orders
    timezone: str = "Asia/Shanghai"

    @property
    def longest_window_ms(self) -> int:
        """The longest stuck dwell or gap window: no rule's deadline lies further than this
        from its clock (an event time of the order)."""
        windows = [s.max_dwell_ms for s in self.stuck] + [g.within_ms for g in self.gaps.values()]
        return max(windows, default=0)

    @classmethod
    def from_config(cls, cfg: Config) -> RuleSet:
        r = cfg.rules
        stuck = tuple(
            StuckSpec(
                index=i,
                name=s.name,
                statuses=frozenset(s.statuses),
                max_dwell_ms=s.max_dwell,
                since_entered=s.since == "entered",
                severity=s.severity,
                channels=frozenset(s.channels) if s.channels is not None else None,
                warehouses=frozenset(s.warehouses) if s.warehouses is not None else None,
                summary=s.summary,
                description=s.description,
                runbook_url=s.runbook_url,
            )
            for i, s in enumerate(r.stuck)
        )
        gaps = {
            name: GapSpec(name, g.within, g.severity, g.runbook_url)
            for name in GAP_RULES
            if (g := getattr(r.gaps, name)) is not None
        }
        anomalies = {
            kind: r.anomalies.severities.get(kind, r.anomalies.severity)  # type: ignore[call-overload]
            for kind in ANOMALIES
            if kind not in r.anomalies.disabled
        }
        machine = StateMachine.build(cfg.lifecycle.allow, cfg.lifecycle.forbid)
        return cls(
            stuck=stuck,
            gaps=gaps,
            anomalies=anomalies,
            machine=machine,
            fulfilment_sla_ms=r.fulfilment_sla,
            terminal_retention_ms=cfg.engine.terminal_retention,
            order_ttl_ms=cfg.engine.order_ttl,
            dedup_horizon_ms=cfg.engine.dedup_horizon,
            timeline_events=cfg.engine.timeline_events,
            pack_after=cfg.engine.pack_after,
            pack_compression=cfg.engine.pack_compression,
            timezone=cfg.timezone,
        )

    def could_fire(self, labels: Mapping[str, str]) -> bool:
        """Could these rules have fired an alert with these labels (and so also resolve it)?
        Not when its rule is gone, its severity changed or its filter no longer matches."""
        alertname, rule, severity = (labels.get(k) for k in ("alertname", "rule", "severity"))
        if alertname == STUCK_ALERT:
            return any(
                s.name == rule
                and s.severity == severity
                and s.applies_to(labels.get("channel"), labels.get("warehouse"))
                for s in self.stuck
            )
        if alertname == GAP_ALERT:
            gap = self.gaps.get(rule or "")
            return gap is not None and gap.severity == severity
        return True  # anomalies are one-shots: they never stay firing
