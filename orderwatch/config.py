"""The YAML config (CONTRACT §8) as pydantic models, with `${VAR}` from the environment.

`load_config` either returns a valid `Config` or raises `ConfigError` listing every problem
with the dotted path of the bad key (`rules.stuck[1].max_dwell: ...`).
"""

from __future__ import annotations

import os
import re
import string
from datetime import UTC, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from orderwatch.connectors.raw import file_source_name
from orderwatch.domain.lifecycle import STATUSES
from orderwatch.durations import parse_duration_ms, parse_instant_ms
from orderwatch.simulate.scenarios import check_name, check_order_total, check_share

Severity = Literal["info", "warning", "critical"]
EventType = Literal["order", "payment", "wms", "logistics", "access_log"]
Status = Literal[STATUSES]  # type: ignore[valid-type]
AnomalyKind = Literal[
    "illegal_transition",
    "shipped_without_tracking",
    "conflicting_tracking",
    "amount_mismatch",
    "duplicate_payment",
]
# Milliseconds, written as "90s", "30m", "48h".
Duration = Annotated[int, BeforeValidator(parse_duration_ms), Field(ge=0)]
PositiveDuration = Annotated[int, BeforeValidator(parse_duration_ms), Field(gt=0)]
Name = Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")]


class ConfigError(Exception):
    """The config cannot run; `errors` holds one `path: message` line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        super().__init__("invalid config:\n" + "\n".join(f"  {e}" for e in errors))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- sources -------------------------------------------------------------------------------


class KafkaSource(_Model):
    kind: Literal["kafka"]
    name: str | None = None
    brokers: list[str] = Field(min_length=1)
    topics: dict[str, Literal[EventType, "mixed"]] = Field(min_length=1)
    starting_offset: Literal["beginning", "end"] = "beginning"
    add_config: dict[str, str] = Field(default_factory=dict)


# Lines per chunk of a replay. Bigger chunks give each shard longer runs of its own events
# between switches, which keeps its state in the CPU caches: the trackers take ~17% less time
# per event at 16,000 than at 2,000 (same alerts). Live sources keep `batch_size` (2,000): a
# chunk is only as big as what has arrived, and a smaller one bounds the delay it adds.
REPLAY_BATCH_LINES = 16_000


class FileSource(_Model):
    kind: Literal["file"]
    name: str | None = None
    path: Path
    follow: bool = False
    type: EventType | None = None  # bind the file to one event type (`type` may be omitted)
    format: Literal["jsonl", "nginx"] = "jsonl"
    batch_size: int = Field(default=2000, ge=1, le=100_000)

    @property
    def source_name(self) -> str:
        return self.name or file_source_name(self.path)

    @field_validator("format")
    @classmethod
    def _nginx_is_access_log(cls, v: str, info: ValidationInfo) -> str:
        if v == "nginx" and info.data.get("type") not in (None, "access_log"):
            raise ValueError("format 'nginx' carries access_log events only")
        return v

    @field_validator("path")
    @classmethod
    def _exists(cls, v: Path, info: ValidationInfo) -> Path:
        """Only when the config is to run here (`for_run`): `run` and `check-config`, not a
        replay, which takes only the rules from it."""
        if info.context and info.context.get("for_run"):
            if not v.exists():
                glob = any(c in str(v) for c in "*?[")
                hint = " (patterns are not expanded: list each file as a source)" if glob else ""
                raise ValueError(f"file not found: {v.absolute()}{hint}")
            if not v.is_file() or not os.access(v, os.R_OK):
                raise ValueError(f"not a readable file: {v.absolute()}")
        return v


SIMULATOR_NAME = "simulator"  # a simulator source's name when its config gives none


class SimulatorSource(_Model):
    kind: Literal["simulator"]
    name: str | None = None  # default "simulator"
    rate: float = Field(default=200.0, gt=0)  # events per wall second
    speed: float = Field(default=60.0, gt=0)  # simulated seconds per wall second
    seed: int = 1
    # The simulator's own checks (what `simulate --scenario` takes), each at its key's path.
    scenarios: Annotated[
        dict[
            Annotated[str, AfterValidator(check_name)],
            Annotated[float, AfterValidator(check_share)],
        ],
        AfterValidator(check_order_total),
    ] = Field(default_factory=dict)
    start: str | None = None  # RFC 3339 start of simulated time; default: now

    @field_validator("start")
    @classmethod
    def _instant(cls, v: str | None) -> str | None:
        if v is not None:
            parse_instant_ms(v)  # as `simulate --start`: with a UTC offset, no zone guessed
        return v

    @property
    def source_name(self) -> str:
        return self.name or SIMULATOR_NAME


Source = Annotated[KafkaSource | FileSource | SimulatorSource, Field(discriminator="kind")]


# --- rules ---------------------------------------------------------------------------------


def _template(text: str | None) -> str | None:
    """A rule's own wording: `{name}` placeholders from `TEMPLATE_FIELDS` only, checked here
    (an unknown one used to stop the dataflow when the rule first fired)."""
    if text is None:
        return None
    try:
        fields = [(name, spec) for _, name, spec, _ in string.Formatter().parse(text)]
    except ValueError as exc:  # e.g. a lone `{`
        raise ValueError(f"{exc} (write {{{{ and }}}} for literal braces)") from None
    names = {name for name, _ in fields if name is not None}
    widths = [int(n) for _, spec in fields for n in re.findall(r"\d+", spec or "")]
    if max(widths, default=0) > 200:  # `{dwell:>999999999}`: a gigabyte per alert
        raise ValueError(f"{text!r} pads a placeholder to {max(widths):,} characters (at most 200)")
    unknown = sorted(names - set(TEMPLATE_FIELDS))
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}}; use {', '.join(TEMPLATE_FIELDS)}")
    try:  # every field is a str when the alert fires: a spec or conversion a str refuses
        text.format(**dict.fromkeys(TEMPLATE_FIELDS, "x"))
    except (ValueError, KeyError, IndexError, AttributeError) as exc:
        raise ValueError(f"{text!r} cannot be filled in: {exc!r}") from None
    return text


# What a stuck rule's `summary` and `description` may say, filled in when it fires.
TEMPLATE_FIELDS = (
    "order_id",
    "status",
    "dwell",
    "limit",
    "channel",
    "warehouse",
    "tracking_no",
    "timeline",
)
Template = Annotated[str | None, AfterValidator(_template)]
RunbookUrl = Annotated[str | None, Field(pattern=r"^https?://\S+$")]


class StuckRule(_Model):
    name: Name
    statuses: list[Status] = Field(min_length=1)
    max_dwell: PositiveDuration
    since: Literal["entered", "last_update"] = "entered"
    severity: Severity = "warning"
    channels: list[str] | None = None
    warehouses: list[str] | None = None
    summary: Template = None  # the alert's own wording, and its next step
    description: Template = None
    runbook_url: RunbookUrl = None


class Gap(_Model):
    within: PositiveDuration
    severity: Severity = "warning"
    runbook_url: RunbookUrl = None


class Gaps(_Model):
    paid_without_wms: Gap | None = None
    wms_without_payment: Gap | None = None
    payment_not_applied: Gap | None = None


class Anomalies(_Model):
    severity: Severity = "warning"
    disabled: list[AnomalyKind] = Field(default_factory=list)
    severities: dict[AnomalyKind, Severity] = Field(default_factory=dict)


class Rules(_Model):
    stuck: list[StuckRule] = Field(default_factory=list)
    gaps: Gaps = Field(default_factory=Gaps)
    anomalies: Anomalies = Field(default_factory=Anomalies)
    fulfilment_sla: PositiveDuration = parse_duration_ms("4h")


class Lifecycle(_Model):
    """Changes to the default state machine: `{from_status: [to_status, ...]}`."""

    allow: dict[Status, list[Status]] = Field(default_factory=dict)
    forbid: dict[Status, list[Status]] = Field(default_factory=dict)


# --- breakers, switches, notifiers (validated here; run by their own modules) ---------------


class BreakerWhen(_Model):
    qps_above: float | None = Field(default=None, gt=0)
    error_ratio_above: float | None = Field(default=None, gt=0, le=1)
    slow_ratio_above: float | None = Field(default=None, gt=0, le=1)
    slow_ms: float | None = Field(default=None, gt=0, validate_default=True)
    p99_ms_above: float | None = Field(default=None, gt=0)

    @field_validator("slow_ms")
    @classmethod
    def _slow_needs_ms(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v is None and info.data.get("slow_ratio_above") is not None:
            raise ValueError("slow_ratio_above needs slow_ms")
        return v

    @model_validator(mode="after")
    def _one_signal(self) -> BreakerWhen:
        signals = [self.qps_above, self.error_ratio_above, self.slow_ratio_above, self.p99_ms_above]
        if sum(s is not None for s in signals) != 1:
            raise ValueError(
                "give exactly one of qps_above, error_ratio_above, slow_ratio_above, p99_ms_above"
            )
        return self


class BreakerBacklog(_Model):
    status: Status
    count_above: int | None = Field(default=None, ge=0)
    oldest_above: Duration | None = None


class Breaker(_Model):
    name: Name
    route: str | None = None
    when: BreakerWhen | None = Field(default=None, validate_default=True)
    backlog: BreakerBacklog | None = None
    window: PositiveDuration = parse_duration_ms("10s")
    min_requests: int = Field(default=20, ge=0)
    recovery: PositiveDuration = parse_duration_ms("60s")
    switches: list[Name] = Field(default_factory=list)

    @field_validator("when")
    @classmethod
    def _route_needs_when(cls, v: BreakerWhen | None, info: ValidationInfo) -> BreakerWhen | None:
        if v is None and info.data.get("route") is not None:
            raise ValueError("a route breaker needs `when`")
        return v

    @model_validator(mode="after")
    def _route_or_backlog(self) -> Breaker:
        if (self.route is None) == (self.backlog is None):
            raise ValueError("a breaker watches either a route (with `when`) or a `backlog`")
        return self


class Notifier(_Model):
    kind: Literal["webhook", "alertmanager", "wecom", "dingtalk", "feishu", "slack", "console"]
    name: str | None = None
    url: str | None = Field(default=None, validate_default=True)
    secret: str | None = None
    keyword: str | None = None
    match: dict[str, str] = Field(default_factory=dict)
    mention_mobiles: list[str] = Field(default_factory=list)
    mention_users: list[str] = Field(default_factory=list)
    rate_per_minute: int | None = Field(default=None, gt=0)
    send_resolved: bool = True

    @field_validator("url")
    @classmethod
    def _url_needed(cls, v: str | None, info: ValidationInfo) -> str | None:
        kind = info.data.get("kind")  # absent when `kind` itself is wrong
        if not v and kind not in (None, "console"):
            raise ValueError(f"a {kind} notifier needs `url`")
        if v and not re.match(r"^https?://", v):
            raise ValueError("url must start with http:// or https://")
        return v


class Routing(_Model):
    group_by: list[str] = Field(default_factory=lambda: ["alertname", "rule"])
    group_wait: Duration = parse_duration_ms("30s")
    group_interval: Duration = parse_duration_ms("5m")
    repeat_interval: Duration = parse_duration_ms("4h")


class Http(_Model):
    listen: str = "127.0.0.1:8080"
    token_env: str | None = "ORDERWATCH_TOKEN"
    token_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _host_port(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected host:port, got {v!r}")
        return v

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class State(_Model):
    dir: Path = Path("./state")
    recovery: bool = False  # bytewax snapshots of the dataflow state (resume after restart)
    snapshot_interval: PositiveDuration = parse_duration_ms("30s")
    # memory: alerts are kept only while the daemon runs (the demo: see defaults/demo.yaml)
    alert_store: Literal["file", "memory"] = "file"

    @model_validator(mode="after")
    def _resume_needs_the_file_store(self) -> State:
        # A resumed shard knows which alerts it has fired; a store that forgot them would
        # never show them again, and would announce again what the snapshot did not cover.
        if self.recovery and self.alert_store == "memory":
            raise ValueError("recovery: true needs alert_store: file (the alerts it resumes)")
        return self


class Engine(_Model):
    """Tuning that never changes results."""

    shards: int = Field(default=32, ge=1, le=4096)
    terminal_retention: Duration = parse_duration_ms("1h")
    order_ttl: PositiveDuration = parse_duration_ms("30d")
    dedup_horizon: PositiveDuration = parse_duration_ms("24h")
    timeline_events: int = Field(default=20, ge=1, le=1000)
    # Per shard: once this many more orders were unpacked than the last round left, the ones
    # with no event since that round are packed (0: never).
    pack_after: int = Field(default=1000, ge=0)
    # Packed orders are compressed with a zstd dictionary each shard trains on its own orders.
    pack_compression: bool = True
    max_event_bytes: int = Field(default=65_536, ge=256)
    max_future: Duration = parse_duration_ms("10m")  # live only: reject ts this far ahead


class MetricsCfg(_Model):
    top_stuck: int = Field(default=20, ge=0, le=200)
    max_label_values: int = Field(default=50, ge=1, le=1000)
    channels: list[str] = Field(default_factory=list)  # always labelled; others up to the cap
    routes: list[str] = Field(default_factory=list)


# --- the whole file ------------------------------------------------------------------------


class Config(_Model):
    timezone: str = "Asia/Shanghai"
    assume_timezone: str | None = None
    lateness: Duration = parse_duration_ms("60s")
    idle_after: PositiveDuration = parse_duration_ms("5s")
    sources: list[Source] = Field(default_factory=list)
    status_map: dict[str, Status] = Field(default_factory=dict)
    rules: Rules = Field(default_factory=Rules)
    lifecycle: Lifecycle = Field(default_factory=Lifecycle)
    breakers: list[Breaker] = Field(default_factory=list)
    switches: list[Name] = Field(default_factory=list)
    notifiers: list[Notifier] = Field(default_factory=list)
    routing: Routing = Field(default_factory=Routing)
    http: Http = Field(default_factory=Http)
    state: State = Field(default_factory=State)
    engine: Engine = Field(default_factory=Engine)
    metrics: MetricsCfg = Field(default_factory=MetricsCfg)

    def inputs(self) -> list[Source]:
        """The sources that run: those configured, or else the simulator with its defaults."""
        return list(self.sources) or [SimulatorSource(kind="simulator")]

    def source_names(self) -> list[str]:
        """The names the sources' input carries (Kafka sources do not run in this build)."""
        return [s.source_name for s in self.inputs() if not isinstance(s, KafkaSource)]

    def simulated(self) -> frozenset[str]:
        """Names of the simulator sources: their clock runs `speed`x ahead of the wall's."""
        return frozenset(s.source_name for s in self.inputs() if isinstance(s, SimulatorSource))

    @field_validator("timezone")
    @classmethod
    def _zone(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {v!r} (use an IANA name like Asia/Shanghai)"
            ) from None
        return v

    @field_validator("assume_timezone")
    @classmethod
    def _assumed(cls, v: str | None) -> str | None:
        if v is not None:
            parse_zone(v)
        return v

    @property
    def display_zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


