"""The read side of the HTTP API (CONTRACT §6): health, metrics, alerts, stuck orders, timelines.

Handlers run on the control plane's asyncio loop and only read: the alert store, the
injected Prometheus registry and the trackers of this process. Every error, including an
unknown path, a wrong method and an unexpected exception, is JSON `{"error": "..."}`; only a
request aiohttp's HTTP parser refuses (a header over 8 KiB, raw non-ASCII bytes in the URL)
gets aiohttp's own plain-text 400: it never reaches the application, and aiohttp has no
supported hook to shape that reply (README, HTTP API).

Query parameters are checked in one place, `checked_query`, against `PARAMETERS`: a /v1
endpoint takes only the parameters listed for it, each once, non-empty and well-formed, and a
name (rule, severity, alertname) only from the values the running config can produce.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, get_args
from urllib.parse import quote

import aiohttp
import orjson
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from orderwatch.alerts.store import AlertStore
from orderwatch.config import Severity
from orderwatch.control.timeline import find_order, local_iso, timeline
from orderwatch.domain.alert import AlertChange, rfc3339_ms
from orderwatch.domain.rules import ANOMALY_ALERT, GAP_ALERT, STUCK_ALERT, RuleSet
from orderwatch.domain.wording import timeline_path
from orderwatch.events import MAX_ORDER_ID
from orderwatch.metrics import event_clock_ms, rule_windows
from orderwatch.runtime import Runtime

log = structlog.get_logger(__name__)

STUCK_LIMIT_DEFAULT = 50
STUCK_LIMIT_MAX = 1000
ALERTS_LIMIT_MAX = 100_000
RECENT_ANOMALIES = 100
SEVERITIES: tuple[str, ...] = get_args(Severity)
ALERTNAMES = (STUCK_ALERT, GAP_ALERT, ANOMALY_ALERT)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# orjson embeds each alert's annotations as the JSON they are kept as (no decoding): with
# 30,000 alerts firing, GET /v1/alerts takes 0.13 s instead of 0.31 s with stdlib json, and
# the control-plane loop (store writes, /metrics) waits for it that much less
_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS


@dataclass(frozen=True)
class Context:
    runtime: Runtime
    store: AlertStore
    registry: CollectorRegistry
    timezone: str
    rules: RuleSet  # the running config's: rule names in queries are checked against it


CONTEXT = web.AppKey("orderwatch", Context)


def json_response(body: Any, status: int = 200, **kwargs: Any) -> web.Response:
    return web.Response(
        body=orjson.dumps(body, option=_DUMPS_OPTIONS),
        status=status,
        content_type="application/json",
        charset="utf-8",
        **kwargs,
    )


class ApiError(Exception):
    """An error reply: `{"error": message, ...extra}` with an HTTP status; raise from handlers."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {"error": message, **extra}


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn aiohttp's plain-text 404/405 and any unexpected exception into JSON errors."""
    try:
        return await handler(request)
    except ApiError as exc:
        return json_response(exc.body, status=exc.status)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            message = (
                f"method {request.method} is not allowed on {request.path} (allowed: {allowed})"
            )
            return json_response({"error": message}, status=405, headers={"Allow": allowed})
        if isinstance(exc, web.HTTPNotFound):
            message = f"no such endpoint: {request.method} {request.path}"
        else:
            message = exc.reason
        return json_response({"error": message}, status=exc.status)
    except Exception as exc:
        log.exception("http_handler_failed", path=request.path, method=request.method)
        return json_response(
            {"error": f"internal error while serving {request.path}: {type(exc).__name__}"},
            status=500,
        )


def _ctx(request: web.Request) -> Context:
    return request.app[CONTEXT]


# --- query parameters ------------------------------------------------------------------------

Reader = Callable[[Context, str], object]
"""Reads one query parameter's non-empty text into its value; raises `BadValue` if it is bad."""


class BadValue(ValueError):
    """A query parameter's value is wrong: the message says why, `allowed` lists the choices."""

    def __init__(self, message: str, allowed: Iterable[str] | None = None) -> None:
        super().__init__(message)
        self.allowed = None if allowed is None else list(allowed)


def _bad(name: str, message: str, allowed: Iterable[str] | None = None) -> ApiError:
    extra: dict[str, Any] = {"parameter": name}
    if allowed is not None:
        extra["allowed"] = list(allowed)
    return ApiError(400, message, **extra)


