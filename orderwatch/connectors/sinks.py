"""Where the dataflow's outputs go: alert changes and dead letters.

Each sink has a single partition, so one writer sees every item whatever the number of
workers or processes. `local=False` hides the partition from a process (in a cluster, only
the process running the control plane owns the alert queue).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import structlog
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from orderwatch.domain.alert import AlertChange
from orderwatch.domain.rejected import RejectedByOrder
from orderwatch.events import Rejected
from orderwatch.logs import RateLimited
from orderwatch.runtime import AlertBatch, Runtime

DEAD_LETTERS = "dead-letters.jsonl"  # the daemon's, in its state.dir
_MAX_RAW = 65_536
_MAX_WAITING = 10_000  # dead letters held while their file cannot be written

log = structlog.get_logger(__name__)
_rejections = RateLimited(log)  # one line per reason per 10 s, whatever the flood


def dead_letter_json(r: Rejected) -> dict[str, Any]:
    """A dead-letter record: reason, detail, where it came from, and the raw input."""
    raw = r.raw[:_MAX_RAW]
    try:
        text: str | None = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    out: dict[str, Any] = {
        "reason": r.reason,
        "detail": r.detail,
        "source": r.source,
        "position": r.position,
        "received_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if text is not None:
        out["raw"] = text
    else:
        out["raw_hex"] = raw.hex()
    if r.truncated or len(r.raw) > len(raw):
        out["truncated"] = True
    return out


class _Single(FixedPartitionedSink[Any, None]):
    """A sink with one partition named after it."""

    part = "single"

    def __init__(self, local: bool = True) -> None:
        self.local = local

    def list_parts(self) -> list[str]:
        return [self.part] if self.local else []


class _AppendPartition(StatefulSinkPartition[Any, None]):
    def __init__(self, path: Path, render: Any, on_write: Any = None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._f: BinaryIO = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._render = render
        self._on_write = on_write

    def write_batch(self, values: list[Any]) -> None:
        self._f.write(b"".join(orjson.dumps(self._render(v)) + b"\n" for v in values))
        self._f.flush()
        if self._on_write is not None:
            self._on_write(values)

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()


class _DeadLetterPartition(StatefulSinkPartition[Any, None]):
    """Appends dead letters to a file the daemon does not own: it may be rotated or deleted
    (then a new one is started at the path), and the disk may fill up or refuse writes (then
    the records wait in memory, up to `_MAX_WAITING`, and are written once it takes them).
    Either way the daemon goes on: a dead letter is never worth stopping the monitoring."""

    def __init__(self, path: Path, log_them: bool, index: RejectedByOrder | None) -> None:
        self._path = path
        self._log_them = log_them
        self._index = index
        self._f: BinaryIO | None = None
        self._ino = 0
        self._waiting: list[bytes] = []
        self._dropped = 0
        self._failures = 0

    def _file(self) -> BinaryIO:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            st = None
        if self._f is not None and st is not None and st.st_ino == self._ino:
            return self._f
        if self._f is not None:  # rotated or deleted under us: start a new file at the path
            log.info("dead-letter file replaced; writing a new one", path=str(self._path))
            self._f.close()
            self._f = None
        self._path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self._path, "ab")  # noqa: SIM115 - closed in close()
        self._f, self._ino = f, os.fstat(f.fileno()).st_ino
        return f

    def write_batch(self, values: list[Any]) -> None:
        records = [dead_letter_json(v) for v in values]
        self._waiting += [orjson.dumps(r) + b"\n" for r in records]
        if self._index is not None:
            _index_all(self._index, records)
        if self._log_them:
            for v in values:
                _rejections.warning(
                    v.reason,
                    "input rejected, see the dead-letter file",
                    reason=v.reason,
                    detail=v.detail[:300],
                    source=v.source,
                    position=v.position,
                    file=str(self._path),
                )
        try:
            f = self._file()
            f.write(b"".join(self._waiting))
            f.flush()
        except OSError as exc:
            self._failures += 1
            if len(self._waiting) > _MAX_WAITING:
                self._dropped += len(self._waiting) - _MAX_WAITING
                del self._waiting[:-_MAX_WAITING]
            if self._failures == 1 or self._failures % 100 == 0:
                log.error(
                    "dead_letter_write_failed",
                    path=str(self._path),
                    error=f"{type(exc).__name__}: {exc.strerror or exc}",
                    waiting=len(self._waiting),
                    dropped=self._dropped,
                )
            return
        if self._failures:
            log.warning(
                "dead_letter_writable_again", path=str(self._path), written=len(self._waiting)
            )
            self._failures = 0
        self._waiting = []

    def snapshot(self) -> None:
        return None

    def close(self) -> None:
        if self._f is not None:
            with suppress(OSError):
                self._f.flush()
                os.fsync(self._f.fileno())
            self._f.close()


def _index_all(index: RejectedByOrder, records: list[dict[str, Any]]) -> None:
    """The order timelines' view of the dead letters: a bug there must not stop the daemon
    (the file, written next, has every record whatever happens here)."""
    for r in records:
        try:
            index.add(r)
        except Exception as exc:  # logged; the record is in the file whatever happens
            _rejections.warning(  # rate-limited, apart from the reasons' own lines
                " index", "dead letter not indexed for its order's timeline", error=repr(exc)
            )


class AlertFileSink(_Single):
    """Appends one CONTRACT §4 JSON line per alert change; counts changes per rule."""

    part = "alerts"

    def __init__(self, path: str | Path, local: bool = True) -> None:
        super().__init__(local)
        self.path = Path(path)
        self.by_rule: Counter[tuple[str, str]] = Counter()

    def _count(self, values: list[AlertChange]) -> None:
        for a in values:
            self.by_rule[(a.labels.get("rule", ""), a.status)] += 1

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _AppendPartition:
        return _AppendPartition(self.path, AlertChange.to_json, self._count)


class DeadLetterSink(_Single):
    """Appends rejected inputs, with reason and source position, to a JSON-lines file."""

    part = "dead-letters"

    def __init__(
        self,
        path: str | Path,
        local: bool = True,
        *,
        log_them: bool = False,
        index: RejectedByOrder | None = None,
    ) -> None:
        super().__init__(local)
        self.path = Path(path)
        self.log_them = log_them  # the daemon logs them, rate-limited (a replay sums them up)
        self.index = index  # the daemon's, for the order timelines of its HTTP API

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _DeadLetterPartition:
        return _DeadLetterPartition(self.path, self.log_them, self.index)


_STOP_WAIT = 15.0  # seconds: at shutdown, how long a batch waits for a store that refuses it


class _QueuePartition(StatefulSinkPartition[Any, None]):
    def __init__(self, runtime: Runtime) -> None:
        assert runtime.alert_queue is not None
        self._q = runtime.alert_queue
        self._runtime = runtime

    def write_batch(self, values: list[Any]) -> None:
        """Returns once the alert store has the changes. bytewax commits an epoch's recovery
        snapshot after its outputs are written: returning earlier let a crash right after the
        commit lose the changes still queued (a resume would not make them again)."""
        batch = AlertBatch(list(values))
        self._q.put(batch)
        self._runtime.wake_alerts()
        give_up = None
        while not batch.stored.wait(0.1):
            if self._runtime.stopping.is_set():  # the consumer announces them unstored at its end
                give_up = give_up or time.monotonic() + _STOP_WAIT
                if time.monotonic() > give_up:
                    return

    def snapshot(self) -> None:
        return None


class QueueSink(_Single):
    """Hands batches of alert changes to the control plane's thread, and waits until they
    are stored: while the store refuses writes, the dataflow waits with them."""

    part = "alerts"

    def __init__(self, runtime: Runtime, local: bool = True) -> None:
        super().__init__(local)
        self.runtime = runtime

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _QueuePartition:
        return _QueuePartition(self.runtime)
