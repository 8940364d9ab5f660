"""JSON-lines (or nginx access-log) files as a bytewax source, optionally tailed.

One partition per file. The resume state is the byte offset of the next unread line, its
sequence number, the file's identity (inode, device, and a fingerprint of its first KiB) and
the line's number in the file, so a restart with recovery continues exactly where the snapshot
was taken. In `follow` mode only complete lines are taken; a half-written last line waits.

A followed file may be rotated as `tail -F` allows: renamed and re-created (logrotate's
default) or truncated in place (`copytruncate`); the new content is read from its start.
After a rename, the old file is read on until it has been quiet for `_ROTATE_GRACE` (a writer
keeps writing to it until it reopens its log, on logrotate's postrotate signal), and only then
the new one: a line the writer finishes meanwhile comes out whole, one it never finishes comes
out as it is. A file rewritten in place (its first bytes changed) is read again from its start.
Positions (line numbers) then count in the new file, while chunks stay numbered without gaps
(`RawChunk.first`) for the shards. A restart with recovery after a rotation finishes the old
file first if it is still beside the path (as `access.log.1`, found by its inode and checked by
its fingerprint), so nothing written before the rotation is lost.

A line longer than `max_line_bytes` is not held whole: its head is kept (enough for the decoder
to reject it as `oversized`, with an excerpt), the rest is skipped up to its newline, and each
call reads a bounded amount, so a writer's hole of NUL bytes costs memory of one line's head.

A followed path that is gone (deleted or moved, not re-created) or unusable is noted in the
source's `health` at the idle poll points, so /readyz can say so until a file there is open.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

import structlog
from bytewax.inputs import FixedPartitionedSource, StatefulSourcePartition

from orderwatch.connectors.raw import RawChunk, file_source_name
from orderwatch.runtime import SourceHealth

_READ_SIZE = 1 << 20
# Reads per `next_batch` call at most: a long run of bytes without a newline (a writer's hole
# of NUL bytes) is read over several calls, so bytewax keeps running the rest of the dataflow.
_READS_PER_CALL = 4
_POLL = timedelta(milliseconds=50)  # how often a tailed file is polled when idle
# A path found unusable this long is reported (/readyz): not the moment between a rotation's
# rename and the new file's creation (logrotate `create`, or the writer reopening on a signal).
_GONE_AFTER = 2.0
# Seconds a renamed file must stay quiet (not grow) before the new one at the path is read: a
# writer goes on writing to the old file until it reopens its log (Filebeat's close_renamed
# grace, fluent-bit's Rotate_Wait).
_ROTATE_GRACE = 5.0
# A file's identity across a restart: its first bytes (as Filebeat's `fingerprint` identity),
# since a freed inode number is soon given to another file.
_FINGERPRINT = 1024
_BOM = 3  # bytes a line may start with that the decoder drops before measuring it

_RENAMED = "renamed and re-created"

log = structlog.get_logger(__name__)

# (offset, sequence number, inode, line number, device, fingerprint length, fingerprint);
# older snapshots hold only the first two, or the first four
ResumeState = tuple[int, ...]


def _digest(head: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(head, digest_size=8).digest())


@dataclass(frozen=True)
class _Identity:
    """Which file a snapshot was taken from."""

    ino: int
    dev: int | None = None  # None: a snapshot from before fingerprints (the inode alone)
    size: int = 0  # bytes the fingerprint covers: the file's first ones, up to _FINGERPRINT
    digest: int | None = None

    @classmethod
    def of(cls, resume: ResumeState | None) -> _Identity | None:
        if resume is None or len(resume) < 3:
            return None
        if len(resume) < 7:
            return cls(resume[2])
        return cls(resume[2], resume[4], resume[5], resume[6])

    def matches(self, f: BinaryIO) -> bool:
        st = os.fstat(f.fileno())
        if st.st_ino != self.ino:
            return False
        if self.digest is None or self.size == 0:  # an older snapshot, or an empty file's
            return True
        head = os.pread(f.fileno(), self.size, 0)
        if len(head) != self.size or _digest(head) != self.digest:
            return False  # another file that got the freed inode
        # A full fingerprint is enough on its own: device numbers can change across a reboot
        # (LVM, network file systems), and a file read again from its start repeats it all.
        return st.st_dev == self.dev or self.size == _FINGERPRINT


@dataclass
class _Move:
    """The followed file is to be left for the one now at the path."""

    why: str
    quiet_since: float  # monotonic s: when the old file last grew, or the move was seen
    grace: float  # how long it must stay quiet first
    new: BinaryIO | None = None  # the file at the path, once it could be opened


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except OSError:  # the folder is gone or unreadable: nothing there to finish
        return []


class _FilePartition(StatefulSourcePartition[RawChunk, ResumeState]):
    def __init__(self, src: JsonlSource, resume: ResumeState | None) -> None:
        self._src = src
        self._f: BinaryIO = open(src.path, "rb")  # noqa: SIM115 - closed in close()
        offset, seq = resume[:2] if resume else (0, 1)
        line = resume[3] if resume and len(resume) > 3 else seq
        was = _Identity.of(resume)  # the snapshot's file
        replaced = was is not None and not was.matches(self._f)
        truncated = os.fstat(self._f.fileno()).st_size < offset
        if src.follow and (replaced or truncated):
            rotated = self._find_rotated(was) if was is not None and replaced else None
            if rotated is not None:  # finish it; rotation moves on
                self._f.close()
                self._f = rotated
            else:
                log.warning(
                    "input file was rotated while stopped and its old one is not beside it; "
                    "reading the new one from its start",
                    source=src.name,
                    path=str(src.path),
                )
                offset, line = 0, 1
        self._know(self._f)
        self._f.seek(offset)
        self._offset = offset  # byte offset of the next line not yet emitted
        self._seq = seq  # its sequence number in the source, 1-based, across rotations
        self._line = line  # its number in the file, 1-based
        self._ahead: list[bytes] = []  # complete lines read but not yet emitted
        self._next = 0
        self._cut = 0  # bytes of `_ahead[0]` skipped (an oversized line's tail)
        self._rest = b""  # a trailing partial line (its head only, if oversized)
        self._rest_len = 0  # its length in the file
        self._keep = src.max_line_bytes + 1 + _BOM  # longer lines are cut to this
        self._cr = False  # a carriage return was read: CRLF lines may follow
        self._awake: datetime | None = None
        self._eof = False
        self._gone_since: float | None = None  # monotonic s: the path first found unusable
        self._move: _Move | None = None  # a rotation seen, the old file not yet finished
        self._idle = False  # the last call read all that had been written

    def _know(self, f: BinaryIO) -> None:
        """Take `f` as the file being read: note its identity."""
        st = os.fstat(f.fileno())
        self._ino, self._dev = st.st_ino, st.st_dev
        self._head = os.pread(f.fileno(), _FINGERPRINT, 0)

    def _same_head(self) -> bool:
        """Whether the file still starts as it did (False: rewritten in place); learns more
        of its head while it is shorter than the fingerprint."""
        now = os.pread(self._f.fileno(), _FINGERPRINT, 0)
        if not now.startswith(self._head):
            return False
        self._head = now
        return True

    def _find_rotated(self, was: _Identity) -> BinaryIO | None:
        """The file the snapshot was taken from, renamed beside the path (`access.log.1`), or
        beside the file a linked path points to (Kubernetes' `/var/log/containers/*.log` link
        to the runtime's log, which is rotated where it is)."""
        path = self._src.path
        folders = dict.fromkeys((path.parent, Path(os.path.realpath(path)).parent))
        entries = [e for folder in folders for e in _entries(folder)]
        for entry in entries:
            try:
                if not (entry.inode() == was.ino and entry.is_file()):
                    continue
                f = open(entry.path, "rb")  # noqa: SIM115 - closed in close(), or when moving on
            except OSError:
                continue  # vanished meanwhile, or unreadable: look on
            if not was.matches(f):  # another file that got the freed inode number
                f.close()
                continue
            log.info(
                "input file was rotated while stopped; finishing the old one first",
                source=self._src.name,
                old=entry.path,
            )
            return f
        return None

    def _rotated(self) -> str | None:
        """Why the followed file must be left for the one at the path (None: it need not be).
        Called only when the reader is idle; notes a path that is gone in the source's health."""
        try:
            st = os.stat(self._src.path)
        except OSError as exc:  # renamed, not yet re-created: the old one may still grow
            self._unusable(self._why_unusable(exc))
            return None
        if st.st_ino != self._ino or st.st_dev != self._dev:
            return _RENAMED
        if st.st_size < self._f.tell():
            return "truncated"
        if not self._same_head():  # at the same or a larger size: the size cannot tell
            return "rewritten in place"
        self._usable()  # the same file as before (moved back, say)
        return None

    @staticmethod
    def _why_unusable(exc: OSError) -> str:
        if isinstance(exc, FileNotFoundError):
            return "is gone (deleted or moved, not re-created)"
        return f"cannot be checked: {exc.strerror}"

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

    def _check_rotation(self) -> None:
        """At an idle point: note a rotation of the followed file (`_move`), if there was one."""
        why = self._rotated()
        if why is not None:
            grace = _ROTATE_GRACE if why == _RENAMED else 0.0  # else the old content is gone
            self._move = _Move(why, time.monotonic(), grace)

    def _old_file_done(self) -> bool:
        """At an idle point, a rotation noted: whether the file read so far is finished and
        the one at the path is to be read next (opened already). After a rename, the old file
        must first have been quiet for `_ROTATE_GRACE`."""
        move = self._move
        if move is None:
            return False
        if move.new is None:
            try:
                move.new = open(self._src.path, "rb")  # noqa: SIM115 - closed in close()
            except OSError as exc:  # renamed again meanwhile, say: the next poll tries again
                self._unusable(
                    self._why_unusable(exc)
                    if isinstance(exc, FileNotFoundError)
                    else f"was re-created but cannot be opened: {exc.strerror}"
                )
                return False
            st = os.fstat(move.new.fileno())
            if move.why == _RENAMED and (st.st_ino, st.st_dev) == (self._ino, self._dev):
                move.new.close()  # moved back meanwhile: nothing to move on to
                self._move = None
                self._usable()
                return False
            self._usable()  # a file at the path is open: the next to be read
        return time.monotonic() - move.quiet_since >= move.grace

    def _reopen(self) -> None:
        """Switch to the file at the path, opened by `_old_file_done`."""
        move = self._move
        assert move is not None and move.new is not None
        log.info(
            "input file rotated; reading the new one from its start",
            source=self._src.name,
            path=str(self._src.path),
            how=move.why,
        )
        self._f.close()
        self._f = move.new
        self._move = None
        self._know(self._f)
        self._rest, self._rest_len = b"", 0
        self._offset, self._line = 0, 1

    def _readable(self) -> bool:
        """Whether the file may be read on: not one truncated or rewritten in place (what its
        old position holds now is not the continuation of what was read)."""
        return self._move is None or self._move.why == _RENAMED

    def _read_ahead(self) -> bool:
        """Read on; False at the end of what has been written. Bytes are scanned once: a
        partial line is joined to its end only when its newline comes."""
        data = self._f.read(_READ_SIZE)
        if not data:
            return False
        if self._move is not None:
            self._move.quiet_since = time.monotonic()  # the old file still grows
        if len(self._head) < _FINGERPRINT:
            self._same_head()  # a rewrite is told at the next idle point
        self._cr = self._cr or data.find(b"\r") >= 0  # one C scan instead of a check per line
        if data.find(b"\n") < 0:
            self._hold(data)
            return True
        parts = data.split(b"\n")
        self._cut = 0
        if self._rest_len:  # the partial line ends here
            first = self._rest + parts[0][: self._keep - len(self._rest)]
            self._cut = self._rest_len + len(parts[0]) - len(first)
            parts[0] = first
        self._rest, self._rest_len = b"", 0
        self._hold(parts.pop())
        self._ahead, self._next = parts, 0
        return True

    def _hold(self, data: bytes) -> None:
        """Keep `data` as (more of) the partial last line: at most its head, if it is long."""
        room = self._keep - len(self._rest)
        if room > 0:
            self._rest += data[:room]
        self._rest_len += len(data)

    def _take_rest(self, lines: list[bytes]) -> None:
        """The partial last line goes out as it is (a line of whitespace is skipped later)."""
        if self._rest_len:
            lines.append(self._rest)
            self._offset += self._rest_len
            self._rest, self._rest_len = b"", 0

    def next_batch(self) -> list[RawChunk]:
        if self._src.stop is not None and self._src.stop.is_set():
            raise StopIteration  # shutdown: end the input cleanly
        lines: list[bytes] = []
        want = self._src.batch_size
        drained = False  # read to the end of what has been written
        more = False  # stopped with more to read: called again at once
        reads = 0
        checked = False  # whether the path was checked for a rotation in this call
        if self._idle and self._move is None:
            # Checked before reading on: a file truncated or rewritten in place since the last
            # poll holds new content at the old position, which is not to be read as more lines.
            self._check_rotation()
            checked = True
        while len(lines) < want:
            if self._next < len(self._ahead):
                start = self._next
                take = self._ahead[start : start + want - len(lines)]
                self._next += len(take)
                self._offset += sum(map(len, take)) + len(take)
                if start == 0:
                    self._offset += self._cut  # an oversized line's skipped tail
                lines.extend(take)
            elif reads >= _READS_PER_CALL:
                more = True
                break
            elif self._readable() and self._read_ahead():
                reads += 1
            elif self._src.follow:
                if self._move is None and not checked:
                    self._check_rotation()
                    checked = True
                if not self._old_file_done():
                    drained = True
                    break  # a half-written last line waits for its newline
                move = self._move
                if move is not None and move.why == _RENAMED and self._read_ahead():
                    reads += 1  # written to the old file since the last read
                    continue
                if lines or self._rest_len:  # the old file's lines go out by its numbering
                    self._take_rest(lines)  # its unterminated last line: whatever it holds
                    break
                self._reopen()
            else:
                self._take_rest(lines)  # a last line without a newline
                self._eof = True
                break
        self._idle = drained
        first, shown = self._seq, self._line
        self._seq += len(lines)
        self._line += len(lines)
        if not lines:
            if self._eof:
                raise StopIteration
            self._awake = None if more else datetime.now(UTC) + _POLL
            return []
        self._awake = None
        self._src.progress(self._offset)
        if self._cr:
            lines = [ln[:-1] if ln.endswith(b"\r") else ln for ln in lines]
        src = self._src
        shown_first = None if shown == first else shown
        chunk = RawChunk(src.name, first, lines, src.bound_type, src.fmt, shown_first=shown_first)
        if (
            drained
            or self._eof
            or (self._next >= len(self._ahead) and not (self._readable() and self._read_ahead()))
        ):
            # the backlog ends here: the file's last write says since when it has been quiet
            chunk.written = os.fstat(self._f.fileno()).st_mtime_ns // 1_000_000
        return [chunk]

    def next_awake(self) -> datetime | None:
        return self._awake

    def snapshot(self) -> ResumeState:
        if len(self._head) < _FINGERPRINT:
            self._same_head()
        head = self._head
        return (self._offset, self._seq, self._ino, self._line, self._dev, len(head), _digest(head))

    def close(self) -> None:
        self._f.close()
        if self._move is not None and self._move.new is not None:
            self._move.new.close()


class JsonlSource(FixedPartitionedSource[RawChunk, ResumeState]):
    """Reads one file in chunks of `batch_size` lines; `follow=True` tails it forever.

    `max_line_bytes` is the decoder's limit (`engine.max_event_bytes`): a longer line is
    handed on cut to a little more than it, which the decoder rejects as `oversized`."""

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
        max_line_bytes: int = 65_536,
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
        self.max_line_bytes = max_line_bytes
        self.bytes_read = 0

    def progress(self, offset: int) -> None:
        self.bytes_read = offset

    def list_parts(self) -> list[str]:
        return [self.name]

    def build_part(
        self, step_id: str, for_part: str, resume_state: ResumeState | None
    ) -> _FilePartition:
        return _FilePartition(self, resume_state)
