"""Drop redelivered events by `event_id` within a horizon of event time.

A duplicate is the same `event_id` for the same order: a redelivery always carries its
order, and keying by order keeps the result independent of how orders fall on shards.
Each (order, event_id) is a stable 64-bit hash (xxh3), the same in every process, so
snapshots restore anywhere. A tracked order keeps its hashes itself, 8 bytes each
(`event_key`, `seen_in`); this store only holds those of forgotten orders (tombstones), so
a late redelivery cannot resurrect a finished order, and an order created again by a later
event takes its forgotten self's keys back (`take`), with them whether it had ended
(`ended_key`).

Tombstones are kept per order in generations of one horizon each, by the order's last event
time, and whole generations are dropped once the watermark is a horizon past them: a
forgotten order's ids are remembered for at least the horizon (at most twice it).
"""

from __future__ import annotations

from collections.abc import Iterable

from xxhash import xxh3_64_intdigest


def event_key(order_id: str, event_id: str) -> bytes:
    """The 8-byte key of one order's event id."""
    return _key(order_id, event_id).to_bytes(8, "little")


def ended_key(order_id: str, status: str) -> bytes:
    """The key an order that ended leaves among its tombstone's: that of a pseudo event id
    naming the terminal status, so the order created again under its id knows it had ended."""
    return event_key(order_id, f"\x00ended:{status}")


def ended_in(order_id: str, keys: bytes, statuses: Iterable[str]) -> tuple[str | None, bytes]:
    """The terminal status an order's forgotten self ended in (`ended_key`), if it left one,
    and its keys without that one (a later end leaves its own)."""
    for status in statuses:
        at = _find(keys, ended_key(order_id, status))
        if at >= 0:
            return status, keys[:at] + keys[at + 8 :]
    return None, keys


def seen_in(keys: bytes, key: bytes) -> bool:
    """Is `key` one of the 8-byte keys packed in `keys`?"""
    return _find(keys, key) >= 0


def _find(keys: bytes, key: bytes) -> int:
    i = keys.find(key)
    while i >= 0 and i % 8:  # a match straddling two keys is not a match
        i = keys.find(key, i + 1)
    return i


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
        # generation -> forgotten order (`_order_key`) -> its packed 8-byte event keys
        self._gens: dict[int, dict[int, bytes]] = {}

    def seen_key(self, order_id: str, key: bytes, ts: int) -> bool:
        """Is `key` (`event_key`) among those a forgotten `order_id` left, around `ts`?"""
        if not self._gens:
            return False
        order = _order_key(order_id)
        g = ts // self._horizon
        for x in (g, g - 1, g + 1):
            keys = self._gens.get(x, {}).get(order)
            if keys is not None and seen_in(keys, key):
                return True
        return False

    def remember(self, order_id: str, keys: bytes, ts: int) -> None:
        """Keep a forgotten order's packed keys for at least a horizon after `ts`."""
        gen = self._gens.setdefault(ts // self._horizon, {})
        order = _order_key(order_id)
        gen[order] = gen.get(order, b"") + keys

    def take(self, order_id: str) -> bytes:
        """The keys a forgotten `order_id` left, handed to the order created again under its
        id (which keeps them in its own record from now on)."""
        if not self._gens:
            return b""
        order = _order_key(order_id)
        return b"".join(gen.pop(order, b"") for gen in self._gens.values())

    def expire(self, watermark: int) -> None:
        """Forget generations that ended more than a horizon before `watermark`."""
        oldest = watermark // self._horizon - 1
        for g in [g for g in self._gens if g < oldest]:
            del self._gens[g]

    def __len__(self) -> int:
        """Keys held."""
        return sum(len(keys) // 8 for gen in self._gens.values() for keys in gen.values())


def _order_key(order_id: str) -> int:
    return _key(order_id, "")