def parse_zone(text: str) -> timezone | ZoneInfo:
    """`+08:00`, `-05:30`, `UTC` or an IANA zone name."""
    m = re.fullmatch(r"([+-])(\d{2}):?(\d{2})", text.strip())
    if m:
        sign = 1 if m.group(1) == "+" else -1
        hours, minutes = int(m.group(2)), int(m.group(3))
        if hours > 23 or minutes > 59:
            raise ValueError(f"UTC offset {text!r} is out of range (-23:59 to +23:59)")
        return timezone(sign * timedelta(hours=hours, minutes=minutes))
    if text.strip().upper() in ("Z", "UTC"):
        return UTC
    try:
        return ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {text!r} (use '+08:00' or an IANA name)") from None


# --- loading -------------------------------------------------------------------------------

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


_QUOTED_ONLY_BELOW = 6  # shorter variable values are redacted only where quoted


class _Expansion:
    """What `_expand` did: unset variables by path, and the values it put in (never shown)."""

    def __init__(self) -> None:
        self.unset: dict[str, list[str]] = {}
        self.used: list[tuple[str, str, str]] = []  # (path, variable, value)

    def redact(self, path: str, message: str) -> str:
        """`message` with the value of any variable used at or under `path` as `${NAME}`."""
        for where, name, value in self.used:
            under = where == path or where.startswith((f"{path}.", f"{path}["))
            if value and (under or path == "(top level)"):
                shown = f"${{{name}}}"
                if len(value) >= _QUOTED_ONLY_BELOW:
                    message = message.replace(value, shown)
                else:  # `e` would garble every word: only where it is quoted as the input
                    parts = re.split(rf"(?<=['\"]){re.escape(value)}(?=['\"])", message)
                    message = shown.join(parts)
        return message