def _show(raw: str, width: int = 40) -> str:
    return repr(raw if len(raw) <= width else raw[:width] + "…")


def _one_of(names: Callable[[Context], Sequence[str]], why: str) -> Reader:
    """A reader accepting only `names(ctx)`."""

    def read(ctx: Context, raw: str) -> str:
        allowed = names(ctx)
        if raw not in allowed:
            raise BadValue(f"{why} (allowed: {', '.join(allowed) or 'none'})", allowed)
        return raw

    return read


def _rule_names(ctx: Context) -> list[str]:
    rules = ctx.rules
    return list(dict.fromkeys([*(s.name for s in rules.stuck), *rules.gaps, *rules.anomalies]))


def _stuck_rule_names(ctx: Context) -> list[str]:
    return list(dict.fromkeys(s.name for s in ctx.rules.stuck))


def _limit(maximum: int) -> Reader:
    """A reader of an integer from 1 to `maximum`."""

    def read(ctx: Context, raw: str) -> int:
        value = int(raw) if raw.isascii() and raw.isdigit() and len(raw) <= 9 else 0  # no "+1"
        if not 1 <= value <= maximum:
            raise BadValue(f"must be an integer from 1 to {maximum}")
        return value

    return read


def _order_id(ctx: Context, raw: str) -> str:
    if len(raw) > MAX_ORDER_ID:
        raise BadValue(f"{len(raw)} characters; at most {MAX_ORDER_ID} allowed")
    return raw


PARAMETERS: dict[str, dict[str, Reader]] = {
    "/v1/alerts": {
        "alertname": _one_of(lambda ctx: ALERTNAMES, "not an alertname"),
        "rule": _one_of(_rule_names, "no rule of that name in the running config"),
        "severity": _one_of(lambda ctx: SEVERITIES, "not a severity"),
        "order_id": _order_id,
        "limit": _limit(ALERTS_LIMIT_MAX),
    },
    "/v1/orders/stuck": {
        "rule": _one_of(_stuck_rule_names, "no stuck rule of that name in the running config"),
        "limit": _limit(STUCK_LIMIT_MAX),
    },
    "/v1/orders/{order_id}": {},
}
"""The query parameters each /v1 route accepts (a /v1 route not listed accepts none)."""

QUERY = web.RequestKey("query", dict[str, Any])  # a /v1 request's checked parameters


def _read_query(request: web.Request, readers: dict[str, Reader]) -> dict[str, Any]:
    """The request's query parameters read by `readers`; any unknown, repeated, empty or bad
    one is a 400 naming it (a typo must not silently return unfiltered data)."""
    ctx = _ctx(request)
    out: dict[str, Any] = {}
    for name in dict.fromkeys(request.query):
        if name not in readers:
            accepted = ", ".join(readers) or "none"
            raise _bad(name, f"unknown query parameter {name!r} (accepted: {accepted})", readers)
        values = request.query.getall(name)
        if len(values) > 1:
            raise _bad(name, f"query parameter {name!r} is given {len(values)} times; give it once")
        raw = values[0]
        if not raw:
            raise _bad(name, f"query parameter {name!r} is empty; give a value or leave it out")
        try:
            out[name] = readers[name](ctx, raw)
        except BadValue as exc:
            raise _bad(name, f"bad {name} {_show(raw)}: {exc}", exc.allowed) from None
    return out


@web.middleware
async def to_process_0(request: web.Request, handler: Handler) -> web.StreamResponse:
    """In a cluster only process 0 holds the alert store: the other processes pass their /v1
    requests on to it, so every process's port gives the same answers. (A request another
    process sent for an order's timeline, marked `PROXIED`, is answered here.)"""
    runtime = _ctx(request).runtime
    if (
        runtime.process_id == 0
        or not runtime.peers
        or PROXIED in request.headers
        or not request.path.startswith("/v1/")
    ):
        return await handler(request)
    primary = runtime.peers[0]  # the other processes, in order: process 0 comes first
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.request(request.method, f"{primary}{request.rel_url}") as reply,
        ):
            body = await reply.read()
            headers = {k: v for k, v in reply.headers.items() if k == "Allow"}
            return web.Response(
                body=body, status=reply.status, content_type=reply.content_type, headers=headers
            )
    except (aiohttp.ClientError, TimeoutError):
        raise ApiError(
            503, f"process 0 ({primary}) serves /v1 for this cluster and did not answer"
        ) from None


