"""The read side of the HTTP API (CONTRACT §6): health, metrics, alerts, stuck orders, timelines.

Handlers run on the control plane's asyncio loop and only read: the alert store, the
injected Prometheus registry and the trackers of this process. Every error, including an
unknown path, a wrong method and an unexpected exception, is JSON `{"error": "..."}`.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from orderwatch.alerts.store import AlertStore
from orderwatch.control.timeline import MAX_ORDER_ID, find_order, local_iso, timeline
from orderwatch.domain.alert import AlertChange, rfc3339_ms
from orderwatch.domain.rules import STUCK_ALERT
from orderwatch.metrics import event_clock_ms, rule_windows
from orderwatch.runtime import Runtime

log = structlog.get_logger(__name__)

STUCK_LIMIT_DEFAULT = 50
STUCK_LIMIT_MAX = 1000
RECENT_ANOMALIES = 100
_ALERT_FILTERS = ("alertname", "rule", "severity", "order_id")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_dumps = functools.partial(json.dumps, ensure_ascii=False)


@dataclass(frozen=True)
class Context:
    runtime: Runtime
    store: AlertStore
    registry: CollectorRegistry
    timezone: str


CONTEXT = web.AppKey("orderwatch", Context)


def json_response(body: Any, status: int = 200, **kwargs: Any) -> web.Response:
    return web.json_response(body, status=status, dumps=_dumps, **kwargs)


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


def _only(request: web.Request, allowed: tuple[str, ...]) -> None:
    """Reject unknown query parameters: a typo must not silently return unfiltered data."""
    for name in request.query:
        if name not in allowed:
            names = ", ".join(allowed) or "none"
            raise ApiError(400, f"unknown query parameter {name!r} (accepted: {names})")


# --- health and metrics ----------------------------------------------------------------------


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    rt = _ctx(request).runtime
    missing = []
    if not rt.dataflow_running:
        missing.append("dataflow not running")
    if not rt.sources_connected:
        missing.append("sources not connected")
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
    _only(request, _ALERT_FILTERS)
    filters = {k: v for k, v in request.query.items() if k in _ALERT_FILTERS}
    store = _ctx(request).store
    firing = [a.to_json() for a in store.firing() if _matches(a, filters)]
    shots = [a.to_json() for a in store.recent_one_shots(RECENT_ANOMALIES) if _matches(a, filters)]
    return json_response(
        {"alerts": firing, "count": len(firing), "anomalies": shots, "filters": filters}
    )


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return STUCK_LIMIT_DEFAULT
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if not 1 <= value <= STUCK_LIMIT_MAX:
        raise ApiError(400, f"limit must be an integer from 1 to {STUCK_LIMIT_MAX}, got {raw!r}")
    return value


async def stuck_orders(request: web.Request) -> web.Response:
    _only(request, ("rule", "limit"))
    limit = _limit(request)
    rule = request.query.get("rule") or None
    ctx = _ctx(request)
    stuck = ctx.store.stuck(rule)
    clock = event_clock_ms(ctx.runtime)
    windows = rule_windows(ctx.runtime)
    orders = []
    for a in stuck[:limit]:
        notes = a.annotations
        window = windows.get((STUCK_ALERT, a.labels.get("rule", "")))
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
                "timeline": f"/v1/orders/{a.labels.get('order_id', '')}",
            }
        )
    return json_response(
        {"orders": orders, "count": len(orders), "total": len(stuck), "as_of": rfc3339_ms(clock)}
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
        where = "" if tracker is not None else f"; its shard {key} is not served by this process"
        raise ApiError(
            404,
            f"order {order_id} is not tracked: never seen, or forgotten after its retention{where}",
        )
    try:
        body = timeline(order_id, rec, tracker, ctx.store, ctx.timezone)
    except RuntimeError:  # the worker changed the record while we read it
        body = timeline(order_id, rec, tracker, ctx.store, ctx.timezone)
    return json_response(body)


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
            known = ctx.store.for_order(order_id)  # alerts live with process 0's store
            body["alerts"] = [a.to_json() for a in known if a.status == "firing" and not a.one_shot]
            body["anomalies"] = [a.to_json() for a in known if a.one_shot]
            body["resolved_alerts"] = [a.to_json() for a in known if a.status == "resolved"]
            return json_response(body)
    raise ApiError(404, f"order {order_id} is not tracked by any process of this cluster")


# --- the application -------------------------------------------------------------------------


def build_app(
    runtime: Runtime,
    store: AlertStore,
    registry: CollectorRegistry,
    *,
    timezone: str = "Asia/Shanghai",
) -> web.Application:
    """The aiohttp application serving the read API; other modules add their routes to it."""
    app = web.Application(middlewares=[json_errors])
    app[CONTEXT] = Context(runtime, store, registry, timezone)
    app.router.add_get("/healthz", healthz, allow_head=True)
    app.router.add_get("/readyz", readyz, allow_head=True)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/alerts", alerts)
    app.router.add_get("/v1/orders/stuck", stuck_orders)
    app.router.add_get("/v1/orders/{order_id}", order_timeline)
    return app
