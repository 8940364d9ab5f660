"""Live alert latency: a real `orderwatch run` tailing a file the bench appends to.

Every order enters `paid` at `ts` = now and a 2 s stuck rule watches it, so its deadline is
`ts + 2 s`; with `lateness: 500ms` the watermark (largest event time − lateness) passes that
deadline when an event stamped `ts + 2.5 s` arrives, i.e. at wall time `ts + 2.5 s` because the
stream is stamped with the wall clock. The delay of an alert is measured from that *due* moment
to its first sight (a) in `GET /v1/alerts`, polled over one persistent connection, and (b) as a
line on the daemon's stdout, read by a thread that timestamps each line as it arrives.

Orders move on to `allocated` 6 s after `paid`, so the set of firing alerts (and so the size of
each polled response) stays small and constant instead of growing with the run.

The same trickle runs a second time with recovery on and a million orders open (preloaded, all
read before the feed starts): each recovery snapshot pickles every shard whole while the
dataflow waits, so that run shows what a promotion's open orders cost the alerts that come due
meanwhile.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import orjson
import yaml

from orderwatch.bench.launch import cpu_seconds, status_kib
from orderwatch.bench.measure import percentile
from orderwatch.domain.rules import GAP_RULES

LATENESS_MS = 500
DEFAULT_LATENESS_MS = 60_000  # the config's default: what a daemon runs with unless told
DWELL_MS = 2_000
RESOLVE_AFTER_S = 6.0
POLL_S = 0.02
NOTIFIERS = "not measured: notifiers not built yet"
RECOVERY_OPEN_ORDERS = 1_000_000
PRELOAD_SPAN_MS = 30_000  # the preloaded orders were created over the 30 s before the start
_FIRING = re.compile(r"FIRING\s+\S+\s+lat\s+(\S+)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def daemon_config(
    events: Path,
    state: Path,
    port: int,
    recovery: bool = False,
    reconcile: bool = False,
    lateness_ms: int = LATENESS_MS,
) -> dict[str, Any]:
    """The daemon's config: one tailed file, one 2 s stuck rule, fast watermark settings;
    `recovery`: bytewax snapshots every `state.snapshot_interval` (its default, 30 s);
    `reconcile`: the three payment ↔ warehouse gap rules too (10 minutes each)."""
    rules: dict[str, Any] = {
        "stuck": [{"name": "lat", "statuses": ["paid"], "max_dwell": f"{DWELL_MS // 1000}s"}]
    }
    if reconcile:
        rules["gaps"] = {name: {"within": "10m"} for name in GAP_RULES}
    return {
        "lateness": f"{lateness_ms}ms",
        "idle_after": "1s",
        "sources": [{"kind": "file", "path": str(events), "follow": True}],
        "rules": rules,
        "http": {"listen": f"127.0.0.1:{port}"},
        "state": {"dir": str(state), "recovery": recovery},
        "engine": {"max_future": "10m"},
        "notifiers": [{"kind": "console"}],
    }


def due_s(ts_ms: int, lateness_ms: int = LATENESS_MS) -> float:
    """Wall time (epoch s) at which the watermark passes the deadline of an order paid at ts."""
    return (ts_ms + DWELL_MS + lateness_ms) / 1000


def delays_ms(due: Mapping[str, float], seen: Mapping[str, float]) -> list[float]:
    """Per order seen, milliseconds from its due moment to its first sighting."""
    return [(seen[k] - due[k]) * 1000 for k in due if k in seen]


def summarize(due: Mapping[str, float], seen: Mapping[str, float]) -> dict[str, Any]:
    """`count`, `missing`, `p50_ms`, `p99_ms`, `max_ms` of the delays of `seen` against `due`."""
    d = delays_ms(due, seen)
    return {
        "count": len(d),
        "missing": sum(1 for k in due if k not in seen),
        "p50_ms": percentile(d, 50) if d else None,
        "p99_ms": percentile(d, 99) if d else None,
        "max_ms": max(d) if d else None,
    }


class _Console(threading.Thread):
    """Reads the daemon's stdout; the first time each order's FIRING line arrives."""

    def __init__(self, stream: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.stream = stream
        self.seen: dict[str, float] = {}
        self.lines = 0

    def run(self) -> None:
        for raw in iter(self.stream.readline, b""):
            now = time.time()  # stamp first: the decode and regex are not part of the delay
            self.lines += 1
            m = _FIRING.search(raw.decode(errors="replace"))
            if m:
                self.seen.setdefault(m.group(1), now)


class _Poller(threading.Thread):
    """Polls `path` every POLL_S on one keep-alive connection; for `/v1/alerts` it notes the
    first time each order's alert is in the answer."""

    def __init__(self, port: int, path: str = "/v1/alerts?rule=lat") -> None:
        super().__init__(daemon=True)
        self.port = port
        self.path = path
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.polls = 0
        self.errors = 0
        self.error_samples: list[str] = []
        self.round_trips_s: list[float] = []

    @property
    def round_trip_s(self) -> float:
        return sum(self.round_trips_s)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        alerts = self.path.startswith("/v1/alerts")
        while not self.stop.is_set():
            sent = time.time()
            try:
                conn.request("GET", self.path)
                body = conn.getresponse().read()
                now = time.time()  # when the answer is in hand, so the delay is an upper bound
                for a in orjson.loads(body).get("alerts", []) if alerts else ():
                    self.seen.setdefault(a["labels"]["order_id"], now)
                self.polls += 1
                self.round_trips_s.append(now - sent)
            except (OSError, http.client.HTTPException, ValueError, KeyError) as exc:
                self.errors += 1
                if len(self.error_samples) < 3 and repr(exc) not in self.error_samples:
                    self.error_samples.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            self.stop.wait(max(0.0, POLL_S - (time.time() - sent)))
        conn.close()


