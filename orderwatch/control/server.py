"""Running the control plane: start/stop the HTTP server and consume the dataflow's alerts.

The dataflow (main thread) puts lists of `AlertChange` on `Runtime.alert_queue`; this
module's `consume_alerts` runs on the control plane's asyncio loop, applies each batch to
the `AlertStore` (which persists it and drops what was already announced) and hands the
effective changes on. It polls the queue with short sleeps instead of blocking an executor
thread, so cancelling it is immediate and leaves no thread behind.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from aiohttp import web

from orderwatch.alerts.store import AlertStore
from orderwatch.domain.alert import AlertChange
from orderwatch.runtime import Runtime

log = structlog.get_logger(__name__)

OnChange = Callable[[list[AlertChange]], Awaitable[None] | None]
STOP = None  # put this on the queue to end `consume_alerts` after what came before it
_APPLY_ATTEMPTS = 3


async def start_control_plane(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Serve `app` on host:port (0 = any free port; see `bound_port`); returns the runner."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    log.info("control_plane_started", host=host, port=bound_port(runner))
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner actually listens on."""
    return int(runner.addresses[0][1])


async def stop_control_plane(runner: web.AppRunner) -> None:
    await runner.cleanup()


def _drain(q: queue.Queue[Any]) -> tuple[list[AlertChange], list[Any], bool]:
    """Everything queued now: alert changes, other items, and whether STOP was seen."""
    changes: list[AlertChange] = []
    others: list[Any] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return changes, others, False
        if item is STOP:
            return changes, others, True
        items = item if isinstance(item, list | tuple) else [item]
        for x in items:
            (changes if isinstance(x, AlertChange) else others).append(x)


async def _apply(store: AlertStore, changes: list[AlertChange]) -> list[AlertChange]:
    for attempt in range(1, _APPLY_ATTEMPTS + 1):
        try:
            return store.apply(changes)
        except Exception:
            log.exception("alert_store_apply_failed", changes=len(changes), attempt=attempt)
            if attempt == _APPLY_ATTEMPTS:
                raise
            await asyncio.sleep(0.2 * attempt)
    return []


async def _call(fn: Callable[[Any], Any], arg: Any) -> None:
    try:
        result = fn(arg)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("alert_consumer_callback_failed")


async def consume_alerts(
    runtime: Runtime,
    store: AlertStore,
    on_change: OnChange,
    *,
    poll_seconds: float = 0.05,
    on_other: Callable[[list[Any]], Any] | None = None,
) -> None:
    """Drain `runtime.alert_queue` into the store forever (until cancelled or STOP is queued).

    `on_change` (sync or async) gets each non-empty list of effective changes, after they
    are persisted. Items that are not alert changes go to `on_other` (or are logged).
    """
    q = runtime.alert_queue
    if q is None:
        raise ValueError("runtime.alert_queue is not set")
    while True:
        changes, others, stop = _drain(q)
        if changes:
            try:
                effective = await _apply(store, changes)
            except Exception:
                effective = []  # logged by _apply; keep serving the rest
            if effective:
                await _call(on_change, effective)
        if others:
            if on_other is not None:
                await _call(on_other, others)
            else:
                log.warning("alert_queue_unexpected_items", count=len(others))
        if stop:
            return
        if not changes and not others:
            await asyncio.sleep(poll_seconds)
