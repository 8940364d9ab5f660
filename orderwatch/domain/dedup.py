"""Drop redelivered events by `event_id` within a horizon of event time.

Ids are kept in generations of one horizon each, by the event's own timestamp: a redelivery
carries the same timestamp, so one or two set lookups answer, and whole generations are
dropped once the watermark is a horizon past them. An id is remembered for at least the
horizon (at most twice it) after its event time.
"""

from __future__ import annotations


class Deduper:
    __slots__ = ("_gens", "_horizon")

    def __init__(self, horizon_ms: int) -> None:
        self._horizon = horizon_ms
        self._gens: dict[int, set[str]] = {}

    def seen(self, event_id: str, ts: int) -> bool:
        """True when `event_id` was already seen; otherwise remember it and return False."""
        g = ts // self._horizon
        gens = self._gens
        cur = gens.get(g)
        if cur is not None and event_id in cur:
            return True
        prev = gens.get(g - 1)
        if prev is not None and event_id in prev:
            return True
        nxt = gens.get(g + 1)
        if nxt is not None and event_id in nxt:
            return True
        if cur is None:
            cur = gens[g] = set()
        cur.add(event_id)
        return False

    def expire(self, watermark: int) -> None:
        """Forget generations that ended more than a horizon before `watermark`."""
        oldest = watermark // self._horizon - 1
        for g in [g for g in self._gens if g < oldest]:
            del self._gens[g]

    def __len__(self) -> int:
        return sum(len(s) for s in self._gens.values())
