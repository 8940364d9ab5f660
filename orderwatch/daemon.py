"""`orderwatch run`: the dataflow in the main thread, the control plane in a second one.

Shutdown is cooperative: SIGTERM or Ctrl-C sets `Runtime.stopping`, every source ends its
input, bytewax finishes the epoch (snapshots included when recovery is on), the control
plane drains the last alert changes into the store, and the process exits 0. A second
Ctrl-C aborts at once.
"""

from __future__ import annotations

import asyncio
import ctypes
import fcntl
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import IO, Any

import structlog
from bytewax.inputs import Source
from bytewax.recovery import RecoveryConfig, init_db_dir

from orderwatch.alerts.console import ConsolePrinter
from orderwatch.alerts.store import DB_NAME, AlertStore
from orderwatch.cluster import free_ports, run_flow, supervise
from orderwatch.config import Config, FileSource, SimulatorSource
from orderwatch.connectors.files import JsonlSource
from orderwatch.connectors.simulator import SimulatorSource as SimSource
from orderwatch.connectors.sinks import DEAD_LETTERS, DeadLetterSink, QueueSink
from orderwatch.control.api import build_app
from orderwatch.control.server import STOP, consume_alerts, start_control_plane
from orderwatch.domain.rules import RuleSet
from orderwatch.domain.stats import LabelCap
from orderwatch.logs import configure_logging
from orderwatch.metrics import build_registry
from orderwatch.pipelines.orders import Outputs, build_flow
from orderwatch.pipelines.snapshots import (
    StateFormatError,
    check_recovery_store,
    state_settings,
)
from orderwatch.runtime import Runtime, SourceHealth, tune_gc

log = structlog.get_logger("orderwatch")


class ControlPlane:
    """An asyncio loop in its own thread: the HTTP API and the alert consumer."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        runtime: Runtime,
        store: AlertStore,
        on_change: Callable[[list[Any]], Any],
    ) -> None:
        self._app, self._host, self._port = app, host, port
        self._runtime, self._store, self._on_change = runtime, store, on_change
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="control-plane", daemon=True)
        self._consumer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = self._loop.run_until_complete(
                start_control_plane(self._app, self._host, self._port)
            )
        except BaseException as exc:  # e.g. the port is taken: fail the start, loudly
            self._error = exc
            self._ready.set()
            return
        self._consumer = self._loop.create_task(
            consume_alerts(self._runtime, self._store, self._on_change)
        )
        self._ready.set()
        self._loop.run_forever()

    def stop(self) -> None:
        """Drain what the dataflow queued, then stop serving."""
        if self._error is not None or not self._thread.is_alive():
            return
        assert self._runtime.alert_queue is not None
        self._runtime.alert_queue.put(STOP)

        async def finish() -> None:
            if self._consumer is not None:
                await asyncio.wait_for(self._consumer, timeout=30)
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(finish(), self._loop).result(timeout=60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def build_sources(cfg: Config, runtime: Runtime) -> list[Source[Any]]:
    """The configured sources, ending their input when `runtime.stopping` is set; those that
    can lose their input (a followed file) report it in `runtime.sources`, for /readyz."""
    sources: list[Source[Any]] = []
    stop = runtime.stopping
    for i, s in enumerate(cfg.inputs()):
        if isinstance(s, FileSource):
            health = SourceHealth(f"sources[{i}]")
            runtime.sources.append(health)
            sources.append(
                JsonlSource(
                    s.path,
                    name=s.name,
                    follow=s.follow,
                    batch_size=s.batch_size,
                    bound_type=s.type,
                    fmt=s.format,
                    stop=stop,
                    health=health,
                    max_line_bytes=cfg.engine.max_event_bytes,
                )
            )
        elif isinstance(s, SimulatorSource):
            sources.append(SimSource(s, stop=stop))
        else:  # a config loaded to run has refused it already (`config._unbuilt`)
            raise ValueError(f"{s.kind} sources are not available in this build yet")
    return sources


# Set by `run --processes N` in its children: the parent's pid, told of a stop request that
# reached one child alone, so that it stops them all.
CLUSTER_PARENT_ENV = "ORDERWATCH_CLUSTER_PARENT"


def _stop_with_parent(parent: str | None) -> None:
    """A local cluster's child asks Linux for a SIGTERM when its parent dies: a parent killed
    with SIGKILL (or by the OOM killer) left its children running, holding the state lock
    and their ports, until killed one by one."""
    if parent is None:
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the parent's death is not noticed
        return
    if os.getppid() != int(parent):  # it died before the request: stop now
        os.kill(os.getpid(), signal.SIGTERM)


_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _install_signals(runtime: Runtime) -> None:
    parent = os.environ.get(CLUSTER_PARENT_ENV)
    # A handler runs in the main thread between two bytecodes: one that logged waited for the
    # log's lock (structlog's, not reentrant) when the code it interrupted held it, for ever (a
    # cluster child never stopped). Handlers only set the stop and leave a note, on a queue
    # made to be put to from a handler; a thread logs the notes.
    notes: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()

    def on_signal(signum: int, _frame: Any) -> None:
        if runtime.stopping.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # a second Ctrl-C: abort now
            return  # a SIGTERM again (the cluster's parent passing on this one's): stopping
        runtime.stopping.set()
        notes.put(("stopping", signal.Signals(signum).name))
        if parent is not None and int(parent) == os.getppid():
            # One process of a local cluster cannot end the dataflow alone: the others' inputs
            # go on, and it waited for them for ever (then a stop of the parent hung too).
            os.kill(os.getppid(), signal.SIGTERM)

    def on_hangup(_signum: int, _frame: Any) -> None:
        # A closed terminal must not end the monitoring; nor does a reload request silently.
        notes.put(("sighup_ignored", "SIGHUP"))

    def log_notes() -> None:
        while True:
            event, name = notes.get()
            if event == "stopping":
                log.info("stopping", signal=name)
            else:
                log.warning(event, note="config reload is not supported: restart to apply")

    threading.Thread(target=log_notes, name="orderwatch-signal-log", daemon=True).start()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_hangup)
    _stop_with_parent(parent)


def _recovery(cfg: Config, state_dir: Path, processes: int) -> RecoveryConfig | None:
    if not cfg.state.recovery:
        return None
    db = state_dir / "recovery"
    if not db.exists():
        db.mkdir(parents=True)
        init_db_dir(db, max(processes, 1))
    return RecoveryConfig(db)


_HELD: list[IO[str]] = []  # state-dir locks, held until the process ends


def _lock_state_dir(state_dir: Path, process_id: int) -> IO[str]:
    """Take `<state.dir>/orderwatch-<process>.lock`: two daemons on one state dir would write
    the same alert store and dead letters, and each announce only part of the alerts."""
    f = open(state_dir / f"orderwatch-{process_id}.lock", "a+")  # noqa: SIM115 - held for life
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "?"
        f.close()
        raise SystemExit(
            f"orderwatch: state.dir {state_dir} is in use by another orderwatch (pid {holder}); "
            "give each daemon its own state.dir"
        ) from None
    f.truncate(0)
    f.write(str(os.getpid()))
    f.flush()
    _HELD.append(f)  # a closed (collected) file would release the lock
    return f


def open_alert_store(
    cfg: Config, state_dir: Path | None, runtime: Runtime, *, process: int = 0
) -> AlertStore:
    """The alert store in `state_dir` (in memory when None), its `channel` and `warehouse` labels
    capped at `metrics.max_label_values` (`metrics.channels` always kept), as the README says;
    `channel` by the cap the process's shards use too."""
    return AlertStore(
        None if state_dir is None else state_dir / DB_NAME,
        channels=runtime.channel_labels(cfg.metrics),
        warehouses=LabelCap(cfg.metrics.max_label_values),
        process=process,
    )


