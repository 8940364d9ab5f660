"""`orderwatch bench` from its argparse namespace (the parser lives in `orderwatch.cli`).

Exit codes: 0 ok (whatever the figures say: a goal missed or outputs that differ are findings,
reported in the table and the JSON), 1 a measured command failed, 2 bad usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_EVENTS = 1_100_000
QUICK_EVENTS = 120_000


def bench_command(args: argparse.Namespace) -> int:
    from orderwatch.bench.run import ROOT, Options, run_bench

    events = args.events or (QUICK_EVENTS if args.quick else DEFAULT_EVENTS)  # the parser
    # refuses --events below 1000 and --repeat below 1 (exit 2, naming the flag)
    # Paths given are taken from the current directory; the defaults live in the repository,
    # because the measured commands run there (examples/orderwatch.yaml, bench/plain_rules.py).
    out: Path = (args.out or ROOT / "bench" / "results").resolve()
    work: Path = (args.work or ROOT / "bench" / "work").resolve()
    opts = Options(
        events=events,
        quick=args.quick,
        out=out,
        work=work,
        skip_latency=args.skip_latency,
        skip_profile=args.skip_profile,
        repeat=args.repeat,
        command=" ".join(["orderwatch", *sys.argv[1:]]),
    )
    try:
        return run_bench(opts)
    except RuntimeError as exc:
        print(f"orderwatch bench: {exc}", file=sys.stderr)
        return 1