def _expand(node: Any, path: str, env: dict[str, str], done: _Expansion) -> Any:
    """Replace `${VAR}` / `${VAR:-default}` in every string (an unset one by "")."""
    if isinstance(node, dict):
        return {k: _expand(v, _join(path, str(k)), env, done) for k, v in node.items()}
    if isinstance(node, list):
        return [_expand(v, f"{path}[{i}]", env, done) for i, v in enumerate(node)]
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env:
                done.used.append((path, name, env[name]))
                return env[name]
            if default is not None:
                return default
            done.unset.setdefault(path, []).append(name)
            return ""

        return _VAR.sub(sub, node)
    return node


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("kafka", "file", "simulator") and out.endswith("]"):
            continue  # pydantic's discriminator tag, not a key the user wrote
        elif part == "[key]":
            continue  # pydantic's marker of a bad mapping key; the key itself came before
        else:
            out = _join(out, str(part))
    return out or "(top level)"


def _across_keys(data: dict[str, Any], for_run: bool) -> list[str]:
    """Checks that relate several keys, made on the document itself, so that they are reported
    with every other error, not only once those are fixed (pydantic runs a list's validator
    only when all its items are valid)."""
    return (
        _duplicate_rule_names(data)
        + _duplicate_sources(data)
        + _undeclared_switches(data)
        + _unbuilt(data, for_run)
    )


