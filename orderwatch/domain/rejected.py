"""The inputs rejected for each order lately, so the order's timeline shows them.

A rejected line never reaches its order's shard (it has no valid event time to be applied
at), so the tracker cannot know of it. Yet it is often why the order looks stuck: the
`shipped` callback that came with a naive timestamp after a migration, the `paid` event with
an unknown status name. `GET /v1/orders/{id}` shows what this index holds of the order, so
the on-call who opens an alert's timeline sees the rejected events beside the kept ones.

Bounded: the most recently rejected `max_orders` orders, the last `per_order` records of each
(the dead-letter file keeps every one in full), each record's raw input cut to `_RAW_CHARS`.
At start the daemon indexes the tail of its dead-letter file again, so a restart keeps them.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import orjson

from orderwatch.events import MAX_ORDER_ID
from orderwatch.jsonbytes import dumps_kept

_RAW_CHARS = 300
_TAIL_BYTES = 8 << 20  # of the dead-letter file read at start: ~10,000 records of 800 bytes
# A line that is not JSON (cut short, a stray quote) may still name its order plainly.
_ORDER_ID = re.compile(rb'"order_id"\s*:\s*"([^"\\]{1,%d})"' % MAX_ORDER_ID)


def order_id_of(raw: bytes) -> str | None:
    """The order a rejected input is about, as far as it can be read; None if it names none."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        found = _ORDER_ID.search(raw)
        if found is None:
            return None
        try:
            return found.group(1).decode("utf-8")
        except UnicodeDecodeError:
            return None
    value = obj.get("order_id") if isinstance(obj, dict) else None
    if isinstance(value, str) and 1 <= len(value) <= MAX_ORDER_ID:
        return value
    return None


class _Order:
    __slots__ = ("count", "records")

    def __init__(self) -> None:
        self.count = 0
        # ((source, position), JSON), oldest first
        self.records: list[tuple[tuple[Any, Any], bytes]] = []


class RejectedByOrder:
    """Written by the dead-letter sink's thread, read by the HTTP API's: one lock for both."""

    def __init__(self, max_orders: int = 10_000, per_order: int = 3) -> None:
        self._max_orders = max_orders
        self._per_order = per_order
        self._orders: OrderedDict[str, _Order] = OrderedDict()  # least recently rejected first
        self._lock = threading.Lock()

    def add(self, dead_letter: dict[str, Any]) -> None:
        """Index one dead-letter record (`sinks.dead_letter_json`) under the order it names.

        A line already held for the order (same source and position: read again after a
        restart) is not counted twice."""
        raw = dead_letter.get("raw")
        if not isinstance(raw, str):
            return  # not UTF-8: no order id to read
        order_id = order_id_of(raw.encode("utf-8"))
        if order_id is None:
            return
        where = (dead_letter.get("source"), dead_letter.get("position"))
        record = {k: v for k, v in dead_letter.items() if k not in ("raw", "truncated")}
        record["raw"] = raw[:_RAW_CHARS]
        if len(raw) > _RAW_CHARS or dead_letter.get("truncated"):
            record["raw_truncated"] = True
        blob = dumps_kept(record)  # held: in a buffer of its own size
        with self._lock:
            entry = self._orders.get(order_id)
            if entry is None:
                entry = self._orders[order_id] = _Order()
                if len(self._orders) > self._max_orders:
                    self._orders.popitem(last=False)
            elif where[1] and any(held == where for held, _ in entry.records):
                return  # a position names the line: the same line, read again
            else:
                self._orders.move_to_end(order_id)
            entry.count += 1
            entry.records.append((where, blob))
            del entry.records[: -self._per_order]

    def load(self, path: Path, max_bytes: int = _TAIL_BYTES) -> int:
        """Index the last `max_bytes` of a dead-letter file (the daemon's, at start): what the
        last run rejected stays on its orders' timelines. Returns the records read."""
        try:
            with path.open("rb") as f:
                size = f.seek(0, 2)
                f.seek(max(0, size - max_bytes))
                tail = f.read()
        except OSError:
            return 0  # none yet, or unreadable: the sink says so when it writes
        lines = tail.split(b"\n")
        if size > max_bytes:
            lines = lines[1:]  # the first is cut
        read = 0
        for line in lines:
            try:
                record = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # blank, or cut by a crash mid-write
            if isinstance(record, dict) and "reason" in record:
                self.add(record)
                read += 1
        return read

    def get(self, order_id: str) -> tuple[int, list[dict[str, Any]]]:
        """How many of the order's inputs were rejected (since it was last indexed) and the
        latest records, oldest first; (0, []) if none is held."""
        with self._lock:
            entry = self._orders.get(order_id)
            if entry is None:
                return 0, []
            count, blobs = entry.count, [blob for _, blob in entry.records]
        return count, [orjson.loads(b) for b in blobs]

    def count(self, order_id: str) -> int:
        """How many of the order's inputs were rejected (0 if none is held)."""
        entry = self._orders.get(order_id)  # one dict read: no lock needed
        return 0 if entry is None else entry.count

    def __len__(self) -> int:
        return len(self._orders)
