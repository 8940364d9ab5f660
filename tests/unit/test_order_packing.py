"""Idle orders packed into bytes come back field for field (domain.packing)."""

from __future__ import annotations

import copy
import dataclasses
import pickle
import sys
import threading
from decimal import Decimal
from unittest import mock

import msgspec
import pytest
import zstandard

from orderwatch.domain import packing
from orderwatch.domain.order import OrderRec, new_order
from orderwatch.domain.packing import Packer, packed_due
from tests.factories import order_scoped, trained, typical_order

TS = 1_794_326_400_000


def busy_order() -> OrderRec:
    rec = new_order("OB-1", TS)
    rec.status, rec.since, rec.seen = "refund_requested", TS + 5, TS + 9
    rec.refund_from = "shipped"
    rec.entered = [None, TS + 1, None]
    rec.last_update = TS + 7
    rec.channel, rec.warehouse, rec.tracking = "tmall", "WH-SH-01", "SF100"
    rec.payable = Decimal("12345.6")  # sub-cent money stays exact
    rec.paid_at, rec.pay_ts, rec.wms_at, rec.closed_at = TS + 2, TS + 2, TS + 3, TS + 8
    rec.pay_nos, rec.paid = ("P1", "P2"), (1000, None)
    rec.refunded = ("P0",)
    rec.flags = (1 << 40) | 5  # beyond 32 bits
    rec.eids = bytes(range(16))
    rec.log, rec.log_n, rec.log_status = b"\x93\x01\x02\x03", 1, "paid"
    rec.due = TS + 30 * 60_000
    return rec


@pytest.mark.parametrize("due", [TS + 1_800_000, None, 0, -5])
def test_a_packed_order_comes_back_equal(due: int | None) -> None:
    rec = busy_order()
    rec.due = due
    expected = copy.copy(rec)
    blob = Packer().pack(rec)
    assert packed_due(blob) == due  # readable without unpacking: the heap checks it
    back = Packer().unpack(blob, "OB-1")
    assert back == expected
    assert back.oid == "OB-1"


def test_a_new_order_packs_too() -> None:
    rec = new_order("A", TS)
    packer = Packer()
    assert packer.unpack(packer.pack(copy.copy(rec)), "A") == rec


def test_the_packed_form_is_much_smaller_than_the_objects() -> None:
    """The reason to pack: no object headers for each int, tuple and bytes."""
    rec = busy_order()
    objects = sys.getsizeof(rec) + sum(
        sys.getsizeof(getattr(rec, f))
        for f in rec.__struct_fields__
        if getattr(rec, f) is not None and not isinstance(getattr(rec, f), str)
    )
    assert sys.getsizeof(Packer(compress=False).pack(rec)) < objects / 2


# --- compression -----------------------------------------------------------------------------


def test_after_training_orders_come_back_equal_and_smaller() -> None:
    """The first orders are packed raw; once the dictionary is trained, later ones compress
    to well under their raw size, and both kinds, and raw ones recompressed, unpack equal."""
    packer = Packer()
    early = trained(packer)
    assert packer.compressing
    for i in (7, 500, 5000, 123_456):  # inside and outside the sample
        rec = typical_order(i)
        expected = copy.copy(rec)
        raw = Packer(compress=False).pack(copy.copy(rec))
        blob = packer.pack(rec)
        assert len(blob) < len(raw) * 0.7
        assert packed_due(blob) == expected.due
        assert packer.unpack(blob, expected.oid or "") == expected
    again = packer.recompress(early[3])
    assert len(again) < len(early[3]) * 0.7
    for blob in (early[3], again):
        assert packer.unpack(blob, "x") == packer.unpack(early[3], "x")
        assert packed_due(blob) == typical_order(3).due
    assert packer.recompress(again) is again  # already compressed: unchanged


def test_compressed_orders_leave_out_the_zstd_magic_number() -> None:
    """Every blob is the packer's own, so the 4 bytes of zstd's frame magic are ~1% of an
    open order for nothing: the frame is the same without them."""
    packer = Packer()
    trained(packer)
    rec = typical_order(42)
    expected = copy.copy(rec)
    blob = packer.pack(rec)
    body = blob[9:]  # after the due time and the codec byte
    assert not body.startswith(zstandard.FRAME_HEADER)
    framed = zstandard.FRAME_HEADER + body  # the same frame with its magic reads back
    assert packer._dict is not None
    plain = zstandard.ZstdDecompressor(dict_data=zstandard.ZstdCompressionDict(packer._dict))
    back = msgspec.msgpack.decode(plain.decompress(framed), type=OrderRec)
    assert back == msgspec.structs.replace(expected, due=None, oid=None)