def _duplicate_sources(data: dict[str, Any]) -> list[str]:
    """An empty `sources` list (it would run the simulator), two sources of one name, and one
    file read as two sources (every event counted twice).
    Metrics, dead letters, logs and recovery offsets know a source by its name; two files
    named alike in different folders (`oms/events.jsonl`, `wms/events.jsonl`) both defaulted
    to `file:events.jsonl` and could not be told apart."""
    sources = data.get("sources")
    if sources == []:  # leaving the key out runs the demo simulator; an empty list is a slip
        return [
            "sources: an empty list; list a source, or leave `sources` out to run the "
            "built-in simulator"
        ]
    seen: dict[str, int] = {}
    files: dict[str, int] = {}
    errors = []
    for i, src in enumerate(sources if isinstance(sources, list) else []):
        if not isinstance(src, dict):
            continue
        path = src.get("path") if src.get("kind") == "file" else None
        if isinstance(path, str):
            real = os.path.realpath(path)  # the same file by a link or another spelling
            if real in files:
                errors.append(
                    f"sources[{i}].path: {path!r} is the file sources[{files[real]}] reads; "
                    "every event in it would be counted twice"
                )
            files.setdefault(real, i)
        name, given = src.get("name"), True
        if name is None and isinstance(path, str):
            name, given = file_source_name(path), False
        elif name is None and src.get("kind") == "simulator":
            name, given = SIMULATOR_NAME, False
        if not isinstance(name, str):
            continue
        if name in seen:
            how = "" if given else " (the default, from the file name)"
            errors.append(
                f"sources[{i}].name: {name!r}{how} is also the name of sources[{seen[name]}]; "
                "metrics, dead letters and logs could not tell them apart: give each a `name`"
            )
        else:
            seen[name] = i
    return errors


