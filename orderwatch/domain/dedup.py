"""Drop redelivered events by `event_id` within a horizon of event time.

A duplicate is the same `event_id` for the same order: a redelivery always carries its
order, and keying by order keeps the result independent of how orders fall on shards.
Each (order, event_id) is a stable 64-bit hash (xxh3), the same in every process, so
snapshots restore anywhere. A tracked order keeps its hashes itself, 8 bytes each
(`event_key`, `seen_in`); this store only holds those of forgotten orders (tombstones), so
a late redelivery cannot resurrect a finished order.

Ids are kept in generations of one horizon each, by the event's own timestamp: a redelivery
carries the same timestamp, so one or two set lookups answer, and whole generations are
dropped once the watermark is a horizon past them. An id is remembered for at least the
horizon (at most twice it) after its event time.
"""

from __future__ import annotations

from xxhash import xxh3_64_intdigest


def event_key(order_id: str, event_id: str) -> bytes:
    """The 8-byte key of one order's event id."""
    return _key(order_id, event_id).to_bytes(8, "little")


def seen_in(keys: bytes, key: bytes) -> bool:
    """Is `key` one of the 8-byte keys packed in `keys`?"""
    i = keys.find(key)
    while i >= 0 and i % 8:  # a match straddling two keys is not a match
        i = keys.find(key, i + 1)
    return i >= 0


def _key(order_id: str, event_id: str) -> int:
    text = f"{order_id}\x1f{event_id}"
    try:  # plain encode() is CPython's fast path; lone surrogates need the slow one
        return xxh3_64_intdigest(text.encode())
    except UnicodeEncodeError:
        return xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


class Deduper:
    __slots__ = ("_gens", "_horizon", "_orders")

    def __init__(self, horizon_ms: int) -> None:
        self._horizon = horizon_ms
        self._gens: dict[int, set[int]] = {}
        # The forgotten orders whose keys are kept, by generation: an order created again
        # while they are (`left_keys`) must look here as well as in its own record.
        self._orders: dict[int, set[int]] = {}

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

    def seen_key(self, key: bytes, ts: int) -> bool:
        """Was this 8-byte key left behind by a forgotten order around `ts`?"""
        k = int.from_bytes(key, "little")
        g = ts // self._horizon
        return any(k in self._gens.get(x, ()) for x in (g, g - 1, g + 1))

    def remember(self, order_id: str, keys: bytes, ts: int) -> None:
        """Keep a forgotten order's packed keys for at least a horizon after `ts`."""
        g = ts // self._horizon
        gen = self._gens.setdefault(g, set())
        gen.update(int.from_bytes(keys[i : i + 8], "little") for i in range(0, len(keys), 8))
        self._orders.setdefault(g, set()).add(_key(order_id, ""))

    def left_keys(self, order_id: str) -> bool:
        """Did a forgotten order with this id leave keys that are still kept?"""
        if not self._orders:
            return False
        k = _key(order_id, "")
        return any(k in orders for orders in self._orders.values())

    def expire(self, watermark: int) -> None:
        """Forget generations that ended more than a horizon before `watermark`."""
        oldest = watermark // self._horizon - 1
        for g in [g for g in self._gens if g < oldest]:
            del self._gens[g]
            self._orders.pop(g, None)

    def __len__(self) -> int:
        return sum(len(s) for s in self._gens.values())
