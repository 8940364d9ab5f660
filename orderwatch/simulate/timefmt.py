"""Fast, deterministic timestamp formatting for the traffic simulator.

Each upstream system in the simulation stamps its events differently (CONTRACT §1):

- the OMS/ERP, the WMS and the nginx access logs write RFC 3339 with the Beijing offset
  (``2026-11-11T00:00:03.120+08:00``),
- the payment gateway writes UTC with ``Z`` (``2026-11-10T16:00:03.120Z``),
- the logistics carrier sends an integer of epoch milliseconds (no formatting needed).

Two fault scenarios need deliberately wrong stamps: a *naive* one (Beijing wall-clock with no
offset at all, ``2026-11-11T08:00:00``) and a *wrong offset* one (Beijing wall-clock followed by
``Z``, i.e. 8 h in the future of the true instant).

``time.strftime`` costs a few microseconds, so each formatter caches the whole-second prefix;
events are produced in near time order, so the cache hit rate is high.
"""

from __future__ import annotations

import time
from typing import Final

SECOND_MS: Final = 1_000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS

#: Offset of Asia/Shanghai (no daylight saving time since 1991).
BEIJING_OFFSET_MS: Final = 8 * HOUR_MS

_CACHE_LIMIT: Final = 1_024


class IsoFormatter:
    """Formats epoch milliseconds as an ISO 8601 string with a fixed shift and suffix."""

    __slots__ = ("_cache", "_shift_ms", "_tails")

    def __init__(self, shift_ms: int, suffix: str, *, with_millis: bool = True) -> None:
        self._shift_ms = shift_ms
        self._cache: dict[int, str] = {}
        # ".000+08:00" ... ".999+08:00": one concatenation per call instead of a format.
        if with_millis:
            self._tails = tuple(f".{m:03d}{suffix}" for m in range(SECOND_MS))
        else:
            self._tails = (suffix,) * SECOND_MS

    def __call__(self, epoch_ms: int) -> str:
        sec, milli = divmod(epoch_ms + self._shift_ms, SECOND_MS)
        prefix = self._cache.get(sec)
        if prefix is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec))
            self._cache[sec] = prefix
        return prefix + self._tails[milli]


def beijing() -> IsoFormatter:
    """RFC 3339 with ``+08:00``: the true instant, as written by OMS, WMS and nginx."""
    return IsoFormatter(BEIJING_OFFSET_MS, "+08:00")


def utc() -> IsoFormatter:
    """RFC 3339 in UTC with ``Z``: the true instant, as written by the payment gateway."""
    return IsoFormatter(0, "Z")


def naive_beijing() -> IsoFormatter:
    """Beijing wall-clock with no offset and no millis (fault ``naive_timestamp``)."""
    return IsoFormatter(BEIJING_OFFSET_MS, "", with_millis=False)


def beijing_as_utc() -> IsoFormatter:
    """Beijing wall-clock wrongly labelled ``Z``: 8 h in the future (fault ``wrong_offset``)."""
    return IsoFormatter(BEIJING_OFFSET_MS, "Z")