def vm_rss_mib(pid: int) -> float | None:
    """A live process's resident memory (VmRSS), MiB; None if it is gone."""
    kib = status_kib(pid, "VmRSS")
    return None if kib is None else kib / 1024


def _wait_ready(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited early with {proc.returncode}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError("daemon not ready in time")


def _order(ts: int, oid: str, status: str) -> bytes:
    ev = {"type": "order", "ts": ts, "order_id": oid, "status": status, "channel": "tmall"}
    return orjson.dumps(ev) + b"\n"


_FILLER = {"type": "access_log", "route": "/api/ping", "method": "GET", "status": 200}


def busy_order(ts: int, oid: str) -> list[bytes]:
    """One order's whole way to the warehouse at once, as the load of a busy run writes it:
    created, its payment, paid, the WMS outbound, allocated. Every tracker step runs for it
    (dedup, the state machine, payment ↔ WMS reconciliation, deadlines) and nothing fires."""
    base = {"ts": ts, "order_id": oid}
    order = {**base, "type": "order", "channel": "tmall", "amount": "100.00"}
    pay = {**base, "type": "payment", "pay_no": f"Y{oid}", "amount": "100.00"}
    return [
        orjson.dumps(ev) + b"\n"
        for ev in (
            {**order, "status": "created"},
            {**pay, "status": "success"},
            {**order, "status": "paid"},
            {**base, "type": "wms", "action": "outbound_created", "warehouse": "WH-SH-01"},
            {**order, "status": "allocated"},
        )
    ]


def preload(path: Path, orders: int, now_ms: int, chunk: int = 100_000) -> None:
    """Write `orders` orders that enter `created` over the PRELOAD_SPAN_MS before `now_ms`, in
    time order, and stay open: no rule of the run watches `created`, so none of them fires."""
    start = now_ms - PRELOAD_SPAN_MS
    with path.open("wb") as f:
        for first in range(0, orders, chunk):
            f.write(
                b"".join(
                    _order(start + i * PRELOAD_SPAN_MS // orders, f"P{i:08d}", "created")
                    for i in range(first, min(first + chunk, orders))
                )
            )


def _tracked(port: int) -> float | None:
    """`orderwatch_orders_tracked` from the daemon's `/metrics`, or None."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        body = conn.getresponse().read().decode()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
    m = re.search(r"^orderwatch_orders_tracked (\S+)$", body, re.MULTILINE)
    return float(m.group(1)) if m else None


def _wait_tracking(port: int, proc: subprocess.Popen[bytes], orders: int, timeout: float) -> float:
    """Wait until the daemon holds `orders` orders (it has read the preload); seconds waited."""
    started = time.monotonic()
    while (waited := time.monotonic() - started) < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited early with {proc.returncode}")
        if (_tracked(port) or 0) >= orders:
            return waited
        time.sleep(0.5)
    raise RuntimeError(f"daemon did not read the {orders:,} preloaded orders in {timeout:.0f} s")


def spread(owed: float, per_tick: float) -> tuple[int, float]:
    """New orders for this tick, and those owed after it: `per_tick` a tick on average."""
    new = int(owed + 1e-9)  # 0.1 added ten times is 0.9999999999999999
    return new, owed - new + per_tick


def _feed(
    path: Path,
    seconds: float,
    rate: float,
    orders_per_s: float,
    resolve_after_s: float | None = RESOLVE_AFTER_S,
    busy_per_s: float = 0,
    lateness_ms: int = LATENESS_MS,
) -> tuple[dict[str, float], int]:
    """Append a steady stream for `seconds`, then filler only until the last deadline passed.

    One tick every 1/`rate` s; new orders enter `paid` (`created` and `paid` at the same ts)
    at `orders_per_s` spread over the ticks (one every 10th tick at 10/s and 100 ticks/s, five
    a tick at 1,000/s and 200); a tick without one writes an access log, which moves event time
    on and touches no order. Each order is `allocated` `resolve_after_s` later (None: never,
    so its alert keeps firing), written on top of whatever the tick writes. Returns each
    order's due moment and the number of lines written. `busy_per_s` more orders a second go
    all the way to the warehouse at once (`busy_order`: 5 lines each), as load. The drain
    lasts the lateness too: the watermark trails event time by that much.
    """
    due: dict[str, float] = {}
    pending: list[tuple[float, str]] = []  # (wall time to allocate, order id), in order
    started = time.monotonic()
    tick = lines = 0
    owed = 1.0  # orders due by this tick: the first tick writes one
    owed_busy, busy = 0.0, 0
    drain_until = seconds + (DWELL_MS + lateness_ms) / 1000 + (resolve_after_s or 0) + 2
    with path.open("ab", buffering=0) as f:
        while (elapsed := time.monotonic() - started) < drain_until:
            now = time.time()
            ts = int(now * 1000)
            out: list[bytes] = []
            while pending and pending[0][0] <= now:
                out.append(_order(ts, pending.pop(0)[1], "allocated"))
            new, owed = spread(owed, orders_per_s / rate) if elapsed < seconds else (0, owed)
            for _ in range(new):
                oid = f"L{len(due):06d}"
                out += [_order(ts, oid, "created"), _order(ts, oid, "paid")]
                due[oid] = due_s(ts, lateness_ms)
                if resolve_after_s is not None:
                    pending.append((now + resolve_after_s, oid))
            if elapsed < seconds and busy_per_s:
                extra, owed_busy = spread(owed_busy, busy_per_s / rate)
                for _ in range(extra):
                    out += busy_order(ts, f"B{busy:09d}")
                    busy += 1
            if not new:
                out.append(orjson.dumps({**_FILLER, "ts": ts, "latency_ms": 1}) + b"\n")
            f.write(b"".join(out))  # one write: the tailer never sees half a batch
            lines += len(out)
            tick += 1
            time.sleep(max(0.0, started + tick / rate - time.monotonic()))
    return due, lines


@dataclass
class _Run:
    """What one live run saw: due moments, sightings, polls, the daemon's exit."""

    argv: list[str]
    config: dict[str, Any]
    due: dict[str, float]
    lines: int
    console: _Console
    poller: _Poller
    exit_code: int
    stderr_tail: str
    rss_mib: float | None  # the daemon's, once the feed ended (before it is stopped)
    catch_up_s: float | None = None  # reading the preloaded orders, before the feed started
    load_cores: float | None = None  # the daemon's CPU seconds per second while fed load
    state_bytes: int = 0  # the state directory once the daemon stopped (recovery store, alerts)
    load_end: float = 0.0  # when the feed stopped writing new orders and load (epoch s)

    @property
    def troubled(self) -> bool:
        return bool(
            self.exit_code != 0 or self.poller.errors or set(self.due) - set(self.console.seen)
        )


def _live_run(
    seconds: float,
    rate: float,
    orders_per_s: float,
    resolve_after_s: float | None,
    poll_path: str,
    open_orders: int = 0,
    recovery: bool = False,
    busy_per_s: float = 0,
    lateness_ms: int = LATENESS_MS,
) -> _Run:
    """Start the daemon (`open_orders` preloaded), feed it, poll it, stop it."""
    with tempfile.TemporaryDirectory(prefix="orderwatch-bench-live-") as tmp:
        events, state, port = Path(tmp) / "events.jsonl", Path(tmp) / "state", free_port()
        preload(events, open_orders, int(time.time() * 1000))
        cfg = daemon_config(
            events, state, port, recovery, reconcile=busy_per_s > 0, lateness_ms=lateness_ms
        )
        cfg_path = Path(tmp) / "live.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg))
        argv = [sys.executable, "-m", "orderwatch", "run", "--config", str(cfg_path)]
        with (Path(tmp) / "daemon.err").open("wb") as err:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert proc.stdout is not None
        console = _Console(proc.stdout)
        console.start()
        poller = _Poller(port, poll_path)
        catch_up = cores = None
        try:
            _wait_ready(port, proc)
            if open_orders:
                catch_up = _wait_tracking(port, proc, open_orders, timeout=600)
            poller.start()
            cpu = [cpu_seconds(proc.pid)]
            timer = threading.Timer(seconds, lambda: cpu.append(cpu_seconds(proc.pid)))
            timer.start()  # the load ends after `seconds`; the drain that follows is idle
            load_end = time.time() + seconds
            due, lines_written = _feed(
                events, seconds, rate, orders_per_s, resolve_after_s, busy_per_s, lateness_ms
            )
            timer.join()
            start, end = cpu if len(cpu) == 2 else (None, None)
            if start is not None and end is not None:
                cores = (end - start) / seconds
            rss = vm_rss_mib(proc.pid)
        finally:
            poller.stop.set()
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                code = proc.wait()
            console.join(timeout=10)
            if poller.is_alive():
                poller.join(timeout=10)
        stderr_tail = (Path(tmp) / "daemon.err").read_text(errors="replace")[-3000:]
        held = sum(f.stat().st_size for f in state.rglob("*") if f.is_file())
    return _Run(
        argv,
        cfg,
        due,
        lines_written,
        console,
        poller,
        code,
        stderr_tail,
        rss,
        catch_up_s=catch_up,
        load_cores=cores,
        state_bytes=held,
        load_end=load_end,
    )


def _parameters(run: _Run, seconds: float, rate: float, orders_per_s: float) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "events_per_s": rate,
        "orders_per_s": orders_per_s,
        "lines": run.lines,
        "poll_interval_ms": POLL_S * 1000,
        "command": run.argv[1:],
        "config": {k: v for k, v in run.config.items() if k not in ("state", "http", "sources")},
    }


def _outcome(
    run: _Run, seconds: float, rate: float, orders_per_s: float, resolve_after_s: float | None
) -> dict[str, Any]:
    """What every live run reports beside its figures: how it ended and how it was made."""
    return {
        "exit_code": run.exit_code,
        "poll_errors": run.poller.errors,
        "poll_error_samples": run.poller.error_samples,
        "parameters": {
            **_parameters(run, seconds, rate, orders_per_s),
            "resolve_after_s": resolve_after_s,
        },
        # Kept whenever something looks wrong, so a bad run can be understood afterwards.
        "daemon_stderr_tail": run.stderr_tail if run.troubled else "",
    }


def _sightings(run: _Run) -> dict[str, Any]:
    """The delays to the API and to the console of a run that polled `/v1/alerts`."""
    return {
        "api": summarize(run.due, run.poller.seen),
        "console": summarize(run.due, run.console.seen),
    }


def run_latency(seconds: float = 30, rate: float = 100, orders_per_s: float = 10) -> dict[str, Any]:
    """Alerts of a steady trickle: the figures and how they were made."""
    run = _live_run(seconds, rate, orders_per_s, RESOLVE_AFTER_S, "/v1/alerts?rule=lat")
    poller = run.poller
    return {
        **_sightings(run),
        "notifier": NOTIFIERS,
        "orders": len(run.due),
        "polls": poller.polls,
        "poll_round_trip_ms": 1000 * poller.round_trip_s / poller.polls if poller.polls else None,
        **_outcome(run, seconds, rate, orders_per_s, RESOLVE_AFTER_S),
    }


def run_recovery_latency(
    open_orders: int = RECOVERY_OPEN_ORDERS, seconds: float = 60, rate: float = 100
) -> dict[str, Any]:
    """The trickle of `run_latency` with recovery on and `open_orders` orders open: every
    snapshot pickles them all while the dataflow waits, and the alerts due meanwhile wait too.
    60 s at the default 30 s snapshot interval takes two snapshots."""
    run = _live_run(
        seconds, rate, 10, RESOLVE_AFTER_S, "/v1/alerts?rule=lat", open_orders, recovery=True
    )
    delays = delays_ms(run.due, run.console.seen)
    result = {
        **_sightings(run),
        "console_over_1s": sum(1 for d in delays if d > 1000),
        "open_orders": open_orders,
        "catch_up_s": run.catch_up_s,
        "daemon_rss_mib": run.rss_mib,
        "state_mib": run.state_bytes / 2**20,
        **_outcome(run, seconds, rate, 10, RESOLVE_AFTER_S),
    }
    result["parameters"]["snapshot_interval"] = "30s (the default)"
    return result


def run_busy_latency(
    seconds: float = 30,
    busy_events_per_s: float = 50_000,
    rate: float = 200,
    lateness_ms: int = LATENESS_MS,
) -> dict[str, Any]:
    """The trickle of `run_latency` under load: `busy_events_per_s` more events a second, whole
    orders that reach the warehouse at once (5 events each, nothing fires), about half of what
    one worker replays, with the gap rules on so that each order is reconciled. The daemon's
    CPU over the load shows how busy it was. With a `lateness_ms` of tens of seconds, only the
    alerts due while the load ran count: the rest come due in the idle drain."""
    busy = busy_events_per_s / 5
    run = _live_run(
        seconds,
        rate,
        10,
        RESOLVE_AFTER_S,
        "/v1/alerts?rule=lat",
        busy_per_s=busy,
        lateness_ms=lateness_ms,
    )
    if lateness_ms > LATENESS_MS:
        run.due = {oid: at for oid, at in run.due.items() if at <= run.load_end}
    return {
        **_sightings(run),
        "lateness_ms": lateness_ms,
        "busy_events_per_s": busy_events_per_s,
        "lines": run.lines,
        "daemon_cores": run.load_cores,  # its CPU seconds per second while fed the load
        "daemon_rss_mib": run.rss_mib,
        **_outcome(run, seconds, rate, 10, RESOLVE_AFTER_S),
    }


def run_storm_latency(
    seconds: float = 30, rate: float = 200, orders_per_s: float = 1000
) -> dict[str, Any]:
    """Alerts of a 漏发 storm: `orders_per_s` orders enter `paid` and none is ever allocated,
    so every one fires and keeps firing (30,000 at the end with the defaults). The console
    shows how late the alerts come once thousands are firing; `/metrics`, scraped every
    POLL_S meanwhile (far more often than Prometheus would), how long a scrape takes then and
    keeps the control plane, which also stores the alerts and answers the API, busy. The API
    is not polled for the alerts: each answer would carry them all."""
    run = _live_run(seconds, rate, orders_per_s, None, "/metrics")
    trips = [t * 1000 for t in run.poller.round_trips_s]
    return {
        "console": summarize(run.due, run.console.seen),
        "firing_at_end": len(run.due),
        "daemon_rss_mib": run.rss_mib,
        "scrape_ms": {
            "polls": len(trips),
            "p50": percentile(trips, 50) if trips else None,
            "p99": percentile(trips, 99) if trips else None,
            "max": max(trips) if trips else None,
        },
        **_outcome(run, seconds, rate, orders_per_s, None),
    }
