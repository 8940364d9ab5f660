"""Deadlines far ahead of the watermark, kept as 8-byte array items instead of heap ints.

A deadline-heap entry is a Python int in a list: ~40 bytes (32 for the int, 8 for its list
slot). Most open orders' next deadline is hours or days ahead (a 2 h fulfilment rule, 48 h of
logistics, the 30-day idle expiry), so the tracker files every entry due at or after
`open_until` here instead: one `array('q')` per bucket of 2**BUCKET_BITS ms (~17.5 min),
~8.5 bytes an entry. A bucket moves into the heap whole once the watermark reaches it (`open`).

The invariant the tracker relies on: every entry due before `open_until` is in the heap. So
whenever it asks what is due before a time that is itself before `open_until`, the heap alone
answers, exactly as if it held everything; `open` first when the time is later.
"""

from __future__ import annotations

import heapq
from array import array
from collections.abc import Callable, Iterator

BUCKET_BITS = 20  # 2**20 ms: ~17.5 min of due times per bucket
_NOTHING_OPEN = -(1 << 62)  # before the first `open`, every due time is "ahead"
_INT64_MIN, _INT64_MAX = -(1 << 63), (1 << 63) - 1  # what an array('q') item holds


class FarDeadlines:
    """Heap entries (the tracker's ints) by bucket of their due time."""

    __slots__ = ("_buckets", "_first", "_keys", "count", "open_until")

    def __init__(self, open_until: int = _NOTHING_OPEN) -> None:
        self._buckets: dict[int, array[int]] = {}
        self._keys: list[int] = []  # a heap of the bucket keys (`due >> BUCKET_BITS`)
        self._first: int | None = None  # the smallest entry, once asked for (`earliest`)
        self.count = 0  # entries held
        self.open_until = open_until  # every entry here is due at or after it

    def add(self, entry: int, due: int) -> bool:
        """File `entry`, due at `due` (not before `open_until`); False when it does not fit
        in 64 bits (due times centuries away, or a widened shard's), for the heap to keep."""
        if not _INT64_MIN <= entry <= _INT64_MAX:  # before any bucket: none is left empty
            return False
        key = due >> BUCKET_BITS
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = array("q")
            heapq.heappush(self._keys, key)
        bucket.append(entry)
        self.count += 1
        if self._first is not None and entry < self._first:
            self._first = entry  # its bucket is the first one, or one before it
        return True

    def open(self, limit: int, heap: list[int]) -> None:
        """Push every entry of the buckets that start at or before `limit` onto `heap` (in
        place), so that `open_until` is past `limit`."""
        last = limit >> BUCKET_BITS
        keys, buckets, push = self._keys, self._buckets, heapq.heappush
        while keys and keys[0] <= last:
            bucket = buckets.pop(heapq.heappop(keys))
            self.count -= len(bucket)
            for entry in bucket:  # later than most of the heap: each push stays near a leaf
                push(heap, entry)
        self.open_until = max(self.open_until, (last + 1) << BUCKET_BITS)
        self._first = None

    def earliest(self) -> int | None:
        """The smallest entry held (the earliest due), or None: a scan of the first bucket
        once after each `open` (a live shard asks after every batch; `add` keeps it)."""
        if self._first is None and self._keys:
            self._first = min(self._buckets[self._keys[0]])
        return self._first

    def entries(self) -> Iterator[int]:
        for bucket in self._buckets.values():
            yield from bucket

    def keep(self, live: Callable[[int], bool]) -> None:
        """Drop the entries for which `live` is false (the tracker's compaction)."""
        for key, bucket in self._buckets.items():
            kept = array("q", [e for e in bucket if live(e)])
            self.count -= len(bucket) - len(kept)
            self._buckets[key] = kept
        self._reindex()

    def rewrite(self, change: Callable[[int], int], heap: list[int]) -> None:
        """Replace every entry `e` by `change(e)` (the tracker widening its entries); one
        that no longer fits in 64 bits goes onto `heap`."""
        for key, bucket in self._buckets.items():
            kept = array("q")
            for entry in bucket:
                new = change(entry)
                if _INT64_MIN <= new <= _INT64_MAX:
                    kept.append(new)
                else:
                    heapq.heappush(heap, new)
                    self.count -= 1
            self._buckets[key] = kept
        self._reindex()

    def _reindex(self) -> None:
        """After entries were dropped: no empty bucket, the keys heap anew."""
        self._buckets = {key: bucket for key, bucket in self._buckets.items() if bucket}
        self._keys = sorted(self._buckets)  # a sorted list is a heap
        self._first = None
