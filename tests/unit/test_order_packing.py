"""Idle orders packed into bytes come back field for field (domain.order.pack / unpack)."""

from __future__ import annotations

import copy
import sys
from decimal import Decimal

import pytest

from orderwatch.domain.order import OrderRec, new_order, pack, packed_due, unpack

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
    blob = pack(rec)
    assert packed_due(blob) == due  # readable without unpacking: the heap checks it
    back = unpack(blob, "OB-1")
    assert back == expected
    assert back.oid == "OB-1"


def test_a_new_order_packs_too() -> None:
    rec = new_order("A", TS)
    assert unpack(pack(copy.copy(rec)), "A") == rec


def test_the_packed_form_is_much_smaller_than_the_objects() -> None:
    """The reason to pack: no object headers for each int, tuple and bytes."""
    rec = busy_order()
    objects = sys.getsizeof(rec) + sum(
        sys.getsizeof(getattr(rec, f))
        for f in rec.__struct_fields__
        if getattr(rec, f) is not None and not isinstance(getattr(rec, f), str)
    )
    assert sys.getsizeof(pack(rec)) < objects / 2
