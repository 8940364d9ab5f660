"""Routing raw chunks to shards: the watermark travels with the events; bad lines are kept."""

from __future__ import annotations

from orderwatch.connectors.raw import RawChunk
from orderwatch.events import Decoder, Rejected
from orderwatch.pipelines.route import DEAD_LETTER_KEY, Router, ShardBatch, shard_of
from orderwatch.runtime import Runtime
from tests.factories import BASE, MIN, order, payment


def route(
    lines: list[bytes],
    *,
    live: bool = False,
    now: int = BASE,
    shards: int = 4,
    fmt: str = "jsonl",
    bound: str | None = None,
    simulated: frozenset[str] = frozenset(),
) -> tuple[Runtime, list]:
    runtime = Runtime(shards=shards)
    router = Router(
        Decoder(),
        runtime,
        lateness_ms=MIN,
        live=live,
        max_future_ms=10 * MIN,
        simulated=simulated,
        now_ms=lambda: now,
    )
    return runtime, router.route(RawChunk("src", 11, lines, bound, fmt))


def test_every_shard_gets_the_chunk_watermark_even_without_events() -> None:
    """One item per shard, each carrying the chunk's largest event time."""
    _, out = route([order(0, "A", "paid"), payment(5 * MIN, "B")])
    batches = [v for k, v in out if k != DEAD_LETTER_KEY]
    assert len(batches) == 4
    assert {b.max_ts for b in batches} == {BASE + 5 * MIN}
    assert sum(len(b.events) for b in batches) == 2
    a = next(b for b in batches if b.key == f"s{shard_of('A', 4):03d}")
    assert [ev.order_id for _, ev in a.events] == ["A"]


def test_future_timestamps_are_rejected_live_with_their_position() -> None:
    """Live, an event more than max_future ahead of the clock is a dead letter."""
    runtime, out = route(
        [order(0, "A", "paid"), order(20 * MIN, "B", "paid"), order(5 * MIN, "C", "paid")],
        live=True,
        now=BASE,
    )
    dead = [v for k, v in out if k == DEAD_LETTER_KEY]
    assert [(d.reason, d.position) for d in dead] == [("future_timestamp", "12")]
    # 20 min ahead, 10 min allowed (the default): the detail says so in a whole sentence
    assert dead[0].detail == (
        "ts is 600.000s past what engine.max_future allows ahead of this machine's clock"
    )
    batches = [v for k, v in out if isinstance(v, ShardBatch)]
    assert {ev.order_id for b in batches for _, ev in b.events} == {"A", "C"}
    assert runtime.intakes()[0].rejected[("src", "future_timestamp")] == 1


def test_a_simulator_source_is_exempt_from_max_future() -> None:
    """Its clock runs `speed`x ahead of the wall's by design; other live sources are checked."""
    lines = [order(0, "A", "paid"), order(20 * MIN, "B", "paid")]
    _, out = route(lines, live=True, simulated=frozenset({"src"}))
    assert not [v for k, v in out if k == DEAD_LETTER_KEY]
    _, out = route(lines, live=True, simulated=frozenset({"other"}))
    assert [v.reason for k, v in out if k == DEAD_LETTER_KEY] == ["future_timestamp"]


def test_replay_accepts_any_timestamp() -> None:
    """In a replay there is no clock to compare with."""
    _, out = route([order(0, "A", "paid"), order(100 * 24 * 60 * MIN, "B", "paid")])
    assert not [v for k, v in out if k == DEAD_LETTER_KEY]


def test_bad_lines_keep_their_line_number() -> None:
    """A rejected line's position is its line number in the source."""
    _, out = route([order(0, "A", "paid"), b"{oops", b"", order(MIN, "B", "paid")])
    dead = [v for k, v in out if k == DEAD_LETTER_KEY]
    assert len(dead) == 1 and isinstance(dead[0], Rejected)
    assert (dead[0].reason, dead[0].position, dead[0].source) == ("malformed_json", "12", "src")


def test_nginx_chunks_count_access_log_traffic() -> None:
    """nginx lines become access-log counts by route, method and code class."""
    line = (
        b'10.0.0.1 - - [11/Nov/2026:00:00:01 +0800] "POST /api/pay/callback HTTP/1.1" '
        b'504 12 "-" "curl/8" 3.250'
    )
    runtime, out = route([line, line, b"garbage"], fmt="nginx")
    intake = runtime.intakes()[0]
    assert intake.requests[("/api/pay/callback", "POST", "5xx")] == 2
    assert intake.latency["/api/pay/callback"].count == 2
    assert [v.reason for k, v in out if k == DEAD_LETTER_KEY] == ["malformed_line"]


def test_live_nginx_lines_from_the_future_are_rejected_with_their_position() -> None:
    """The clock-skew guard covers access logs too: 11 Nov 00:20 is 20 min past `now`."""
    now = 1_794_326_400_000  # 2026-11-11T00:00:00+08:00

    def line(hhmm: str) -> bytes:
        return (
            f'10.0.0.1 - - [11/Nov/2026:{hhmm}:01 +0800] "GET /api/order/create HTTP/1.1" '
            f'200 12 "-" "curl/8" 0.010'
        ).encode()

    runtime, out = route(
        [line("00:00"), line("00:20"), line("00:05")], fmt="nginx", live=True, now=now
    )
    dead = [v for k, v in out if k == DEAD_LETTER_KEY]
    assert [(d.reason, d.position) for d in dead] == [("future_timestamp", "12")]
    assert dead[0].raw == line("00:20")
    assert runtime.intakes()[0].requests[("/api/order/create", "GET", "2xx")] == 2


def test_bound_source_lines_without_type() -> None:
    """A payment-only source routes lines that carry no `type`."""
    raw = b'{"ts":1794326400000,"order_id":"A","pay_no":"P","status":"success"}'
    _, out = route([raw], bound="payment")
    events = [ev for k, v in out if isinstance(v, ShardBatch) for _, ev in v.events]
    assert [type(e).__name__ for e in events] == ["PaymentEvent"]


def _batch(first: int, n: int, part: str = "src") -> ShardBatch:
    return ShardBatch("s000", [], -1, part, first, first + n)


def test_chunk_order_holds_early_batches_until_the_gap_fills() -> None:
    """Batches are released in source order, per source, whatever order they arrive in."""
    from orderwatch.pipelines.route import ChunkOrder

    order = ChunkOrder()
    assert order.ready(_batch(11, 5)) == []
    assert order.ready(_batch(6, 5)) == []
    got = order.ready(_batch(1, 5))
    assert [b.first for b in got] == [1, 6, 11]
    assert [b.first for b in order.ready(_batch(1, 3, part="other"))] == [1]
    assert order.ready(_batch(21, 1)) == []
    assert [b.first for b in order.leftovers()] == [21]