def _duplicate_rule_names(data: dict[str, Any]) -> list[str]:
    rules = data.get("rules")
    stuck = rules.get("stuck") if isinstance(rules, dict) else None
    seen: set[str] = set()
    errors = []
    for i, rule in enumerate(stuck if isinstance(stuck, list) else []):
        name = rule.get("name") if isinstance(rule, dict) else None
        if isinstance(name, str):
            if name in seen:
                errors.append(f"rules.stuck[{i}].name: duplicate stuck rule name {name!r}")
            elif name in Gaps.model_fields:  # alerts are told apart by (order, rule) in a shard
                errors.append(
                    f"rules.stuck[{i}].name: {name!r} is a gap rule's name; give the stuck "
                    "rule another"
                )
            seen.add(name)
    return errors


def _unbuilt(data: dict[str, Any], for_run: bool) -> list[str]:
    """What this build validates but cannot run: refused before `run` starts, and by
    `check-config`, which tells what would run. (A replay only takes the rules.)"""
    sources = data.get("sources")
    if not for_run or not isinstance(sources, list):
        return []
    return [
        f"sources[{i}].kind: kafka sources are not available in this build yet; "
        "use a file (follow: true) or the simulator"
        for i, s in enumerate(sources)
        if isinstance(s, dict) and s.get("kind") == "kafka"
    ]


