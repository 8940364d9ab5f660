"""An alert change keeps its annotations packed, and hands out copies."""

from __future__ import annotations

import pickle
import tracemalloc

from orderwatch import jsonbytes
from orderwatch.domain.alert import FIRING, RESOLVED, AlertChange, pack_annotations
from orderwatch.jsonbytes import dumps_kept

NOTES = {
    "summary": "Order JD1 paid 10m ago but the warehouse has no outbound order (漏发)",
    "description": "Check the push to WMS for JD1 (出库单未生成).",
    "paid_amount": "299.00",
    "last_events": "11-11 00:00:04 order created amount=299.00 (oms)\n11-11 00:00:05 payment",
}
LABELS = {"alertname": "OrderGap", "rule": "paid_without_wms", "severity": "critical"}


def firing() -> AlertChange:
    return AlertChange(FIRING, {**LABELS, "order_id": "JD1"}, dict(NOTES), 1_000, None)


def test_annotations_read_back_as_given_and_a_changed_copy_changes_nothing() -> None:
    a = firing()
    assert a.annotations == NOTES
    assert list(a.annotations) == list(NOTES)  # in their order: the summary first
    copy = a.annotations
    copy["summary"] = "changed"
    assert a.annotations == NOTES
    assert a.to_json()["annotations"] == NOTES


def test_a_resolution_carries_the_annotations_and_any_extra_ones() -> None:
    a = firing()
    plain = a.resolved(2_000)
    assert (plain.status, plain.ends_at, plain.annotations) == (RESOLVED, 2_000, NOTES)
    noted = a.resolved(2_000, resolution="its rule is no longer configured")
    assert noted.annotations == {**NOTES, "resolution": "its rule is no longer configured"}
    assert a.annotations == NOTES


def test_packed_annotations_equal_whatever_order_they_were_given_in() -> None:
    backwards = dict(reversed(list(NOTES.items())))
    a, b = firing(), AlertChange(FIRING, {**LABELS, "order_id": "JD1"}, backwards, 1_000, None)
    assert a == b
    assert AlertChange(FIRING, a.labels, pack_annotations(backwards), 1_000, None) == a
    other = AlertChange(FIRING, a.labels, {**NOTES, "summary": "another"}, 1_000, None)
    assert other != a
    assert AlertChange(FIRING, a.labels, NOTES, 2_000, None) != a


def test_an_alert_survives_pickling_as_snapshots_do() -> None:
    a = firing()
    back = pickle.loads(pickle.dumps(a))
    assert back == a
    assert back.annotations == NOTES


def test_kept_json_holds_no_more_memory_than_its_length() -> None:
    """A firing alert is kept until it resolves: its packed annotations must not carry the
    4 KiB buffer orjson returns (an alert storm would hold 4 KiB per alert for nothing)."""
    dumps_kept(NOTES)  # anything imported or cached on first use is not counted
    tracemalloc.start()
    try:
        kept = [dumps_kept(NOTES) for _ in range(200)]
        # only what was allocated where the bytes are made: other threads' allocations
        # (a test before may leave some running) do not count
        where = [tracemalloc.Filter(True, jsonbytes.__file__)]
        held = tracemalloc.take_snapshot().filter_traces(where).statistics("filename")
    finally:
        tracemalloc.stop()
    per_copy = sum(s.size for s in held) / len(kept)
    assert len(kept[0]) < per_copy < len(kept[0]) + 100  # a bytes object's header is ~33 B
