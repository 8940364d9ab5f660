"""What events cost while they wait for the watermark: a live daemon holds `lateness` × rate.

    python -m orderwatch.bench.waiting EVENTS --lines N --config CONFIG --out RESULT.json

The replay's own router and shard logic (`flow_steps`), in one thread, with the lateness set
far beyond the input's span, so that no event is ever applied: every order-scoped event of
the first N lines stays buffered in its shard, as the newest `lateness` of a live stream
does. Chunks are dropped once routed, as in the dataflow. The bench runs it for two line
counts in their own processes and divides the difference of their peak RSS by the difference
in events waiting (`bytes_per_order` does the arithmetic).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from orderwatch.bench.stages import feed
from orderwatch.config import REPLAY_BATCH_LINES, load_config
from orderwatch.connectors.files import JsonlSource
from orderwatch.pipelines.orders import ShardLogic, flow_steps
from orderwatch.runtime import Runtime, tune_gc

FOREVER_MS = 100 * 365 * 86_400_000  # a lateness no input spans: nothing is ever applied


def hold(events: Path, config: Path | None, lines: int) -> dict[str, Any]:
    """Route the first `lines` lines into their shards and keep them waiting."""
    cfg = load_config(config).model_copy(update={"lateness": FOREVER_MS})
    runtime = Runtime(shards=cfg.engine.shards)
    router, build_shard = flow_steps(cfg, runtime, live=False)
    source = JsonlSource(events, batch_size=REPLAY_BATCH_LINES)
    tune_gc()
    part = source.build_part("bench", source.name, None)
    shards: dict[str, ShardLogic] = {}
    read = applied = 0
    while read < lines:
        try:
            chunks = part.next_batch()
        except StopIteration:
            break
        for chunk in chunks:
            if read + len(chunk.lines) > lines:
                chunk.lines = chunk.lines[: lines - read]
            read += len(chunk.lines)
            applied += feed(shards, router.route(chunk), build_shard)
    return {
        "lines": read,
        "waiting": sum(logic.tracker.buffered for logic in shards.values()),
        "orders": sum(len(logic.tracker.orders) for logic in shards.values()),
        "alert_changes": applied,
        "lateness_ms": FOREVER_MS,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m orderwatch.bench.waiting")
    ap.add_argument("events", type=Path)
    ap.add_argument("--lines", type=int, required=True)
    ap.add_argument("--config", type=Path, default=None)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    result = hold(args.events, args.config, args.lines)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