def _undeclared_switches(data: dict[str, Any]) -> list[str]:
    """A breaker may only flip switches listed in `switches`."""
    declared = data.get("switches", [])  # the default: none
    breakers = data.get("breakers")
    if not isinstance(declared, list) or not isinstance(breakers, list):
        return []
    errors = []
    for i, breaker in enumerate(breakers):
        flips = breaker.get("switches") if isinstance(breaker, dict) else None
        for j, name in enumerate(flips if isinstance(flips, list) else []):
            if isinstance(name, str) and name not in declared:
                errors.append(f"breakers[{i}].switches[{j}]: {name!r} is not listed in `switches`")
    return errors


def validate_config(
    data: Any, env: dict[str, str] | None = None, *, for_run: bool = False
) -> Config:
    """Validate an already-parsed YAML document; `for_run` (the config is to run here, for
    `run` and `check-config`): file sources must exist, and only source kinds this build has.

    All problems come together: unset `${VAR}`s after the other errors (an error at the path
    of an unset variable is left out, it is about the "" put in its place).
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(["(top level): expected a mapping of keys"])
    done = _Expansion()
    data = _expand(data, "", dict(os.environ if env is None else env), done)
    errors: list[str] = []
    try:
        cfg = Config.model_validate(data, context={"for_run": for_run})
    except ValidationError as exc:
        for e in exc.errors():
            path = _loc(e["loc"])
            if path not in done.unset:
                errors.append(f"{path}: {done.redact(path, e['msg'])}")
    for error in _across_keys(data, for_run):  # they quote values too: a name may be a ${VAR}
        path = error.partition(": ")[0]
        errors.append(done.redact(path, error))
    for path, names in done.unset.items():
        errors += [f"{path}: environment variable {name} is not set" for name in names]
    if errors:
        raise ConfigError(errors)
    return cfg


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's own rule, which PyYAML does not enforce: a mapping's keys are unique. A second
    `rules:` in one file silently replaced the first."""


def _unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> Any:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *defaults` may be overridden, by design
        key = loader.construct_object(key_node)
        if isinstance(key, str | int | float | bool) and key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_config(
    path: str | Path | None, env: dict[str, str] | None = None, *, for_run: bool = False
) -> Config:
    """Load and validate a config file; None gives the embedded default (simulator demo).

    `for_run` (for `run` and `check-config`): a file source must name a readable file, and a
    source must be of a kind this build runs.
    """
    if path is None:
        from importlib.resources import files

        text = files("orderwatch").joinpath("defaults/demo.yaml").read_text("utf-8")
        source = "embedded default"
    else:
        try:
            text = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        source = str(path)
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as exc:
        raise ConfigError([f"{source}: not valid YAML at {_yaml_problem(exc)}"]) from None
    return validate_config(data, env, for_run=for_run)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """Where and what, without PyYAML's snippet of the offending line: that line may hold a
    webhook key or a token written into the file, and errors end up in CI logs and tickets."""
    mark, problem = getattr(exc, "problem_mark", None), getattr(exc, "problem", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
    context, at = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    if context and at:
        problem = f"{problem} ({context} at line {at.line + 1}, column {at.column + 1})"
    return f"{where}: {problem or type(exc).__name__}"
