"""`orderwatch simulate`: write simulated traffic to stdout, a JSONL file or Kafka (CONTRACT §7).

The argument parser lives in :mod:`orderwatch.cli`; this module runs the command from its
``argparse.Namespace`` (``out``, ``events``, ``rate``, ``orders_per_minute``, ``seed``, ``start``,
``scenario``, ``list_scenarios``). Exit codes follow the CLI: 0 ok, 1 runtime failure, 2 bad usage.

Outputs:

- ``-`` (stdout) or a file path: one compact JSON object per line;
- ``kafka://...``: not available yet (the Kafka issue); rejected as a usage error.

``--events 0`` writes endlessly. ``--rate`` paces the output in events per wall second; the
content does not depend on it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

from orderwatch.durations import parse_instant_ms
from orderwatch.simulate.generator import Simulator, write_jsonl
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


def paced(events: Iterable[dict[str, Any]], rate: float | None) -> Iterator[dict[str, Any]]:
    """The events, at most ``rate`` per wall second (no pacing when None)."""
    if not rate:
        yield from events
        return
    began = time.monotonic()
    for n, event in enumerate(events, 1):
        yield event
        ahead = n / rate - (time.monotonic() - began)
        if ahead > 0.005:
            time.sleep(ahead)


def on_sim_clock(
    timed: Iterable[tuple[int, dict[str, Any]]], start_ms: int, speed: float
) -> Iterator[dict[str, Any]]:
    """The events when their arrival comes on a clock running `speed` times the wall clock."""
    began = time.monotonic()
    for arrival, event in timed:
        ahead = (arrival - start_ms) / 1000 / speed - (time.monotonic() - began)
        if ahead > 0.005:
            time.sleep(ahead)
        yield event


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
    if args.speed:  # simulated time runs `speed` x the wall clock (from --start)
        timed = sim.timed_events(max_events=args.events or None)
        events = paced(on_sim_clock(timed, parse_start(args.start), args.speed), args.rate)
    else:
        events = paced(sim.events(max_events=args.events or None), args.rate)
    try:
        if args.out == "-":
            count = write_jsonl(events, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            with open(args.out, "wb") as fh:
                count = write_jsonl(events, fh)
    except BrokenPipeError:  # e.g. `| head`: the reader is gone, stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (OSError, RuntimeError) as exc:
        print(f"orderwatch simulate: {exc}", file=sys.stderr)
        return 1
    summary = {name: len(ids) for name, ids in sim.injected.items()}
    print(
        f"orderwatch simulate: {count} events, {sim.orders_created} orders, "
        f"injected {summary or 'nothing'}",
        file=sys.stderr,
    )
    return 0
