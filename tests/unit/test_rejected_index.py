"""The daemon's index of each order's rejected inputs: the real decoder rejects, the real
dead-letter sink writes and indexes, and the index stays within its bounds."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orderwatch.connectors.sinks import DeadLetterSink
from orderwatch.domain.rejected import RejectedByOrder, order_id_of
from orderwatch.events import Decoder, Rejected


def rejected(raw: bytes, position: str = "1") -> Rejected:
    got = Decoder(max_bytes=512).decode(raw, "file:e.jsonl", position)
    assert isinstance(got, Rejected), got
    return got


def naive(order_id: str, status: str = "shipped") -> bytes:
    line = {"type": "order", "ts": "2026-11-11T08:00:00", "order_id": order_id, "status": status}
    return json.dumps(line).encode()


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (naive("O1"), "O1"),
        (b'{"type":"order","order_id":"O2","status":"created"', "O2"),  # cut short: not JSON
        (b'{"type":"order","order_id":"O\\u00e93","ts":1}', "O\u00e93"),  # escapes decoded
        (b'{"type":"order","order_id":7}', None),
        (b'{"type":"order","order_id":""}', None),
        (b'{"type":"order","order_id":"' + b"x" * 129 + b'"}', None),
        (b'["order_id", "O4"]', None),
        (b"not json at all", None),
        (b'{"order_id":"\xff\xfe"', None),  # neither JSON nor UTF-8
    ],
)
def test_the_order_a_rejected_line_names(raw: bytes, expected: str | None) -> None:
    assert order_id_of(raw) == expected


def test_the_sink_indexes_each_rejection_under_its_order(tmp_path: Path) -> None:
    index = RejectedByOrder()
    part = DeadLetterSink(tmp_path / "d.jsonl", index=index).build_part("dl", "d", None)
    part.write_batch(
        [
            rejected(naive("O1"), "7"),
            rejected(naive("O1", "bogus").replace(b"08:00:00", b"08:00:00+08:00"), "9"),
            rejected(b"garbage", "10"),
            rejected(naive("O2"), "11"),
        ]
    )
    part.close()
    count, records = index.get("O1")
    assert count == 2
    assert [(r["reason"], r["position"], r["source"]) for r in records] == [
        ("naive_timestamp", "7", "file:e.jsonl"),
        ("unknown_status", "9", "file:e.jsonl"),
    ]
    assert "no UTC offset" in records[0]["detail"]
    assert json.loads(records[0]["raw"])["order_id"] == "O1"
    assert records[0]["received_at"].endswith("Z")
    assert index.get("O2")[0] == 1 and index.get("O3") == (0, []) and len(index) == 2
    # the file still has every record, the one no order claims included
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 4


def test_the_index_keeps_the_latest_records_of_the_latest_orders() -> None:
    index = RejectedByOrder(max_orders=3, per_order=2)
    for i in range(5):
        index.add({"reason": "naive_timestamp", "position": str(i), "raw": naive("A").decode()})
    for oid in ("B", "C"):
        index.add({"reason": "naive_timestamp", "position": oid, "raw": naive(oid).decode()})
    count, records = index.get("A")
    assert count == 5 and [r["position"] for r in records] == ["3", "4"]
    index.add({"reason": "x", "position": "d", "raw": naive("D").decode()})  # evicts A
    assert index.get("A") == (0, []) and len(index) == 3
    index.add({"reason": "x", "position": "b2", "raw": naive("B").decode()})  # B is recent again
    index.add({"reason": "x", "position": "e", "raw": naive("E").decode()})  # evicts C, not B
    assert index.get("C") == (0, []) and index.get("B")[0] == 2


def test_a_long_raw_line_is_cut_and_marked() -> None:
    index = RejectedByOrder()
    long_line = naive("L")[:-1] + b', "note": "' + b"x" * 2000 + b'"}'
    index.add({"reason": "oversized", "position": "1", "raw": long_line.decode()})
    index.add({"reason": "y", "position": "2", "raw": naive("L").decode(), "truncated": True})
    _, (cut, marked) = index.get("L")
    assert len(cut["raw"]) == 300 and cut["raw_truncated"] is True
    assert marked["raw_truncated"] is True and "truncated" not in marked


def test_a_record_without_readable_text_is_not_indexed() -> None:
    index = RejectedByOrder()
    index.add({"reason": "encoding", "position": "1", "raw_hex": naive("H").hex()})
    assert len(index) == 0


def test_a_record_is_held_in_memory_of_its_own_size() -> None:
    """orjson's bytes come in a buffer of at least 4 KiB: 30,000 records held as it returns
    them took 125 MB instead of 21 (tracemalloc)."""
    index = RejectedByOrder()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000):
            raw = naive(f"M{i}").decode()
            index.add({"reason": "naive_timestamp", "position": "1", "raw": raw})
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(index) == 1000
    assert held < 1_500_000  # ~1 KB each with the order's entry; 4 KiB for the buffer alone


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300) | st.text(max_size=200).map(lambda t: t.encode("utf-8", "replace")))
def test_no_input_makes_the_index_raise(raw: bytes) -> None:
    """The dead-letter sink indexes every rejected line: nothing in one may stop it."""
    for line in (raw, b'{"order_id":"' + raw + b'"}', b'{"order_id":"' + raw):
        order_id_of(line)  # any bytes: None or an id, never an exception
        text = line.decode("utf-8", "replace")  # the sink indexes only lines that are UTF-8
        found = order_id_of(text.encode())
        assert found is None or 1 <= len(found) <= 128
        index = RejectedByOrder()
        index.add({"reason": "malformed_json", "position": "1", "raw": text})
        assert index.get(found)[0] == 1 if found is not None else len(index) == 0


def test_a_line_read_again_is_not_counted_twice() -> None:
    """A restart without recovery reads its input again: the same (source, position)."""
    index = RejectedByOrder()
    record = {"reason": "naive_timestamp", "source": "file:a", "position": "7"}
    for position in ("7", "7", "8", "7"):
        index.add({**record, "position": position, "raw": naive("A").decode()})
    count, records = index.get("A")
    assert count == 2 and [r["position"] for r in records] == ["7", "8"]
    index.add({**record, "source": "file:b", "raw": naive("A").decode()})
    assert index.get("A")[0] == 3


def test_the_tail_of_a_dead_letter_file_is_indexed_again(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    part = DeadLetterSink(path).build_part("dl", "d", None)
    part.write_batch([rejected(naive(f"T{i}"), str(i)) for i in range(50)])
    part.close()
    with path.open("ab") as f:
        f.write(b'{"reason":"naive_timestamp","raw":"{\\"order_id\\":\\"T')  # a crash mid-line
    index = RejectedByOrder()
    assert index.load(path) == 50 and len(index) == 50
    assert index.get("T7")[1][0]["position"] == "7"
    small = RejectedByOrder()
    got = small.load(path, max_bytes=path.stat().st_size // 5)
    assert 5 <= got < 12 and small.get("T49")[0] == 1 and small.get("T0") == (0, [])
    assert RejectedByOrder().load(tmp_path / "none.jsonl") == 0