def run_daemon(
    cfg: Config,
    *,
    workers: int = 1,
    processes: int = 1,
    addresses: str | None = None,
    process_id: int | None = None,
) -> int:
    """Run until stopped; returns the exit code."""
    configure_logging()
    if processes > 1 and addresses is None:
        return _spawn_cluster(processes, workers)
    pid = process_id or 0
    primary = pid == 0
    state_dir = Path(cfg.state.dir)
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        _lock_state_dir(state_dir, pid)
    except OSError as exc:
        raise SystemExit(f"orderwatch: cannot use state.dir {state_dir}: {exc.strerror}") from None
    if cfg.state.recovery:  # a stale snapshot format stops here, before any port or thread
        try:
            check_recovery_store(state_dir / "recovery", state_settings(cfg))
        except StateFormatError as exc:
            log.error("cannot_resume", error=str(exc))
            return 2
    caps = cfg.metrics.max_label_values
    runtime = Runtime(
        shards=cfg.engine.shards,
        process_id=pid,
        alert_queue=queue.Queue(),
        route_cap=LabelCap(caps, cfg.metrics.routes),
    )
    if addresses:  # each process serves HTTP on http.listen's port + its id
        hosts = [a.rpartition(":")[0] for a in addresses.split(",")]
        runtime.peers = [f"http://{h}:{cfg.http.port + i}" for i, h in enumerate(hosts) if i != pid]
    try:
        on_disk = primary and cfg.state.alert_store == "file"
        store = open_alert_store(cfg, state_dir if on_disk else None, runtime, process=pid)
    except (OSError, sqlite3.Error) as exc:
        where = state_dir / DB_NAME
        raise SystemExit(f"orderwatch: cannot open the alert store {where}: {exc}") from None
    if on_disk:  # what the last run rejected stays on its orders' timelines (not the demo's)
        indexed = runtime.rejected.load(state_dir / DEAD_LETTERS)
        if indexed:
            log.info("rejected inputs of the last run indexed for their orders", count=indexed)
    rules = RuleSet.from_config(cfg)
    registry = build_registry(runtime, store, cfg.metrics, rules=rules)
    app = build_app(runtime, store, registry, rules=rules, timezone=cfg.timezone)
    printer = ConsolePrinter(cfg.timezone, rejected=runtime.rejected)
    retired = store.retire(rules.could_fire) if primary else []
    if retired:
        gone = sorted({f"{a.labels.get('rule')}/{a.labels.get('severity')}" for a in retired})
        log.warning("resolved alerts of rules no longer configured", count=len(retired), rules=gone)
        printer(retired)
        store.mark_announced()
    leftovers = store.unannounced(processes=len(addresses.split(",")) if addresses else 1)
    if leftovers:  # stored, then the process died before it printed them
        log.warning("announcing alert changes stored before the last stop", count=len(leftovers))
        printer(leftovers)
        store.mark_announced()
    control = ControlPlane(app, cfg.http.host, cfg.http.port + pid, runtime, store, printer)
    try:
        control.start()
    except OSError as exc:  # the port is taken, or the address is not this host's
        store.close()
        listen = f"{cfg.http.host}:{cfg.http.port + pid}"
        raise SystemExit(f"orderwatch: cannot serve HTTP on {listen}: {exc.strerror}") from None
    log.info(
        "started",
        listen=f"{cfg.http.host}:{cfg.http.port + pid}",
        state_dir=str(state_dir),
        sources=len(cfg.sources) or "simulator",
        workers=workers,
        process=pid,
    )
    unbuilt = {
        "notifiers": sum(n.kind != "console" for n in cfg.notifiers),  # the console is built
        "breakers": len(cfg.breakers),
        "switches": len(cfg.switches),
    }
    once = [s.source_name for s in cfg.sources if isinstance(s, FileSource) and not s.follow]
    if once and pid == 0:  # a daemon that ends by itself after a second surprises on-call
        log.warning(
            "read once (follow: false): the daemon stops when they are read to their end, and "
            "fires nothing due after their last event; set follow: true to tail them",
            sources=once,
        )
    if any(unbuilt.values()) and pid == 0:  # configured, but this build only validates them
        log.warning(
            "configured but not run by this build: alerts go to the console and GET /v1/alerts",
            **{k: v for k, v in unbuilt.items() if v},
        )
    clean = False
    try:
        sources = build_sources(cfg, runtime)
        outputs = Outputs(
            QueueSink(runtime, local=primary),
            DeadLetterSink(
                state_dir / DEAD_LETTERS,
                local=primary,
                log_them=True,
                index=runtime.rejected,
            ),
        )
        carried = store.firing() if primary else []
        if carried:  # each ends as unconfirmed unless this run's input raises it again
            log.info(
                "alerts firing before this start: each ends as unconfirmed unless this run's "
                "input raises it again (5 min of event time after its start, or after where "
                "the last run had got to)",
                count=len(carried),
            )
        flow = build_flow(
            cfg,
            sources,
            outputs,
            runtime,
            live=True,
            recovery=cfg.state.recovery,
            carried=carried,
            carried_since=store.progress,
        )
        _install_signals(runtime)
        tune_gc()
        runtime.sources_connected = True
        runtime.dataflow_running = True
        run_flow(
            flow,
            workers=workers,
            process_id=process_id,
            addresses=addresses.split(",") if addresses else None,
            epoch_interval=timedelta(milliseconds=cfg.state.snapshot_interval),
            recovery_config=_recovery(
                cfg, state_dir, 1 if addresses is None else len(addresses.split(","))
            ),
        )
        clean = True
    finally:
        runtime.dataflow_running = False
        control.stop()
        if clean and primary:
            store.note_progress(runtime.read_to())
        store.close()
        ended = "stop asked" if runtime.stopping.is_set() else "input ended" if clean else "error"
        log.info("stopped", clean=clean, why=ended)  # an error is said after
    return 0


def _spawn_cluster(processes: int, workers: int) -> int:
    """`run --processes N` on one host: N copies of this command as a bytewax cluster."""
    ports = free_ports(processes)
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
    args = [a for a in sys.argv[1:] if not a.startswith("--processes")]
    if "--processes" in sys.argv:
        i = sys.argv.index("--processes")
        args = sys.argv[1:i] + sys.argv[i + 2 :]
    env = {**os.environ, CLUSTER_PARENT_ENV: str(os.getpid())}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "orderwatch",
                *args,
                "--addresses",
                addresses,
                "--process-id",
                str(i),
                "--workers",
                str(workers),
            ],
            env=env,
            # Not in the terminal's process group: a Ctrl-C reaches each once, passed on by
            # `forward` (in the group, each got the terminal's too: a second Ctrl-C aborts)
            process_group=0,
        )
        for i in range(processes)
    ]

    def forward(signum: int, _frame: Any) -> None:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return max(supervise(procs))


__all__ = ["ControlPlane", "build_sources", "run_daemon"]
