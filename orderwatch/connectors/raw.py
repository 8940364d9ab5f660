"""The unit every source hands to the dataflow: a chunk of raw lines with their positions.

Sources do no decoding: they only read bytes, so a chunk is cheap to produce and to move
between workers, and decoding happens in one place (`pipelines.route`).
"""

from __future__ import annotations

from pathlib import Path

from msgspec import Struct


def file_source_name(path: str | Path) -> str:
    """A file source's name when its config gives none (metrics, dead letters, logs)."""
    return f"file:{Path(path).name}"


class RawChunk(Struct, gc=False):
    source: str  # the source's name, e.g. "file:events.jsonl"
    # position of the first line (1-based line number or Kafka offset); the chunks of a
    # source are numbered without gaps, which is how shards put them back in order
    first: int
    lines: list[bytes]
    bound_type: str | None = None  # single-type source: `type` may be omitted
    fmt: str = "jsonl"  # "jsonl" or "nginx"
    positions: list[str] | None = None  # explicit positions when not consecutive
    shown_first: int | None = None  # the first line's number in its file, if not `first`
    # wall ms of the source's last write, on a chunk that read it to its end (a file's mtime):
    # how long the input has been quiet already when it is read, e.g. a backlog after a start
    written: int | None = None

    def position(self, i: int) -> str:
        if self.positions is not None:
            return self.positions[i]
        return str((self.first if self.shown_first is None else self.shown_first) + i)
