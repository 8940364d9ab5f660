"""Where a replay's time goes: each stage of the order dataflow timed alone, without bytewax.

    python -m orderwatch.bench.stages EVENTS --config CONFIG --out RESULT.json

The same objects the replay runs (the file source's reader, the router, one `ShardLogic` per
shard, built by `flow_steps`), called directly in one thread with the replay's GC settings.
Each stage runs over the whole input before the next one starts, so each is timed alone:
read every chunk, then decode and route every chunk, then feed every shard batch to its shard
in source order. What a 1-worker replay spends beyond the sum is bytewax, start-up and the
alert file. A run in its own process (the bench starts it like the others): it holds the
whole decoded input at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from orderwatch.config import REPLAY_BATCH_LINES, load_config
from orderwatch.connectors.files import JsonlSource
from orderwatch.connectors.raw import RawChunk
from orderwatch.pipelines.orders import ShardLogic, flow_steps
from orderwatch.pipelines.route import DEAD_LETTER_KEY
from orderwatch.runtime import Runtime, tune_gc

STAGES = ("read", "decode_route", "track")


def feed(
    shards: dict[str, ShardLogic],
    routed: list[tuple[str, Any]],
    build_shard: Callable[[bytes | None], ShardLogic],
) -> int:
    """Hand one routed chunk's batches to their shards (built when first needed), as the
    dataflow's `track_orders` step does; the number of alert changes they emitted."""
    alerts = 0
    for key, batch in routed:
        if key == DEAD_LETTER_KEY:
            continue
        logic = shards.get(key)
        if logic is None:
            logic = shards[key] = build_shard(None)
        alerts += len(logic.on_batch([batch])[0])
    return alerts


def split(
    events: Path, config: Path | None, batch_size: int = REPLAY_BATCH_LINES
) -> dict[str, Any]:
    """Seconds per stage, lines, and the alert changes the shards emitted."""
    cfg = load_config(config)
    runtime = Runtime(shards=cfg.engine.shards)
    router, build_shard = flow_steps(cfg, runtime, live=False)
    source = JsonlSource(events, batch_size=batch_size)
    tune_gc()

    started = time.perf_counter()
    part = source.build_part("bench", source.name, None)
    chunks: list[RawChunk] = []
    while True:
        try:
            chunks.extend(part.next_batch())
        except StopIteration:
            break
    read = time.perf_counter()

    routed = [router.route(chunk) for chunk in chunks]
    decoded = time.perf_counter()

    shards: dict[str, ShardLogic] = {}
    alerts = sum(feed(shards, items, build_shard) for items in routed)
    for logic in shards.values():
        alerts += len(logic.on_eof()[0])
    tracked = time.perf_counter()

    lines = sum(len(c.lines) for c in chunks)
    seconds = dict(zip(STAGES, (read - started, decoded - read, tracked - decoded), strict=True))
    return {
        "lines": lines,
        "seconds": seconds,
        "us_per_line": {k: v / lines * 1e6 for k, v in seconds.items()} if lines else {},
        "alert_changes": alerts,
        "shards": len(shards),
        "how": "one thread, no bytewax: read all chunks, then route all, then track all",
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m orderwatch.bench.stages", description=__doc__)
    p.add_argument("events", type=Path)
    p.add_argument("--config", type=Path)
    p.add_argument("--out", type=Path, required=True, help="write the result JSON here")
    args = p.parse_args(argv)
    args.out.write_text(json.dumps(split(args.events, args.config)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