@web.middleware
async def checked_query(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Check a /v1 request's query against `PARAMETERS` before its handler runs."""
    resource = request.match_info.route.resource
    path = "" if resource is None else resource.canonical
    if path.startswith("/v1/"):
        request[QUERY] = _read_query(request, PARAMETERS.get(path, {}))
    return await handler(request)


# --- health and metrics ----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = _ctx(request).runtime
    missing = []
    if rt.stopping.is_set():  # a load balancer should send no more traffic here
        missing.append("stopping (SIGTERM or Ctrl-C): finishing the last epoch")
    if not rt.dataflow_running:
        missing.append("dataflow not running")
    if not rt.sources_connected:
        missing.append("sources not connected")
    else:
        missing += rt.source_problems()  # e.g. a followed file that is gone
    if rt.alert_store_error is not None:
        missing.append(
            f"alert store not writable ({rt.alerts_waiting} alert changes waiting): "
            f"{rt.alert_store_error}"
        )
    if missing:
        return json_response(
            {
                "status": "not ready",
                "error": "not ready: " + ", ".join(missing),
                "missing": missing,
            },
            status=503,
        )
    return json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encoder(_ctx(request).registry)
    return web.Response(body=body, headers={"Content-Type": content_type})


# --- alerts ----------------------------------------------------------------------------------


def _matches(alert: AlertChange, filters: dict[str, str]) -> bool:
    return all(alert.labels.get(k) == v for k, v in filters.items())


async def alerts(request: web.Request) -> web.Response:
    """Firing alerts matching the label filters, oldest first; with `limit`, only the first
    ones (`total` says how many match): in a storm, all of them is a large answer."""
    query: dict[str, Any] = request[QUERY]
    limit: int | None = query.get("limit")
    filters: dict[str, str] = {k: v for k, v in query.items() if k != "limit"}
    store = _ctx(request).store
    name = filters.get("alertname")
    candidates = store.oldest(name, filters.get("rule")) if name else store.firing()
    matching = [a for a in candidates if _matches(a, filters)]
    firing = [a.to_json(packed=True) for a in matching[:limit]]
    shots = [
        a.to_json(packed=True)
        for a in store.recent_one_shots(RECENT_ANOMALIES)
        if _matches(a, filters)
    ]
    body: dict[str, Any] = {
        "alerts": firing,
        "count": len(firing),
        "total": len(matching),
        "anomalies": shots,
        "filters": filters,
    }
    if limit is not None:
        body["limit"] = limit
    return json_response(body)


async def stuck_orders(request: web.Request) -> web.Response:
    query = request[QUERY]
    limit: int = query.get("limit", STUCK_LIMIT_DEFAULT)
    rule: str | None = query.get("rule")
    ctx = _ctx(request)
    clock = event_clock_ms(ctx.runtime)
    windows = rule_windows(ctx.runtime, ctx.rules)

    def window_of(a: AlertChange) -> int | None:
        return windows.get((STUCK_ALERT, a.labels.get("rule", "")))

    # Oldest first: by when the order's clock started (startsAt - max_dwell), across rules
    shift = {r: w for (name, r), w in windows.items() if name == STUCK_ALERT}
    stuck = ctx.store.oldest(STUCK_ALERT, rule, limit, shift=shift)
    orders = []
    for a in stuck:
        notes = a.annotations
        window = window_of(a)
        age = None if window is None else max(clock - a.starts_at + window, 0) / 1000
        orders.append(
            {
                "order_id": a.labels.get("order_id"),
                "rule": a.labels.get("rule"),
                "severity": a.labels.get("severity"),
                "channel": a.labels.get("channel"),
                "warehouse": a.labels.get("warehouse"),
                "status": notes.get("status"),
                "summary": notes.get("summary"),
                "startsAt": rfc3339_ms(a.starts_at),
                "startsAt_local": local_iso(a.starts_at, ctx.timezone),
                "overdue_seconds": max(clock - a.starts_at, 0) / 1000,
                "age_seconds": age,
                "fingerprint": a.fingerprint,
                "timeline": timeline_path(a.labels.get("order_id", "")),
                "rejected_count": ctx.runtime.rejected.count(a.labels.get("order_id", "")),
            }
        )
    return json_response(
        {
            "orders": orders,
            "count": len(orders),
            "total": ctx.store.firing_count(STUCK_ALERT, rule),
            "as_of": rfc3339_ms(clock),
        }
    )


async def order_timeline(request: web.Request) -> web.Response:
    order_id = request.match_info["order_id"]
    if len(order_id) > MAX_ORDER_ID:
        raise ApiError(
            400, f"order_id is {len(order_id)} characters; at most {MAX_ORDER_ID} allowed"
        )
    ctx = _ctx(request)
    key, tracker, rec = find_order(ctx.runtime, order_id)
    if tracker is None and ctx.runtime.peers and PROXIED not in request.headers:
        return await _from_peers(ctx, order_id)
    if tracker is None or rec is None:
        if tracker is not None and tracker.buffered:
            where = (
                ", or its events are still waiting for the watermark (applied `lateness` after "
                f"the newest event; waiting in its shard {key}: {tracker.buffered})"
            )
        elif tracker is None and ctx.runtime.peers:
            where = f"; its shard {key} is not served by this process"
        else:
            where = ""  # one process: a shard not started yet has seen no input at all
        _untracked(
            ctx,
            order_id,
            f"order {order_id} is not tracked: never seen, or forgotten after its retention{where}",
        )
    # off the loop: the store's database may be busy with a write waiting for a lock
    known = await asyncio.to_thread(ctx.store.for_order, order_id)
    mark = ctx.runtime.shard_watermark(key)  # moving on while idle, as the metric's
    try:
        body = timeline(order_id, rec, tracker, known, ctx.timezone, mark)
    except RuntimeError:  # the worker changed the record while we read it
        body = timeline(order_id, rec, tracker, known, ctx.timezone, mark)
    body.update(_rejected(ctx, order_id))
    return json_response(body)


def _rejected(ctx: Context, order_id: str) -> dict[str, Any]:
    """The order's inputs the dead-letter output took lately (held by process 0, which writes
    the dead letters and answers /v1): often why an order looks stuck."""
    count, records = ctx.runtime.rejected.get(order_id)
    return {"rejected_count": count, "rejected_events": records}


def _untracked(ctx: Context, order_id: str, message: str) -> NoReturn:
    """404 for an order no shard holds, with its rejected inputs if any: an order whose every
    event was rejected (a naive timestamp after a migration) is never tracked."""
    rejected = _rejected(ctx, order_id)
    records = rejected["rejected_events"]
    if records:
        reasons = ", ".join(sorted({r["reason"] for r in records}))
        message += (
            f"; {rejected['rejected_count']} of its inputs were rejected to the dead-letter "
            f"output ({reasons}; the latest at {records[-1]['source']} {records[-1]['position']}"
            "): see rejected_events"
        )
    raise ApiError(404, message, **(rejected if records else {}))


PROXIED = "X-Orderwatch-Proxied"


async def _from_peers(ctx: Context, order_id: str) -> web.Response:
    """In a cluster, the order's shard lives in another process: ask the others."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for peer in ctx.runtime.peers:
            try:
                async with session.get(
                    f"{peer}/v1/orders/{quote(order_id, safe='')}", headers={PROXIED: "1"}
                ) as r:
                    if r.status != 200:
                        continue
                    body = await r.json()
            except (aiohttp.ClientError, TimeoutError):
                continue
            # alerts live with process 0's store
            known = await asyncio.to_thread(ctx.store.for_order, order_id)
            body["alerts"] = [
                a.to_json(packed=True) for a in known if a.status == "firing" and not a.one_shot
            ]
            body["anomalies"] = [a.to_json(packed=True) for a in known if a.one_shot]
            body["resolved_alerts"] = [
                a.to_json(packed=True) for a in known if a.status == "resolved"
            ]
            body.update(_rejected(ctx, order_id))
            return json_response(body)
    _untracked(ctx, order_id, f"order {order_id} is not tracked by any process of this cluster")


# --- the application -------------------------------------------------------------------------


def build_app(
    runtime: Runtime,
    store: AlertStore,
    registry: CollectorRegistry,
    *,
    rules: RuleSet,
    timezone: str = "Asia/Shanghai",
) -> web.Application:
    """The aiohttp application serving the read API; other modules add their routes to it
    (a /v1 one with its query parameters in `PARAMETERS`)."""
    app = web.Application(middlewares=[json_errors, to_process_0, checked_query])
    app[CONTEXT] = Context(runtime, store, registry, timezone, rules)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/alerts", alerts)
    app.router.add_get("/v1/orders/stuck", stuck_orders)
    app.router.add_get("/v1/orders/{order_id}", order_timeline)
    return app
