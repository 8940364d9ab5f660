"""The packed per-order timeline (domain.timeline): what goes in comes back, in order."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from orderwatch.domain import timeline
from orderwatch.events import LogisticsEvent, OrderEvent, PaymentEvent, WmsEvent

T0 = 1_762_790_400_000


def _events() -> list[tuple[int, Any]]:
    """One of each kind, with every optional field set somewhere and missing somewhere."""
    return [
        (T0, OrderEvent(T0, "A", "created", "e0", "tmall", None, Decimal("10.00"), source="oms")),
        (T0 + 1, PaymentEvent(T0 + 1, "A", "P1", "success", Decimal("10.00"), "e1")),
        (T0 + 2, OrderEvent(T0 + 2, "A", "paid", "e2")),
        (T0 + 70_000, WmsEvent(T0 + 70_000, "A", "picked", "WO1", "WH-SH-01", "e3", "wms")),
        (T0 + 2**40, LogisticsEvent(T0 + 2**40, "A", "collected", "SF1", "SF", None)),
    ]


def _fill(
    events: list[tuple[int, Any]], keep: int, gone: list[str | None] | None = None
) -> tuple[bytes, int, str | None]:
    """The timeline of `events`; the event ids of dropped records are appended to `gone`."""
    blob, count, before = b"", 0, None
    for ts, ev in events:
        blob, count, dropped = timeline.append(blob, count, timeline.pack(ts, ev), keep)
        if dropped is not None:
            if dropped.status is not None:
                before = dropped.status
            if gone is not None:
                gone.append(dropped.event_id)
    return blob, count, before


def test_every_field_comes_back_with_the_status_after_each_event() -> None:
    """Each kind's identifier, amount, place, source and id survive packing."""
    blob, count, before = _fill(_events(), keep=20)
    got = timeline.entries(blob, count, before)
    assert [(e.ts, e.kind, e.what) for e in got] == [
        (T0, "order", "created"),
        (T0 + 1, "payment", "success"),
        (T0 + 2, "order", "paid"),
        (T0 + 70_000, "wms", "picked"),
        (T0 + 2**40, "logistics", "collected"),
    ]
    assert [e.status for e in got] == ["created", "created", "paid", "paid", "paid"]
    assert (got[0].amount, got[0].source, got[0].event_id) == ("10.00", "oms", "e0")
    assert (got[1].ident, got[1].amount, got[1].place) == ("P1", "10.00", None)
    assert (got[3].ident, got[3].place, got[3].source) == ("WO1", "WH-SH-01", "wms")
    assert (got[4].ident, got[4].place, got[4].event_id) == ("SF1", "SF", None)
    assert all(e.note is None for e in got)


@pytest.mark.parametrize("keep", [1, 2, 3, 17])
def test_only_the_last_events_are_kept_and_the_status_before_them_is_known(keep: int) -> None:
    """Beyond `keep` the oldest go; the order status they set is still reported."""
    statuses = ["created", "paid", "allocated", "label_printed", "shipped", "in_transit"] * 4
    events = [
        (T0 + i, OrderEvent(T0 + i, "A", s, f"e{i}", tracking_no=f"T{i}" * (i % 3) or None))
        for i, s in enumerate(statuses)
    ]
    gone: list[str | None] = []
    blob, count, before = _fill(events, keep, gone)
    got = timeline.entries(blob, count, before)
    kept = events[-keep:]
    assert count == len(got) == keep
    assert [e.event_id for e in got] == [ev.event_id for _, ev in kept]
    assert gone == [ev.event_id for _, ev in events[:-keep]]
    assert timeline.event_ids(blob, count) == [(ts, ev.event_id) for ts, ev in kept]
    assert [e.ident for e in got] == [ev.tracking_no for _, ev in kept]
    assert before == statuses[-keep - 1]


def test_renote_changes_only_the_last_record() -> None:
    """A note added after the handler ran replaces the record just appended."""
    events = _events()
    blob, count, before = _fill(events[:-1], keep=20)
    ts, ev = events[-1]
    record = timeline.pack(ts, ev)
    blob, count, _ = timeline.append(blob, count, record, 20)
    blob = timeline.renote(blob, record, ts, ev, "late")
    got = timeline.entries(blob, count, before)
    assert [e.note for e in got] == [None, None, None, None, "late"]
    assert got[-1].what == "collected"


def test_a_word_outside_the_vocabulary_is_kept_as_written() -> None:
    """Structs built in code skip validation; the timeline still shows what they said."""
    ev = WmsEvent(T0, "A", "relabelled", "WO1")  # type: ignore[arg-type]
    blob, count, _ = timeline.append(b"", 0, timeline.pack(T0, ev), 5)
    assert timeline.entries(blob, count, None)[0].what == "relabelled"


def test_holds_event_matches_whole_ids_only() -> None:
    """An id inside another id, or inside another field, is not held; a kept one is."""
    events = [
        (T0, OrderEvent(T0, "A", "created", "e10-x", warehouse="e1")),
        (T0 + 1, PaymentEvent(T0 + 1, "A", "e2", "success", event_id="pay-7")),
        (T0 + 2, LogisticsEvent(T0 + 2, "A", "collected", "SF1", "SF")),  # no event_id
    ]
    blob, count, _ = _fill(events, keep=20)
    day = 86_400_000
    assert timeline.holds_event(blob, count, "e10-x", T0, day)
    assert timeline.holds_event(blob, count, "pay-7", T0 + day + 1, day)  # within: a copy
    assert not timeline.holds_event(blob, count, "pay-7", T0 + day + 2, day)  # beyond: new
    assert not timeline.holds_event(blob, count, "", T0, day)
    empty = [*events, (T0 + 3, OrderEvent(T0 + 3, "A", "paid", ""))]  # an empty id is an id
    assert timeline.holds_event(*_fill(empty, keep=20)[:2], "", T0, day)
    for other in ("e1", "e10", "e2", "pay-", "SF1", "订单-1"):
        assert not timeline.holds_event(blob, count, other, T0, day), other
