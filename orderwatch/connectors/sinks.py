"""Where the dataflow's outputs go: alert changes and dead letters.

Each sink has a single partition, so one writer sees every item whatever the number of
workers or processes. `local=False` hides the partition from a process (in a cluster, only
the process running the control plane owns the alert queue).
"""

from __future__ import annotations

import os
import queue
import time
from collections import Counter
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from bytewax.outputs import FixedPartitionedSink, StatefulSinkPartition

from orderwatch.domain.alert import AlertChange
from orderwatch.events import Rejected

_MAX_RAW = 65_536


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
    if len(r.raw) > len(raw):
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

    def __init__(self, path: str | Path, local: bool = True) -> None:
        super().__init__(local)
        self.path = Path(path)

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _AppendPartition:
        return _AppendPartition(self.path, dead_letter_json)


class _QueuePartition(StatefulSinkPartition[Any, None]):
    def __init__(self, q: queue.Queue[Any]) -> None:
        self._q = q

    def write_batch(self, values: list[Any]) -> None:
        self._q.put(list(values))

    def snapshot(self) -> None:
        return None


class QueueSink(_Single):
    """Hands batches of alert changes to the control plane's thread."""

    part = "alerts"

    def __init__(self, q: queue.Queue[Any], local: bool = True) -> None:
        super().__init__(local)
        self.queue = q

    def build_part(self, step_id: str, for_part: str, resume_state: None) -> _QueuePartition:
        return _QueuePartition(self.queue)
