"""`orderwatch replay`: an event-time backtest of the rules on recorded input.

The output file is sorted by (time of the change, fingerprint, firing before resolved), so
it is byte-identical whatever the workers, processes or batch size. With `--processes N`
the parent starts N copies of itself as a local bytewax cluster and merges their counts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson

from orderwatch.cluster import free_ports, run_flow, supervise
from orderwatch.config import REPLAY_BATCH_LINES, Config
from orderwatch.connectors.files import JsonlSource
from orderwatch.connectors.sinks import AlertFileSink, DeadLetterSink
from orderwatch.domain.stats import LabelCap
from orderwatch.pipelines.orders import Outputs, build_flow
from orderwatch.runtime import Runtime, tune_gc


@dataclass
class Summary:
    events: Counter[str] = field(default_factory=Counter)  # by type
    rejected: Counter[str] = field(default_factory=Counter)  # by reason
    alerts: Counter[str] = field(default_factory=Counter)  # "rule status" -> count
    http: Counter[str] = field(default_factory=Counter)  # "route code-class" -> access logs
    duplicates: int = 0
    late: int = 0
    orders_open: int = 0
    lines: int = 0
    bytes: int = 0
    seconds: float = 0.0

    @property
    def events_total(self) -> int:
        return sum(self.events.values())

    @property
    def rate(self) -> float:
        return self.lines / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: Summary) -> None:
        self.events.update(other.events)
        self.rejected.update(other.rejected)
        self.alerts.update(other.alerts)
        self.http.update(other.http)
        self.duplicates += other.duplicates
        self.late += other.late
        self.orders_open += other.orders_open
        self.lines += other.lines
        self.bytes += other.bytes

    def to_json(self) -> dict[str, Any]:
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: dict(v) if isinstance(v, Counter) else v for k, v in values.items()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Summary:
        return cls(
            events=Counter(d["events"]),
            rejected=Counter(d["rejected"]),
            alerts=Counter(d["alerts"]),
            http=Counter(d["http"]),
            duplicates=d["duplicates"],
            late=d["late"],
            orders_open=d["orders_open"],
            lines=d["lines"],
            bytes=d["bytes"],
            seconds=d["seconds"],
        )


def collect(runtime: Runtime, sink: AlertFileSink) -> Summary:
    """This process's counts after the run."""
    s = Summary()
    for intake in runtime.intakes():
        for (_, etype), n in intake.events.items():
            s.events[etype] += n
        for (_, reason), n in intake.rejected.items():
            s.rejected[reason] += n
        for (route, _method, code), n in intake.requests.items():
            s.http[f"{route} {code}"] += n
        s.lines += intake.lines_read
        s.bytes += intake.bytes_read
    for tracker in runtime.trackers.values():
        s.duplicates += tracker.stats.duplicates
        s.late += tracker.stats.late
        s.orders_open += len(tracker.orders)
    for (rule, status), n in sink.by_rule.items():
        s.alerts[f"{rule} {status}"] += n
    return s


def sort_alert_file(path: Path) -> None:
    """Rewrite the alert lines in a canonical order (see module docstring)."""
    # One copy of the lines in memory, newlines kept: a backfill can write millions of
    # alerts, and reading the file whole, then splitting it, then joining the sorted lines
    # held three copies at once.
    with path.open("rb") as f:
        lines = f.readlines()
    if lines and not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"

    def key(line: bytes) -> tuple[str, str, int]:
        a = orjson.loads(line)
        at = a["startsAt"] if a["status"] == "firing" else a["endsAt"]
        return (at, a["fingerprint"], 0 if a["status"] == "firing" else 1)

    lines.sort(key=key)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("wb") as out:
        out.writelines(lines)
    os.replace(tmp, path)


@contextmanager
def _progress_writer(path: Path | None, source: JsonlSource) -> Iterator[None]:
    """In a cluster child: publish bytes read every 0.3 s for the parent's progress bar."""
    if path is None:
        yield
        return
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.3):
            path.write_text(str(source.bytes_read))

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        path.write_text(str(source.bytes_read))


