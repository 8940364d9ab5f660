"""Running the control plane: start/stop the HTTP server and consume the dataflow's alerts.

The dataflow (main thread) puts `AlertBatch`es on `Runtime.alert_queue` and waits until each
is stored; this module's `consume_alerts` runs on the control plane's asyncio loop, applies
them to the `AlertStore` (which persists them and drops what was already announced), lets
the dataflow go on and hands the effective changes on. The store's writes run in a worker
thread (`asyncio.to_thread`): an fsync, or a lock another process holds on the file for up to
the busy timeout, keeps only the consumer waiting, never the API and the scrapes. It waits for
the queue on an asyncio event the dataflow sets (`Runtime.wake_alerts`), with a short timeout,
instead of blocking an executor thread; cancelled while a write runs, it leaves that one write
to finish (its changes then wait in the store's outbox for the next start).
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import threading
from collections.abc import Awaitable, Callable
from contextlib import suppress
from typing import Any

import structlog
from aiohttp import web

from orderwatch.alerts.store import AlertStore
from orderwatch.domain.alert import AlertChange
from orderwatch.runtime import AlertBatch, Runtime

log = structlog.get_logger(__name__)

OnChange = Callable[[list[AlertChange]], Awaitable[None] | None]
STOP = None  # put this on the queue to end `consume_alerts` after what came before it


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


def _drain(
    q: queue.Queue[Any], acks: list[threading.Event]
) -> tuple[list[AlertChange], list[Any], bool]:
    """Everything queued now: alert changes, other items, and whether STOP was seen; the
    `stored` events of the batches go to `acks`."""
    changes: list[AlertChange] = []
    others: list[Any] = []
    while True:
        try:
            item = q.get_nowait()
        except queue.Empty:
            return changes, others, False
        if item is STOP:
            return changes, others, True
        if isinstance(item, AlertBatch):
            acks.append(item.stored)
            item = item.changes
        items = item if isinstance(item, list | tuple) else [item]
        for x in items:
            (changes if isinstance(x, AlertChange) else others).append(x)


_RETRY_FIRST, _RETRY_MAX = 0.2, 5.0  # seconds between attempts to write the alert store
_LAST_TRIES_SECONDS = 10.0  # at shutdown: how long to keep trying before giving up


def _try_apply(
    runtime: Runtime, store: AlertStore, changes: list[AlertChange]
) -> list[AlertChange] | None:
    """The effective changes once stored, or None if the store refused them (logged, counted,
    and shown by /readyz until a write succeeds)."""
    try:
        effective = store.apply(changes, progress=runtime.read_to())
    except Exception as exc:
        first = runtime.alert_store_error is None
        runtime.alert_store_error = f"{type(exc).__name__}: {exc}"
        runtime.alert_store_failures += 1
        if first or runtime.alert_store_failures % 20 == 0:
            log.error(
                "alert_store_write_failed",
                error=runtime.alert_store_error,
                waiting=len(changes),
                failures=runtime.alert_store_failures,
                note="alert changes are kept in memory and retried until the store takes them",
            )
        return None
    if runtime.alert_store_error is not None:
        log.warning("alert_store_writable_again", stored=len(changes))
        runtime.alert_store_error = None
    return effective


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
    loop = asyncio.get_running_loop()
    wake = asyncio.Event()

    def wake_up() -> None:  # from the dataflow's thread
        with suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            loop.call_soon_threadsafe(wake.set)

    runtime.wake_alerts = wake_up
    # Changes the store has not taken yet, in order: a store that cannot write (disk full, a
    # lock held elsewhere) delays alerts, it never drops them. Their batches wait in the
    # dataflow until then (`acks`), so no recovery snapshot covers them before.
    pending: list[AlertChange] = []
    acks: list[threading.Event] = []
    delay = _RETRY_FIRST
    while True:
        wake.clear()
        changes, others, stop = _drain(q, acks)
        pending += changes
        runtime.alerts_waiting = len(pending)
        stored = True
        if pending:
            effective = await asyncio.to_thread(_try_apply, runtime, store, pending)
            if effective is None:
                stored = False
            else:
                pending, delay = [], _RETRY_FIRST
                runtime.alerts_waiting = 0
                _release(acks)
                if effective:
                    await _call(on_change, effective)
                    # an error in on_change leaves them for the restart
                    await asyncio.to_thread(store.mark_announced)
        elif acks:
            _release(acks)  # batches without changes
        if others:
            if on_other is not None:
                await _call(on_other, others)
            else:
                log.warning("alert_queue_unexpected_items", count=len(others))
        if stop:
            if pending:
                await _last_tries(runtime, store, pending, on_change)
            _release(acks)
            return
        if not stored:
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)
        elif not changes and not others:
            with suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), poll_seconds)


def _release(acks: list[threading.Event]) -> None:
    """Let the dataflow go on: its batches are stored (or announced, at shutdown)."""
    for ack in acks:
        ack.set()
    acks.clear()


async def _last_tries(
    runtime: Runtime, store: AlertStore, pending: list[AlertChange], on_change: OnChange
) -> None:
    """Shutting down with changes the store would not take: try a little longer, then announce
    them unstored rather than lose them (a restart may announce them again)."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + _LAST_TRIES_SECONDS
    while loop.time() < give_up:
        effective = await asyncio.to_thread(_try_apply, runtime, store, pending)
        if effective is not None:
            runtime.alerts_waiting = 0
            if effective:
                await _call(on_change, effective)
                await asyncio.to_thread(store.mark_announced)
            return
        await asyncio.sleep(_RETRY_FIRST)
    log.error(
        "alert_changes_not_stored",
        count=len(pending),
        error=runtime.alert_store_error,
        note="announced without being stored: a restart may announce them again",
    )
    await _call(on_change, pending)
