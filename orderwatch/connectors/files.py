"""JSON-lines (or nginx access-log) files as a bytewax source, optionally tailed.

One partition per file. The resume state is the byte offset of the next unread line, its
sequence number, the file's inode and the line's number in the file, so a restart with recovery
continues exactly where the snapshot was taken. In `follow` mode only complete lines are taken;
a half-written last line waits. A followed file may be rotated as `tail -F` allows: renamed and
re-created (logrotate's default; the old file is read to its end first) or truncated in place
(`copytruncate`); the new content is read from its start. Positions (line numbers) then count in
the new file, while chunks stay numbered without gaps (`RawChunk.first`) for the shards.
A restart with recovery after a rotation finishes the old file first if it is still beside the
path (found by its inode, as `access.log.1`), so nothing written before the rotation is lost.
A followed path that is gone (deleted or moved, not re-created) or unusable is noted in the
source's `health` at the idle poll points, so /readyz can say so until a file there is read.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import structlog
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from orderwatch.connectors.raw import RawChunk, file_source_name
from orderwatch.runtime import SourceHealth

_READ_SIZE = 1 << 20
_POLL = timedelta(milliseconds=50)  # how often a tailed file is polled when idle
# A path found unusable this long is reported (/readyz): not the moment between a rotation's
# rename and the new file's creation (logrotate `create`, or the writer reopening on a signal).
_GONE_AFTER = 2.0

log = structlog.get_logger(__name__)

# (offset, sequence number, inode, line number); older snapshots hold only the first two
ResumeState = tuple[int, ...]


class _FilePartition(StatefulSourcePartition[RawChunk, ResumeState]):
    def __init__(self, src: JsonlSource, resume: ResumeState | None) -> None:
        self._src = src
        self._f: BinaryIO = open(src.path, "rb")  # noqa: SIM115 - closed in close()
        self._ino = os.fstat(self._f.fileno()).st_ino
        offset, seq = resume[:2] if resume else (0, 1)
        line = resume[3] if resume and len(resume) > 3 else seq
        old_ino = resume[2] if resume and len(resume) > 2 else None  # the snapshot's file
        renamed = old_ino is not None and old_ino != self._ino
        truncated = os.fstat(self._f.fileno()).st_size < offset
        if src.follow and (renamed or truncated):
            rotated = self._find_rotated(old_ino) if old_ino is not None and renamed else None
            if rotated is not None and old_ino is not None:  # finish it; rotation moves on
                self._f.close()
                self._f, self._ino = rotated, old_ino
            else:
                log.warning(
                    "input file was rotated while stopped and its old one is not beside it; "
                    "reading the new one from its start",
                    source=src.name,
                    path=str(src.path),
                )
                offset, line = 0, 1
        self._f.seek(offset)
        self._offset = offset  # byte offset of the next line not yet emitted
        self._seq = seq  # its sequence number in the source, 1-based, across rotations
        self._line = line  # its number in the file, 1-based
        self._ahead: list[bytes] = []  # complete lines read but not yet emitted
        self._next = 0
        self._rest = b""  # a trailing partial line
        self._cr = False  # a carriage return was read: CRLF lines may follow
        self._awake: datetime | None = None
        self._eof = False
        self._gone_since: float | None = None  # monotonic s: the path first found unusable

    def _find_rotated(self, inode: int) -> BinaryIO | None:
        """The file the snapshot was taken from, renamed beside the path (`access.log.1`)."""
        folder = self._src.path.parent
        for entry in os.scandir(folder):
            try:
                if entry.is_file() and entry.inode() == inode:
                    log.info(
                        "input file was rotated while stopped; finishing the old one first",
                        source=self._src.name,
                        old=entry.path,
                    )
                    return open(entry.path, "rb")  # closed in close(), or when moving on
            except OSError:
                continue  # vanished meanwhile, or unreadable: look on
        return None

    def _rotated(self) -> str | None:
        """Why the followed file must be read anew from its start (None: it need not be).
        Called only when the reader is idle; notes a path that is gone in the source's health."""
        try:
            st = os.stat(self._src.path)
        except OSError as exc:  # renamed, not yet re-created: the old one may still grow
            self._unusable(
                "is gone (deleted or moved, not re-created)"
                if isinstance(exc, FileNotFoundError)
                else f"cannot be checked: {exc.strerror}"
            )
            return None
        if st.st_ino != self._ino:
            return "renamed and re-created"  # connected again once `_reopen` opens it
        if st.st_size < self._f.tell():
            return "truncated"
        self._usable()  # the same file as before (moved back, say)
        return None

    def _unusable(self, why: str) -> None:
        now = time.monotonic()
        if self._gone_since is None:
            self._gone_since = now
        if now - self._gone_since < _GONE_AFTER:  # logrotate's rename, then its create
            return
        health = self._src.health
        problem = f"{self._src.path.absolute()} {why}"
        if health.problem != problem:
            log.warning(
                "input file not readable at its path; waiting for it",
                source=self._src.name,
                problem=problem,
            )
            health.problem = problem

    def _usable(self) -> None:
        self._gone_since = None
        health = self._src.health
        if health.problem is not None:
            log.info("input file readable at its path again", source=self._src.name)
            health.problem = None

    def _reopen(self, why: str) -> bool:
        """Switch to the new file at the path (the old one is read to its end); False if it
        cannot be opened yet (renamed again meanwhile, say): the next poll tries again."""
        try:
            new = open(self._src.path, "rb")  # noqa: SIM115 - closed in close()
        except OSError as exc:
            self._unusable(f"was re-created but cannot be opened: {exc.strerror}")
            return False
        log.info(
            "input file rotated; reading the new one from its start",
            source=self._src.name,
            path=str(self._src.path),
            how=why,
        )
        self._f.close()
        self._f = new
        self._ino = os.fstat(new.fileno()).st_ino
        self._rest = b""
        self._offset, self._line = 0, 1
        self._usable()
        return True

    def _read_ahead(self) -> bool:
        data = self._f.read(_READ_SIZE)
        if not data:
            return False
        buf = self._rest + data
        self._cr = self._cr or buf.find(b"\r") >= 0  # one C scan instead of a check per line
        parts = buf.split(b"\n")
        self._rest = parts.pop()
        self._ahead, self._next = parts, 0
        return True

    def next_batch(self) -> list[RawChunk]:
        if self._src.stop is not None and self._src.stop.is_set():
            raise StopIteration  # shutdown: end the input cleanly
        lines: list[bytes] = []
        want = self._src.batch_size
        drained = False  # read to the end of what has been written
        while len(lines) < want:
            if self._next < len(self._ahead):
                take = self._ahead[self._next : self._next + want - len(lines)]
                self._next += len(take)
                self._offset += sum(map(len, take)) + len(take)
                lines.extend(take)
            elif self._read_ahead():
                continue
            elif self._src.follow:
                why = self._rotated()
                if why is None:
                    drained = True
                    break  # a half-written last line waits for its newline
                if self._read_ahead():  # what was written to the old file meanwhile
                    continue
                if lines or self._rest.strip():  # the old file's lines go out by its numbering
                    if self._rest.strip():  # its unterminated last line: whatever it holds
                        lines.append(self._rest)
                    self._rest = b""
                    break
                if not self._reopen(why):
                    break
            else:
                if self._rest:  # a last line without a newline
                    lines.append(self._rest)
                    self._offset += len(self._rest)
                    self._rest = b""
                self._eof = True
                break
        first, shown = self._seq, self._line
        self._seq += len(lines)
        self._line += len(lines)
        if not lines:
            if self._eof:
                raise StopIteration
            self._awake = datetime.now(UTC) + _POLL
            return []
        self._awake = None
        self._src.progress(self._offset)
        if self._cr:
            lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        src = self._src
        shown_first = None if shown == first else shown
        chunk = RawChunk(src.name, first, lines, src.bound_type, src.fmt, shown_first=shown_first)
        if drained or self._eof or (self._next >= len(self._ahead) and not self._read_ahead()):
            # the backlog ends here: the file's last write says since when it has been quiet
            chunk.written = os.fstat(self._f.fileno()).st_mtime_ns // 1_000_000
        return [chunk]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> ResumeState:
        return (self._offset, self._seq, self._ino, self._line)

    def close(self) -> None:
        self._f.close()


class JsonlSource(FixedPartitionedSource[RawChunk, ResumeState]):
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
        health: SourceHealth | None = None,
    ) -> None:
        self.path = Path(path)
        self.stop = stop
        self.name = name or file_source_name(self.path)
        # whether the followed path is usable, as the reader last found it (for /readyz)
        self.health = health if health is not None else SourceHealth(self.name)
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
        self, step_id: str, for_part: str, resume_state: ResumeState | None
    ) -> _FilePartition:
        return _FilePartition(self, resume_state)