def run_here(
    events: Path,
    cfg: Config,
    alerts_out: Path,
    dead_letters: Path,
    *,
    workers: int = 1,
    batch_size: int = REPLAY_BATCH_LINES,
    addresses: list[str] | None = None,
    process_id: int | None = None,
    progress_file: Path | None = None,
    on_progress: Any = None,
) -> Summary:
    """Run the replay dataflow in this process (alone or as one process of a cluster)."""
    for path in (alerts_out, dead_letters):  # an empty result is an empty file, not none
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    runtime = Runtime(
        shards=cfg.engine.shards,
        process_id=process_id or 0,
        route_cap=LabelCap(cfg.metrics.max_label_values, cfg.metrics.routes),
    )
    tune_gc()
    source = JsonlSource(events, batch_size=batch_size, max_line_bytes=cfg.engine.max_event_bytes)
    sink = AlertFileSink(alerts_out)
    flow = build_flow(
        cfg, [source], Outputs(sink, DeadLetterSink(dead_letters)), runtime, live=False
    )
    started = time.perf_counter()
    stop = threading.Event()
    if on_progress is not None:
        threading.Thread(target=_poll, args=(stop, source, on_progress), daemon=True).start()
    try:
        with _progress_writer(progress_file, source):
            run_flow(flow, workers=workers, process_id=process_id, addresses=addresses)
    finally:
        stop.set()
    summary = collect(runtime, sink)
    summary.seconds = time.perf_counter() - started
    return summary


def _poll(stop: threading.Event, source: JsonlSource, on_progress: Any) -> None:
    while not stop.wait(0.2):
        on_progress(source.bytes_read)


def run_cluster(
    events: Path,
    config_path: Path | None,
    alerts_out: Path,
    dead_letters: Path,
    *,
    processes: int,
    workers: int = 1,
    batch_size: int = REPLAY_BATCH_LINES,
    on_progress: Any = None,
) -> Summary:
    """Start `processes` copies of `orderwatch replay` as a local cluster and merge them."""
    ports = free_ports(processes)
    addresses = ",".join(f"127.0.0.1:{p}" for p in ports)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="orderwatch-replay-") as tmp:
        procs = []
        for i in range(processes):
            argv = [
                sys.executable,
                "-m",
                "orderwatch",
                "replay",
                str(events),
                "--alerts-out",
                str(alerts_out),
                "--dead-letters",
                str(dead_letters),
                "--workers",
                str(workers),
                "--batch-size",
                str(batch_size),
                "--addresses",
                addresses,
                "--process-id",
                str(i),
                "--summary-json",
                f"{tmp}/summary-{i}.json",
                "--progress-file",
                f"{tmp}/progress-{i}",
                "--no-sort",
                "--quiet",
            ]
            if config_path is not None:
                argv += ["--config", str(config_path)]
            procs.append(subprocess.Popen(argv))

        def progress() -> None:
            if on_progress is not None:
                on_progress(max(_read_int(Path(f"{tmp}/progress-{i}")) for i in range(processes)))

        codes = supervise(procs, progress)
        if any(codes):
            raise RuntimeError(f"replay {_outcome(codes)}; see their output above")
        total = Summary()
        for i in range(processes):
            total.merge(Summary.from_json(json.loads(Path(f"{tmp}/summary-{i}.json").read_text())))
    total.seconds = time.perf_counter() - started
    return total


def _outcome(codes: list[int]) -> str:
    """`process(es) [0] failed, stopped [1]`: who failed, and whom `supervise` stopped."""
    stopped = [i for i, c in enumerate(codes) if c == -signal.SIGTERM]
    failed = [i for i, c in enumerate(codes) if c != 0 and i not in stopped] or stopped
    rest = [i for i in stopped if i not in failed]
    return f"process(es) {failed} failed" + (f", stopped {rest}" if rest else "")


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (OSError, ValueError):
        return 0
