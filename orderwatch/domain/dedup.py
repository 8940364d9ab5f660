"""Drop redelivered events by `event_id` within a horizon of event time (CONTRACT §1).

A duplicate is the same `event_id` for the same order, within `horizon` of event time of a
copy that was applied: a redelivery always carries its order, and keying by order keeps the
result independent of how orders fall on shards. An id seen again later than that is a new
event (an upstream that reuses ids: a daily counter, a topic created again).

A tracked order's timeline holds its recent ids with their times; the older ones it keeps as
entries: a stable 64-bit hash of (order, event_id) (xxh3, the same in every process, so
snapshots restore anywhere), then the event time as 6 bytes of epoch ms (`event_entry`,
`seen_in`). This store only holds the entries of forgotten orders (tombstones), so a late
redelivery cannot resurrect a finished order, and an order created again by a later event
takes its forgotten self's entries back (`take`), with them whether it had ended
(`ended_entry`).

Tombstones are kept per order in generations of one horizon each, by the order's last event
time, and whole generations are dropped once the watermark is a horizon past them: a
forgotten order's ids are remembered for at least the horizon (at most twice it).
"""

from __future__ import annotations

from collections.abc import Iterable

from xxhash import xxh3_64_intdigest

ENTRY = 14  # bytes per remembered id: its 8-byte key, then its event time (6 bytes, epoch ms)


def event_key(order_id: str, event_id: str) -> bytes:
    """The 8-byte key of one order's event id."""
    return _key(order_id, event_id).to_bytes(8, "little")


def event_entry(order_id: str, event_id: str, ts: int) -> bytes:
    """An id remembered with its event time: `event_key`, then `ts` in 6 bytes (decoded times
    are positive and under 2⁴⁸), built as one int (every id of a forgotten order goes here)."""
    return ((ts << 64) | _key(order_id, event_id)).to_bytes(ENTRY, "little")


def _ended(status: str) -> str:
    """The pseudo event id an order that ended leaves among its tombstone's entries (at its
    last event time), so the order created again under its id within the horizon knows."""
    return f"\x00ended:{status}"


def ended_entry(order_id: str, status: str, ts: int) -> bytes:
    return event_entry(order_id, _ended(status), ts)


def ended_in(
    order_id: str, entries: bytes, statuses: Iterable[str], ts: int, horizon: int
) -> tuple[str | None, bytes]:
    """The terminal status an order's forgotten self ended in (`ended_entry`) within `horizon`
    before `ts`, if it left one, and its entries without any such (a later end leaves its own)."""
    found: str | None = None
    for status in statuses:
        key = event_key(order_id, _ended(status))
        at = _find(entries, key, ts, horizon)
        if at >= 0 and found is None:
            found = status
        while (at := _find(entries, key)) >= 0:  # older ends too: they are done with
            entries = entries[:at] + entries[at + ENTRY :]
    return found, entries


def seen_in(entries: bytes, key: bytes, ts: int, horizon: int) -> bool:
    """Is `key` (`event_key`) among the `entries`, within `horizon` of event time of `ts`?"""
    return _find(entries, key, ts, horizon) >= 0


def _find(entries: bytes, key: bytes, ts: int | None = None, horizon: int = 0) -> int:
    """Where the entry of `key` is (within `horizon` of `ts`, if given), else -1."""
    i = entries.find(key)
    while i >= 0:
        if (
            i % ENTRY == 0
            and (  # a match straddling two entries is not a match
                ts is None
                or abs(ts - int.from_bytes(entries[i + 8 : i + ENTRY], "little")) <= horizon
            )
        ):
            return i
        i = entries.find(key, i + 1)
    return -1


def _key(order_id: str, event_id: str) -> int:
    text = f"{order_id}\x1f{event_id}"
    try:  # plain encode() is CPython's fast path; lone surrogates need the slow one
        return xxh3_64_intdigest(text.encode())
    except UnicodeEncodeError:
        return xxh3_64_intdigest(text.encode("utf-8", "surrogatepass"))


class Deduper:
    __slots__ = ("_gens", "horizon")

    def __init__(self, horizon_ms: int) -> None:
        self.horizon = horizon_ms
        # generation -> forgotten order (`_order_key`) -> its packed entries
        self._gens: dict[int, dict[int, bytes]] = {}

    def seen_key(self, order_id: str, key: bytes, ts: int) -> bool:
        """Is `key` (`event_key`) among those a forgotten `order_id` left, within the horizon
        of `ts`? (Every generation is looked in: a late redelivery's order may have been
        filed under a much later last event; only two or three are ever kept.)"""
        if not self._gens:
            return False
        order = _order_key(order_id)
        for gen in self._gens.values():
            entries = gen.get(order)
            if entries is not None and seen_in(entries, key, ts, self.horizon):
                return True
        return False

    def remember(self, order_id: str, entries: bytes, ts: int) -> None:
        """Keep a forgotten order's entries for at least a horizon after `ts`."""
        gen = self._gens.setdefault(ts // self.horizon, {})
        order = _order_key(order_id)
        gen[order] = gen.get(order, b"") + entries

    def take(self, order_id: str) -> bytes:
        """The entries a forgotten `order_id` left, handed to the order created again under
        its id (which keeps them in its own record from now on)."""
        if not self._gens:
            return b""
        order = _order_key(order_id)
        return b"".join(gen.pop(order, b"") for gen in self._gens.values())

    def expire(self, watermark: int) -> None:
        """Forget generations that ended more than a horizon before `watermark`."""
        oldest = watermark // self.horizon - 1
        for g in [g for g in self._gens if g < oldest]:
            del self._gens[g]

    def __len__(self) -> int:
        """Entries held."""
        return sum(len(e) // ENTRY for gen in self._gens.values() for e in gen.values())


def _order_key(order_id: str) -> int:
    return _key(order_id, "")