def test_the_dictionary_survives_a_snapshot() -> None:
    """A restored packer reads what the original packed, and compresses the same way."""
    packer = Packer()
    trained(packer)
    blob = packer.pack(typical_order(77))
    restored = pickle.loads(pickle.dumps(packer))
    assert restored.compressing
    assert restored.unpack(blob, "x") == packer.unpack(blob, "x")
    assert restored.pack(typical_order(78)) == packer.pack(typical_order(78))


def test_without_compression_or_when_training_fails_orders_stay_raw() -> None:
    for packer in (Packer(compress=False), Packer()):
        with mock.patch.object(zstandard, "train_dictionary", side_effect=zstandard.ZstdError):
            early = trained(packer)
        assert not packer.compressing
        rec = typical_order(9)
        expected = copy.copy(rec)
        blob = packer.pack(rec)
        assert len(blob) >= len(early[0])  # plain msgpack, no smaller than the first ones
        assert msgspec.msgpack.decode(blob[packing._HEAD.size :])[0] == expected.since
        assert packer.recompress(blob) is blob
        assert packer.unpack(blob, expected.oid or "") == expected


def test_training_runs_beside_the_caller_which_packs_raw_until_the_dictionary_is_in() -> None:
    """Training does not hold up packing: orders pack raw while it runs, the first pack after
    it finished takes the dictionary in (and `take_fresh` says so, once), later ones compress.
    A snapshot taken while it trains waits for it and carries the dictionary."""
    release = threading.Event()
    real = packing._train

    def slow(samples: list[bytes]) -> bytes | None:
        release.wait(10)
        return real(samples)

    with mock.patch.object(packing, "_train", slow):
        packer, other = Packer(), Packer()
        for p in (packer, other):
            for i in range(packing.TRAIN_ON):
                p.pack(typical_order(i))
        codec = packing._HEAD.size - 1
        during = [packer.pack(typical_order(i)) for i in range(5)]
        assert not packer.compressing and all(b[codec] == 0 for b in during)
        assert not packer.take_fresh()
        threading.Timer(0.05, release.set).start()
        snap = pickle.loads(pickle.dumps(other))  # waits for `other`'s training to end
    assert snap.compressing and snap.take_fresh()
    packer._training.result(timeout=10)  # type: ignore[union-attr]
    assert packer.pack(typical_order(7))[codec] == 0  # this pack takes the dictionary in
    assert packer.compressing and packer.take_fresh() and not packer.take_fresh()
    assert packer.pack(typical_order(8))[codec] == 1
    assert packer.unpack(packer.recompress(during[0]), "x").since == typical_order(0).since


def test_a_shard_compresses_its_earlier_orders_once_it_has_trained() -> None:
    """Orders packed before the dictionary existed are compressed when it does; the bytes
    the shard reports are what it holds."""
    from orderwatch.domain.rules import RuleSet
    from orderwatch.domain.tracker import ShardTracker
    from tests.factories import BASE, MIN, config, decode_all, order, payment

    rules = dataclasses.replace(RuleSet.from_config(config()), pack_after=1)
    tracker = ShardTracker(rules)
    n = 300

    def one_order(i: int) -> None:
        oid = f"PS20261111{i:08d}"
        lines = [order(i * MIN, oid, "created", amount="99.00"), payment(i * MIN, oid, f"P{i}")]
        for d in decode_all(lines):
            tracker.ingest(*order_scoped(d))
        tracker.advance(BASE + i * MIN + 1)  # just past them: applied

    with mock.patch.object(packing, "TRAIN_ON", 200):
        for i in range(n):
            one_order(i)
        tracker._packer.settle()  # the dictionary is in (it trains in the background) ...
        one_order(n)  # ... and the next pass over idle orders compresses the raw ones
    blobs = [r for r in tracker.orders.values() if isinstance(r, bytes)]
    assert len(blobs) == n  # all but the one the last event touched
    codec = packing._HEAD.size - 1
    assert all(b[codec] == 1 for b in blobs)  # compressed, the first 200 too
    assert tracker.packed_bytes == sum(map(len, blobs))
    records = [tracker.record(oid) for oid in list(tracker.orders)[:-1]]  # the packed ones
    raw = sum(len(Packer(compress=False).pack(rec)) for rec in records if rec is not None)
    assert tracker.packed_bytes < 0.7 * raw
