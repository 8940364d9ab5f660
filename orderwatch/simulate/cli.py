"""`orderwatch simulate`: write simulated traffic to stdout, a JSONL file or Kafka (CONTRACT §7).

The argument parser lives in :mod:`orderwatch.cli`; this module runs the command from its
``argparse.Namespace`` (``out``, ``events``, ``rate``, ``orders_per_minute``, ``seed``, ``start``,
``scenario``, ``list_scenarios``). Exit codes follow the CLI: 0 ok, 1 runtime failure, 2 bad usage.

Outputs:

- ``-`` (stdout) or a file path: one compact JSON object per line;
- ``kafka://...``: not available yet (the Kafka issue); rejected as a usage error.

``--events 0`` writes endlessly. ``--rate`` paces the output in events per wall second; the
content does not depend on it. Lines are written in batches; whenever ``--rate`` or ``--speed``
makes the run wait for the wall clock, what is batched is written and flushed first, so paced
output arrives as it is generated. SIGTERM or SIGINT (Ctrl-C) ends a run cleanly: the events
generated so far are written, whole lines only, the summary printed, exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import FrameType
from typing import Any

from orderwatch.durations import parse_instant_ms
from orderwatch.simulate.generator import JsonlWriter, Simulator
from orderwatch.simulate.scenarios import ORDER_FAULTS, SCENARIOS, WRONG_OFFSET

DEFAULT_START = "2026-11-11T00:00:00+08:00"
#: Share used when ``--scenario NAME`` gives no ``=SHARE``.
DEFAULT_ORDER_SHARE = 0.02
DEFAULT_WINDOW_SHARE = 0.1
DEFAULT_WRONG_OFFSET_SHARE = 0.001


class UsageError(Exception):
    """A bad command-line value (exit code 2)."""


def parse_scenarios(specs: Iterable[str]) -> dict[str, float]:
    """``["double_ship=0.05", "callback_storm"]`` -> ``{name: share}`` with default shares."""
    found: dict[str, float] = {}
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if name not in SCENARIOS:
            raise UsageError(f"unknown scenario {name!r}; see --list-scenarios")
        if sep:
            try:
                found[name] = float(value)
            except ValueError:
                raise UsageError(f"scenario {name!r}: share {value!r} is not a number") from None
        elif name == WRONG_OFFSET:
            found[name] = DEFAULT_WRONG_OFFSET_SHARE
        else:
            found[name] = DEFAULT_ORDER_SHARE if name in ORDER_FAULTS else DEFAULT_WINDOW_SHARE
    return found


def parse_start(text: str | None) -> int:
    """Epoch ms of `--start` (an ISO 8601 time with a UTC offset), DEFAULT_START if None."""
    try:
        return parse_instant_ms(DEFAULT_START if text is None else text)
    except ValueError as exc:
        raise UsageError(f"--start: {exc}") from None


def paced(
    events: Iterable[dict[str, Any]],
    rate: float | None,
    wait: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """The events, at most ``rate`` per wall second (no pacing when None); ``wait`` sleeps."""
    if not rate:
        yield from events
        return
    began = time.monotonic()
    for n, event in enumerate(events, 1):
        yield event
        ahead = n / rate - (time.monotonic() - began)
        if ahead > 0.005:
            wait(ahead)


def on_sim_clock(
    timed: Iterable[tuple[int, dict[str, Any]]],
    start_ms: int,
    speed: float,
    wait: Callable[[float], None] = time.sleep,
) -> Iterator[dict[str, Any]]:
    """The events when their arrival comes on a clock running `speed` times the wall clock;
    ``wait`` sleeps."""
    began = time.monotonic()
    for arrival, event in timed:
        ahead = (arrival - start_ms) / 1000 / speed - (time.monotonic() - began)
        if ahead > 0.005:
            wait(ahead)
        yield event


class _Stopped(Exception):
    """SIGTERM or SIGINT arrived while the run waited for the wall clock."""


class _Run:
    """A run's writer, its pacing waits and its stop signals.

    A stop signal never interrupts a write: it sets ``writer.stopping`` (the writer ends after its
    current batch) and raises :class:`_Stopped` only while the run waits for the pacing clock, when
    every line generated has been written and flushed.
    """

    def __init__(self, writer: JsonlWriter) -> None:
        self.writer = writer
        self._waiting = False

    def wait(self, seconds: float) -> None:
        """Write and flush what is batched, then sleep (a pacer's ``wait``)."""
        self.writer.flush()
        self._waiting = True
        try:
            if self.writer.stopping:
                raise _Stopped
            time.sleep(seconds)
        finally:
            self._waiting = False

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.writer.stopping = True
        if self._waiting:
            raise _Stopped

    def write_all(self, events: Iterable[dict[str, Any]]) -> int:
        """Write ``events`` until they end or a stop signal; return the lines written."""
        handled = (signal.SIGTERM, signal.SIGINT)
        before: list[Any] = []
        if threading.current_thread() is threading.main_thread():
            before = [signal.signal(signum, self.on_signal) for signum in handled]
        try:
            with contextlib.suppress(_Stopped):
                self.writer.write_all(events)
            self.writer.flush()
        finally:
            for signum, handler in zip(handled, before, strict=False):
                signal.signal(signum, handler)
        return self.writer.written


def simulate_command(args: argparse.Namespace) -> int:
    """Run ``orderwatch simulate``; the summary goes to stderr."""
    if args.list_scenarios:
        width = max(map(len, SCENARIOS))
        for name, text in SCENARIOS.items():
            print(f"{name:<{width}}  {text}")
        return 0
    try:
        scenarios = parse_scenarios(args.scenario)
        sim = Simulator(
            seed=args.seed,
            start_ms=parse_start(args.start),
            orders_per_minute=args.orders_per_minute,
            scenarios=scenarios,
        )
        if args.out.startswith("kafka://"):
            raise UsageError("Kafka output is not available in this build; write a file")
    except (UsageError, ValueError) as exc:
        print(f"orderwatch simulate: {exc}", file=sys.stderr)
        return 2

    def write(out: Any) -> JsonlWriter:
        writer = JsonlWriter(out, count_orders=True)
        job = _Run(writer)
        if args.speed:  # simulated time runs `speed` x the wall clock (from --start)
            timed = sim.timed_events(max_events=args.events or None)
            clock = on_sim_clock(timed, parse_start(args.start), args.speed, job.wait)
            events = paced(clock, args.rate, job.wait)
        else:
            events = paced(sim.events(max_events=args.events or None), args.rate, job.wait)
        job.write_all(events)
        return writer

    try:
        out = sys.stdout.buffer if args.out == "-" else open(args.out, "wb")  # noqa: SIM115
    except OSError as exc:  # a usage error, like replay's outputs: nothing was generated yet
        print(
            f"orderwatch simulate: --out {args.out}: cannot write: {exc.strerror}", file=sys.stderr
        )
        return 2
    try:
        with contextlib.ExitStack() as closing:
            if out is not sys.stdout.buffer:
                closing.enter_context(out)
            writer = write(out)
    except BrokenPipeError:  # e.g. `| head`: the reader is gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as exc:  # e.g. the disk filled up
        print(
            f"orderwatch simulate: --out {args.out}: write failed: {exc.strerror}", file=sys.stderr
        )
        return 1
    except RuntimeError as exc:
        print(f"orderwatch simulate: {exc}", file=sys.stderr)
        return 1
    summary = {name: len(ids) for name, ids in sim.injected.items()}
    print(
        f"orderwatch simulate: {writer.written} events, {writer.orders} orders, "
        f"injected {summary or 'nothing'}",
        file=sys.stderr,
    )
    return 0
