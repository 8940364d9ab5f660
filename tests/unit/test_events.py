"""Event intake (CONTRACT §1): timestamps, amounts, status map, and rejection reasons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from orderwatch.events import (
    REASONS,
    AccessLogEvent,
    Decoded,
    Decoder,
    OrderEvent,
    PaymentEvent,
    Rejected,
    TimestampError,
    TimestampParser,
    decode_nginx,
)


def decode(raw: bytes, **kw: object) -> Decoded | Rejected:
    bound = kw.pop("bound", None)
    return Decoder(**kw).decode(raw, "src", "7", bound)  # type: ignore[arg-type]


def reason(raw: bytes, **kw: object) -> str:
    d = decode(raw, **kw)
    assert isinstance(d, Rejected), d
    assert d.reason in REASONS
    return d.reason


INSTANT = 1_794_326_400_000  # 2026-11-10T16:00:00Z


@pytest.mark.parametrize(
    "ts",
    [
        '"2026-11-11T00:00:00+08:00"',
        '"2026-11-10T16:00:00Z"',
        '"2026-11-10T16:00:00.000+00:00"',
        "1794326400000",
        '"2026-11-10T11:00:00-05:00"',
        '"2026-11-10t16:00:00z"',  # RFC 3339 5.6: "t" and "z" may be lowercase
        '"2026-11-11t00:00:00.000+08:00"',
    ],
)
def test_offsets_and_epoch_ms_give_the_same_instant(ts: str) -> None:
    """Offsets differ between systems; the instant is what counts."""
    d = decode(b'{"type":"order","ts":' + ts.encode() + b',"order_id":"A","status":"paid"}')
    assert isinstance(d, Decoded) and d.ts_ms == INSTANT


def test_naive_timestamp_is_rejected() -> None:
    """A timestamp without an offset is rejected with reason naive_timestamp."""
    raw = b'{"type":"order","ts":"2026-11-11T00:00:00","order_id":"A","status":"paid"}'
    assert reason(raw) == "naive_timestamp"


def test_naive_timestamp_accepted_with_assume_timezone() -> None:
    """With assume_timezone +08:00 a naive time is read in that zone."""
    raw = b'{"type":"order","ts":"2026-11-11T00:00:00","order_id":"A","status":"paid"}'
    d = decode(raw, assume_timezone=timezone(timedelta(hours=8)))
    assert isinstance(d, Decoded) and d.ts_ms == INSTANT


def test_epoch_seconds_are_rejected_with_a_hint() -> None:
    """An integer that looks like epoch seconds is not silently read as 1970."""
    d = decode(b'{"type":"order","ts":1794326400,"order_id":"A","status":"paid"}')
    assert isinstance(d, Rejected) and d.reason == "invalid_timestamp"
    assert "seconds" in d.detail


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b'{"type":"order","ts":1794326400000,"order_id":"A"', "malformed_json"),
        (b"not json at all", "malformed_json"),
        (b"[1,2]", "invalid_field"),
        (b'{"type":"order","ts":1794326400000,"status":"paid"}', "missing_field"),
        (b'{"ts":1794326400000,"order_id":"A","status":"paid"}', "missing_field"),
        (b'{"type":"refund","ts":1794326400000,"order_id":"A"}', "unknown_type"),
        (
            b'{"type":"order","ts":1794326400000,"order_id":"A","status":"shipping"}',
            "unknown_status",
        ),
        (
            b'{"type":"payment","ts":1794326400000,"order_id":"A","pay_no":"P","status":"ok"}',
            "unknown_status",
        ),
        (b'{"type":"order","ts":1794326400000,"order_id":"","status":"paid"}', "invalid_field"),
        (
            b'{"type":"order","ts":1794326400000,"order_id":"' + b"x" * 129 + b'","status":"paid"}',
            "invalid_field",
        ),
        (b'{"type":"order","ts":true,"order_id":"A","status":"paid"}', "invalid_field"),
        (b'{"type":"order","ts":"yesterday","order_id":"A","status":"paid"}', "invalid_timestamp"),
        (
            b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid","amount":"abc"}',
            "invalid_field",
        ),
        (
            b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid","amount":"NaN"}',
            "invalid_field",
        ),
        (b'{"type":"order","ts":1794326400000,"order_id":"\xff\xfe","status":"paid"}', "encoding"),
        (b'\xff{"type":"order","ts":1794326400000,"order_id":"A","status":"paid"}', "encoding"),
        (b'{"type":5,"ts":1794326400000,"order_id":"A","status":"paid"}', "invalid_field"),
        (
            b'{"type":"access_log","ts":1794326400000,"route":"/p","status":200,'
            b'"latency_ms":1e300}',
            "invalid_field",
        ),
    ],
)
def test_bad_input_gets_a_bounded_reason(raw: bytes, why: str) -> None:
    """Each kind of bad input is rejected with its reason, never an exception."""
    assert reason(raw) == why


CRASHERS = [  # each of these stopped the daemon, and again at every restart
    b'{"type":"payment","ts":1794326400000,"order_id":"A","pay_no":"P","status":"success",'
    b'"amount":"1e999999"}',  # decimal.Overflow in cents
    b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid","amount":"1e5000"}',
    b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid","x":'
    + b"[" * 1000
    + b"]" * 1000
    + b"}",  # RecursionError in the JSON decoder
]


@pytest.mark.parametrize("raw", CRASHERS)
def test_lines_that_crashed_the_decoder_are_dead_letters(raw: bytes) -> None:
    """One at a time and in a chunk (the fast path), they are rejected; the rest goes on."""
    assert reason(raw) in ("invalid_field", "malformed_json")
    good = b'{"type":"order","ts":1794326400000,"order_id":"B","status":"paid","amount":"9.90"}'
    ok, bad = Decoder().decode_lines([raw, good], "src")
    assert [i for i, _ in bad] == [0] and [ev.order_id for _, ev in ok] == ["B"]


def test_amounts_up_to_a_trillion_are_accepted() -> None:
    raw = b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid","amount":"%s"}'
    for amount in (b"999999999999.99", b"-999999999999.99", b"0.001"):
        assert isinstance(decode(raw % amount), Decoded)
    assert reason(raw % b"1000000000000") == "invalid_field"


@pytest.mark.parametrize(
    "ts", ["2026-11-24T01:00:99Z", "2026-11-24T01:00:60+08:00", "9999-12-31T23:59:59Z"]
)
def test_impossible_seconds_and_far_years_are_invalid_and_quoted_as_sent(ts: str) -> None:
    """`:99` was read as 1 min 39 s, `:60` as the next minute; the year 9999 was misquoted."""
    parse = TimestampParser()
    parse("2026-11-24T01:00:00Z")  # the minute is cached: the fast path must still check
    with pytest.raises(TimestampError) as err:
        parse(ts)
    assert err.value.reason == "invalid_timestamp"
    assert repr(ts) in str(err.value)


@pytest.mark.parametrize(
    ("ts", "ms"),
    [
        ("2016-12-31T23:59:60Z", 1_483_228_800_000),
        ("2016-12-31T23:59:60.250Z", 1_483_228_800_250),
        ("2017-01-01T07:59:60+08:00", 1_483_228_800_000),
    ],
)
def test_a_leap_second_is_the_next_days_first_second(ts: str, ms: int) -> None:
    """RFC 3339 allows `23:59:60` UTC; it was rejected. POSIX time (and epoch ms) has no
    such second and counts it as the next one."""
    assert TimestampParser()(ts) == ms == TimestampParser()("2017-01-01T00:00:00Z") + ms % 1000


def test_a_utf8_bom_before_the_first_event_is_ignored() -> None:
    raw = b'\xef\xbb\xbf{"type":"order","ts":1794326400000,"order_id":"A","status":"paid"}'
    good, bad = Decoder().decode_lines([raw], "src")
    assert bad == [] and good[0][1].order_id == "A"


def test_oversized_line_is_rejected_before_parsing() -> None:
    """A line over the limit is rejected as oversized and its raw text is cut."""
    raw = (
        b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid","pad":"'
        + b"x" * 70_000
        + b'"}'
    )
    d = decode(raw)
    assert isinstance(d, Rejected) and d.reason == "oversized" and len(d.raw) <= 1024
    assert reason(raw, max_bytes=100) == "oversized"


def test_an_encoding_error_names_its_byte_in_the_line() -> None:
    """The offset counts from the start of the line, where whoever reads the dead letter looks."""
    raw = b'{"type":"order","ts":1794326400000,"order_id":"AB\xffC","status":"paid"}'
    d = decode(raw)
    assert isinstance(d, Rejected) and d.reason == "encoding"
    bad_at = raw.index(b"\xff")
    assert d.detail.endswith(f"at byte {bad_at}")


def test_rejection_keeps_source_position_and_detail() -> None:
    """The dead letter says where the line came from and what was wrong (field path)."""
    d = decode(b'{"type":"order","ts":1794326400000,"status":"paid"}')
    assert isinstance(d, Rejected)
    assert (d.source, d.position) == ("src", "7")
    assert "order_id" in d.detail


@pytest.mark.parametrize("amount", ['"299.00"', '"299.0"', "299", "299.0", "299.000"])
def test_amounts_are_exact_decimals(amount: str) -> None:
    """Every notation of 299 decodes to a Decimal equal to 299, never a float."""
    d = decode(
        b'{"type":"payment","ts":1794326400000,"order_id":"A","pay_no":"P",'
        b'"status":"success","amount":' + amount.encode() + b"}"
    )
    assert isinstance(d, Decoded) and isinstance(d.event, PaymentEvent)
    assert isinstance(d.event.amount, Decimal) and d.event.amount == Decimal(299)


def test_binary_float_notation_stays_exact() -> None:
    """0.1 + 0.2 style amounts are kept exactly as written."""
    d = decode(
        b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid",'
        b'"amount":0.30000000000000004}'
    )
    assert isinstance(d, Decoded) and isinstance(d.event, OrderEvent)
    assert str(d.event.amount) == "0.30000000000000004"


def test_status_map_translates_channel_statuses() -> None:
    """WAIT_SELLER_SEND_GOODS and 已付款 map to `paid`."""
    dec = Decoder({"WAIT_SELLER_SEND_GOODS": "paid", "已付款": "paid"})
    for name in ("WAIT_SELLER_SEND_GOODS", "已付款", "paid"):
        raw = (f'{{"type":"order","ts":1794326400000,"order_id":"A","status":"{name}"}}').encode()
        d = dec.decode(raw, "s", "1")
        assert isinstance(d, Decoded) and isinstance(d.event, OrderEvent)
        assert d.event.status == "paid"


def test_bound_source_may_omit_type() -> None:
    """A source bound to `payment` decodes lines without `type`, and rejects other types."""
    raw = b'{"ts":1794326400000,"order_id":"A","pay_no":"P","status":"success"}'
    d = decode(raw, bound="payment")
    assert isinstance(d, Decoded) and isinstance(d.event, PaymentEvent)
    other = b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid"}'
    assert reason(other, bound="payment") == "unknown_type"


def test_bound_source_reads_values_that_hold_the_word_type() -> None:
    """Only a `type` key names the event's type: a value or a nested object with the word
    in it is payload, and a bound line with its own `type` is checked against the binding."""
    pay = b'"ts":1794326400000,"order_id":"A","pay_no":"P","status":"success"'
    for extra in (b'"extra":{"type":"alipay"}', b'"source":"type"', b'"type":"payment"'):
        d = decode(b"{" + pay + b"," + extra + b"}", bound="payment")
        assert isinstance(d, Decoded) and isinstance(d.event, PaymentEvent), extra
    wrong = decode(b"{" + pay + b',"type":"order"}', bound="payment")
    assert isinstance(wrong, Rejected) and wrong.reason == "unknown_type"
    assert wrong.detail == "source carries payment events, got order"
    assert reason(b"{" + pay + b',"type":"refund"}', bound="payment") == "unknown_type"
    assert reason(b"{" + pay + b',"type":7}', bound="payment") == "invalid_field"


def test_an_empty_event_id_is_no_id() -> None:
    """`""` is how many systems write a missing id; as an id it would make each later event
    of the order a duplicate. Both decoding paths drop it."""
    raw = b'{"type":"order","event_id":"","ts":1794326400000,"order_id":"A","status":"paid"}'
    careful = decode(raw)
    assert isinstance(careful, Decoded) and careful.event.event_id is None
    (good, bad) = Decoder().decode_lines([raw, raw.replace(b'""', b'"e1"')], "src")
    assert bad == [] and [ev.event_id for _, ev in good] == [None, "e1"]


def test_lines_of_whitespace_are_skipped_like_empty_ones() -> None:
    raw = b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid"}'
    good, bad = Decoder().decode_lines([b"  ", raw, b"\t \r", b""], "src")
    assert bad == [] and len(good) == 1


def test_unknown_extra_fields_are_ignored() -> None:
    """Producers may add fields without breaking intake."""
    d = decode(b'{"type":"order","ts":1794326400000,"order_id":"A","status":"paid","x":{"y":1}}')
    assert isinstance(d, Decoded)


def test_nginx_combined_line_with_request_time() -> None:
    """An nginx combined line with $request_time appended becomes an access_log event."""
    line = (
        b'10.0.0.1 - - [11/Nov/2026:00:00:01 +0800] "POST /api/pay/callback?sig=1 HTTP/1.1" '
        b'504 12 "-" "curl/8" 3.250'
    )
    d = decode_nginx(line, "nginx", "1")
    assert isinstance(d, Decoded) and isinstance(d.event, AccessLogEvent)
    ev = d.event
    assert (ev.route, ev.status, ev.method) == ("/api/pay/callback", 504, "POST")
    assert ev.latency_ms == pytest.approx(3250.0)
    assert d.ts_ms == INSTANT + 1000  # 00:00:01 +0800
    bad = decode_nginx(b"garbage", "nginx", "2")
    assert isinstance(bad, Rejected) and bad.reason == "malformed_line"


@pytest.mark.parametrize("request_line", [b"-", rb"\x16\x03\x01\x02\x00\x01"])
def test_an_nginx_request_it_could_not_read_is_a_400_on_route_dash(request_line: bytes) -> None:
    """nginx logs `"-"` (or the escaped bytes sent) for a request it could not read, with a
    400: those are errors of the service, and were rejected as not nginx lines."""
    line = b'10.0.0.1 - - [11/Nov/2026:00:00:01 +0800] "%s" 400 150 "-" "-" 0.001' % request_line
    d = decode_nginx(line, "nginx", "1")
    assert isinstance(d, Decoded) and isinstance(d.event, AccessLogEvent)
    assert (d.event.route, d.event.method, d.event.status) == ("-", None, 400)


@given(
    instant=st.datetimes(min_value=datetime(1974, 1, 1), max_value=datetime(2099, 1, 1)),
    offset_min=st.integers(-14 * 60, 14 * 60),
    digits=st.integers(0, 9),
    zulu=st.booleans(),
)
def test_fast_timestamp_path_equals_the_full_parser(
    instant: datetime, offset_min: int, digits: int, zulu: bool
) -> None:
    """The cached minute fast path gives exactly what fromisoformat gives."""
    tz = UTC if zulu else timezone(timedelta(minutes=offset_min))
    dt = instant.replace(tzinfo=tz)
    text = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if digits:
        text += "." + f"{dt.microsecond:06d}{'123'}"[:digits]
    text += "Z" if zulu else dt.strftime("%z")[:3] + ":" + dt.strftime("%z")[3:]
    parser = TimestampParser()
    expected = parser._full(text)
    assert parser(text) == expected
    assert parser(text) == expected  # from the cache too


@pytest.mark.parametrize("frac", ["²³¹", "١٢٣", "１２３", "+12", " 12", "1_2"])
def test_milliseconds_other_than_three_ascii_digits_are_invalid_on_every_path(frac: str) -> None:
    """str.isdigit() takes superscripts and other scripts' digits: the cached-second path
    crashed the decoder on `²³¹` (int() refuses it) and read `١٢٣` as 123 ms; int() also
    takes a sign, spaces and underscores."""
    seen = b'{"type":"order","ts":"2025-11-10T16:00:00.000Z","order_id":"A","status":"created"}'
    odd = seen.replace(b".000Z", f".{frac}Z".encode()).replace(b"created", b"paid")
    ok, bad = Decoder().decode_lines([seen, odd, seen], "src")
    assert [i for i, _ in bad] == [1] and len(ok) == 2
    assert bad[0][1].reason == "invalid_timestamp"
    parser = TimestampParser()
    parser("2025-11-10T16:00:00.000Z")  # the second is cached
    with pytest.raises(TimestampError):
        parser(f"2025-11-10T16:00:00.{frac}Z")


def test_decoded_events_hold_nothing_no_rule_reads() -> None:
    """A live daemon holds `lateness` × rate decoded events: on both decoding paths an event
    keeps its instant as the int of its pair (not the timestamp text), no buyer id, and
    the one copy of its emitting system's name. The buyer id is still type-checked."""
    line = (
        '{"type":"order","ts":"2026-11-11T00:00:0%d.250+08:00","order_id":"A%d",'
        '"status":"%s","buyer_id":"U1","source":"o' + "m" + 's","amount":"1.00"}'
    )
    # a second not seen before takes the careful path (which caches it), a repeat the fast one
    raws = [(line % (i % 3, i, s)).encode() for i, s in enumerate(["created", "paid", "已付款"])]
    decoder = Decoder(status_map={"已付款": "paid"})
    good, bad = decoder.decode_lines([raws[0], raws[0], *raws], "src")
    assert not bad and len(good) == 5
    assert [ev.status for _, ev in good] == ["created", "created", "created", "paid", "paid"]
    for ms, ev in good:
        assert ev.ts is ms and ev.buyer_id is None and ev.amount == Decimal("1.00")
    assert len({id(ev.source) for _, ev in good}) == 1 and good[0][1].source == "oms"
    typo = raws[0].replace(b'"U1"', b"17")
    assert reason(typo) == "invalid_field"
    assert decoder.decode_lines([typo], "src")[1][0][1].reason == "invalid_field"
