"""Drop redelivered events by `event_id` within a horizon of event time.

A duplicate is the same `event_id` for the same order: a redelivery always carries its
order, and keying by order keeps the result independent of how orders fall on shards.
Each (order, event_id) is kept as a stable 64-bit hash (xxh3): an int, not two strings,
and the same in every process, so snapshots restore anywhere.

Ids are kept in generations of one horizon each, by the event's own timestamp: a redelivery
carries the same timestamp, so one or two set lookups answer, and whole generations are
dropped once the watermark is a horizon past them. An id is remembered for at least the
horizon (at most twice it) after its event time.
"""

from __future__ import annotations

from typing import Any

from xxhash import xxh3_64_intdigest


def _key(order_id: str, event_id: str) -> int:
    text = f"{order_id}\x1f{event_id}"
    try:  # plain encode() is CPython's fast path; lone surrogates need the slow one
        return xxh3_64_intdigest(text.encode())
    except UnicodeEncodeError:
        return xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


class Deduper:
    __slots__ = ("_gens", "_horizon")

    def __init__(self, horizon_ms: int) -> None:
        self._horizon = horizon_ms
        self._gens: dict[int, set[int]] = {}

    def seen(self, order_id: str, event_id: str, ts: int) -> bool:
        """True when this order's `event_id` was already seen; otherwise remember it."""
        key = _key(order_id, event_id)
        g = ts // self._horizon
        gens = self._gens
        cur = gens.get(g)
        if cur is not None and key in cur:
            return True
        prev = gens.get(g - 1)
        if prev is not None and key in prev:
            return True
        nxt = gens.get(g + 1)
        if nxt is not None and key in nxt:
            return True
        if cur is None:
            cur = gens[g] = set()
        cur.add(key)
        return False

    def fresh(self, events: list[tuple[int, Any]]) -> list[tuple[int, Any]]:
        """The `(ts, event)` pairs not seen before (events without an id always pass)."""
        out = []
        gens, horizon = self._gens, self._horizon
        for pair in events:
            ts, ev = pair
            eid = ev.event_id
            if eid is not None:
                key = _key(ev.order_id, eid)
                g = ts // horizon
                cur = gens.get(g)
                if cur is not None and key in cur:
                    continue
                prev = gens.get(g - 1)
                if prev is not None and key in prev:
                    continue
                nxt = gens.get(g + 1)
                if nxt is not None and key in nxt:
                    continue
                if cur is None:
                    cur = gens[g] = set()
                cur.add(key)
            out.append(pair)
        return out

    def expire(self, watermark: int) -> None:
        """Forget generations that ended more than a horizon before `watermark`."""
        oldest = watermark // self._horizon - 1
        for g in [g for g in self._gens if g < oldest]:
            del self._gens[g]

    def __len__(self) -> int:
        return sum(len(s) for s in self._gens.values())
