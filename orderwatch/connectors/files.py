"""JSON-lines (or nginx access-log) files as a bytewax source, optionally tailed.

One partition per file. The resume state is the byte offset and line number of the next
unread line, so a restart with recovery continues exactly where the snapshot was taken.
In `follow` mode only complete lines are taken; a half-written last line waits.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from orderwatch.connectors.raw import RawChunk

_READ_SIZE = 1 << 20
_POLL = timedelta(milliseconds=50)  # how often a tailed file is polled when idle


class _FilePartition(StatefulSourcePartition[RawChunk, tuple[int, int]]):
    def __init__(self, src: JsonlSource, offset: int, line: int) -> None:
        self._src = src
        self._f: BinaryIO = open(src.path, "rb")  # noqa: SIM115 - closed in close()
        self._f.seek(offset)
        self._offset = offset  # byte offset of the next line not yet emitted
        self._line = line  # its number, 1-based
        self._ahead: list[bytes] = []  # complete lines read but not yet emitted
        self._next = 0
        self._rest = b""  # a trailing partial line
        self._awake: datetime | None = None
        self._eof = False

    def _read_ahead(self) -> bool:
        data = self._f.read(_READ_SIZE)
        if not data:
            return False
        parts = (self._rest + data).split(b"\n")
        self._rest = parts.pop()
        self._ahead, self._next = parts, 0
        return True

    def next_batch(self) -> list[RawChunk]:
        if self._src.stop is not None and self._src.stop.is_set():
            raise StopIteration  # shutdown: end the input cleanly
        lines: list[bytes] = []
        want = self._src.batch_size
        while len(lines) < want:
            if self._next < len(self._ahead):
                take = self._ahead[self._next : self._next + want - len(lines)]
                self._next += len(take)
                self._offset += sum(map(len, take)) + len(take)
                lines.extend(take)
            elif self._read_ahead():
                continue
            elif self._src.follow:
                break  # a half-written last line waits for its newline
            else:
                if self._rest:  # a last line without a newline
                    lines.append(self._rest)
                    self._offset += len(self._rest)
                    self._rest = b""
                self._eof = True
                break
        first = self._line
        self._line += len(lines)
        if not lines:
            if self._eof:
                raise StopIteration
            self._awake = datetime.now(UTC) + _POLL
            return []
        self._awake = None
        self._src.progress(self._offset)
        lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        return [RawChunk(self._src.name, first, lines, self._src.bound_type, self._src.fmt)]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> tuple[int, int]:
        return (self._offset, self._line)

    def close(self) -> None:
        self._f.close()


class JsonlSource(FixedPartitionedSource[RawChunk, tuple[int, int]]):
    """Reads one file in chunks of `batch_size` lines; `follow=True` tails it forever."""

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        follow: bool = False,
        batch_size: int = 2000,
        bound_type: str | None = None,
        fmt: str = "jsonl",
        stop: threading.Event | None = None,
    ) -> None:
        self.path = Path(path)
        self.stop = stop
        self.name = name or f"file:{self.path.name}"
        self.follow = follow
        self.batch_size = batch_size
        self.bound_type = bound_type
        self.fmt = fmt
        self.bytes_read = 0

    def progress(self, offset: int) -> None:
        self.bytes_read = offset

    def list_parts(self) -> list[str]:
        return [self.name]

    def build_part(
        self, step_id: str, for_part: str, resume_state: tuple[int, int] | None
    ) -> _FilePartition:
        offset, line = resume_state or (0, 1)
        return _FilePartition(self, offset, line)
