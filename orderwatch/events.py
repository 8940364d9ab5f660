"""Input events (CONTRACT §1): decoding, validation and rejection with a bounded reason.

Decoding is the hot path, so events are msgspec Structs (C-speed JSON decoding and type
checks) and timestamps become integer epoch milliseconds. Anything that fails becomes a
`Rejected` carrying a reason from `REASONS` (bounded: it is a metric label) and a detail
message for the dead-letter file.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from orderwatch.domain.lifecycle import STATUSES, canonical

MAX_ORDER_ID = 128
OrderId = Annotated[str, Meta(min_length=1, max_length=MAX_ORDER_ID)]
Amount = Decimal | None
Ts = int | str

ORDER, PAYMENT, WMS, LOGISTICS, ACCESS_LOG = "order", "payment", "wms", "logistics", "access_log"
EVENT_TYPES = (ORDER, PAYMENT, WMS, LOGISTICS, ACCESS_LOG)

REASONS = (
    "malformed_json",
    "malformed_line",  # a plain-text (nginx) line that is not in the configured format
    "encoding",
    "oversized",
    "missing_field",
    "invalid_field",
    "unknown_type",
    "unknown_status",
    "naive_timestamp",
    "invalid_timestamp",
    "future_timestamp",
)

# Epoch-ms sanity bounds: an integer below 1973-03-03 is almost surely epoch *seconds*.
_MIN_MS = 100_000_000_000
_MAX_MS = 4_102_444_800_000  # 2100-01-01
_MILLIS = {f"{i:03d}": i for i in range(1000)}  # a ts's milliseconds, as `decode_lines` reads them


class OrderEvent(Struct, tag_field="type", tag=ORDER, gc=False):
    ts: Ts
    order_id: OrderId
    status: str
    event_id: str | None = None
    channel: str | None = None
    warehouse: str | None = None
    amount: Amount = None
    buyer_id: str | None = None
    tracking_no: str | None = None
    carrier: str | None = None
    source: str | None = None


class PaymentEvent(Struct, tag_field="type", tag=PAYMENT, gc=False):
    ts: Ts
    order_id: OrderId
    pay_no: Annotated[str, Meta(min_length=1)]
    status: Literal["success", "failed", "refunded", "closed"]
    amount: Amount = None
    event_id: str | None = None
    channel: str | None = None
    source: str | None = None


class WmsEvent(Struct, tag_field="type", tag=WMS, gc=False):
    ts: Ts
    order_id: OrderId
    action: Literal["outbound_created", "picked", "packed", "shipped", "cancelled"]
    wms_order_no: str | None = None
    warehouse: str | None = None
    event_id: str | None = None
    source: str | None = None


class LogisticsEvent(Struct, tag_field="type", tag=LOGISTICS, gc=False):
    ts: Ts
    order_id: OrderId
    node: Literal[
        "collected", "in_transit", "out_for_delivery", "delivered", "exception", "returned"
    ]
    tracking_no: str | None = None
    carrier: str | None = None
    event_id: str | None = None
    source: str | None = None


MAX_LATENCY_MS = 86_400_000


class AccessLogEvent(Struct, tag_field="type", tag=ACCESS_LOG, gc=False):
    ts: Ts
    route: Annotated[str, Meta(min_length=1, max_length=512)]
    status: Annotated[int, Meta(ge=100, le=599)]
    # A day bounds it: a value like 1e300 went into the latency histogram's sum for good
    latency_ms: Annotated[float, Meta(ge=0, le=MAX_LATENCY_MS)]
    method: str | None = None
    service: str | None = None
    event_id: str | None = None


OrderScoped = OrderEvent | PaymentEvent | WmsEvent | LogisticsEvent
AnyEvent = OrderScoped | AccessLogEvent
_BY_TYPE: dict[str, type[Struct]] = {
    ORDER: OrderEvent,
    PAYMENT: PaymentEvent,
    WMS: WmsEvent,
    LOGISTICS: LogisticsEvent,
    ACCESS_LOG: AccessLogEvent,
}


class _TypeOnly(Struct):
    type: str


class Rejected(Struct, gc=False):
    """An input that could not become an event; it goes to the dead-letter output."""

    reason: str
    detail: str
    source: str
    position: str
    raw: bytes
    truncated: bool = False  # `raw` is only the start of the input


class Decoded(Struct, gc=False):
    """A valid event with its instant in epoch milliseconds."""

    ts_ms: int
    event: AnyEvent


def _reason_for(exc: msgspec.ValidationError) -> str:
    msg = str(exc)
    if msg.startswith("Object missing required field `type`"):
        return "missing_field"
    if "at `$.type`" in msg:  # present, but no type's name ("Invalid value") or no string
        return "unknown_type" if "Invalid value" in msg else "invalid_field"
    if msg.startswith("Object missing required field"):
        return "missing_field"
    if "Invalid enum value" in msg:
        return "unknown_status"
    return "invalid_field"


class TimestampError(ValueError):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class TimestampParser:
    """RFC 3339 with offset or epoch ms -> epoch ms; naive only with `assume_timezone`.

    Most timestamps look like `2026-11-11T08:00:00.123+08:00`: the instant of the minute
    (`2026-11-11T08:00` with its offset) is cached, so a line costs two small int parses
    instead of a datetime and its arithmetic (~1 µs). Anything else takes the full parser.
    """

    __slots__ = ("_assume", "_minutes", "_seconds")

    def __init__(self, assume: tzinfo | None = None) -> None:
        self._assume = assume
        self._minutes: dict[str, int] = {}
        self._seconds: dict[str, int] = {}  # "…HH:MM:SS" + offset -> epoch ms

    def __call__(self, ts: int | str) -> int:
        if type(ts) is int:
            if not _MIN_MS <= ts < _MAX_MS:
                small = 0 < ts < _MIN_MS
                hint = " (looks like epoch seconds; ts must be milliseconds)" if small else ""
                raise TimestampError("invalid_timestamp", f"ts {ts} out of range{hint}")
            return ts
        if not isinstance(ts, str):
            raise TimestampError("invalid_timestamp", "ts must be a string or an integer")
        if not ts.isascii():  # isdigit() below takes '²' and '١', which int() refuses or reads
            return self._full(ts)
        # Fastest: millisecond precision as OMS (`…SS.mmm+08:00`) and gateways (`…SS.mmmZ`)
        # send it, with this second already seen.
        n = len(ts)
        if (n == 29 or n == 24) and ts[19] == ".":
            base = self._seconds.get(ts[:19] + ts[23:])
            if base is not None:
                frac = ts[20:23]
                if frac.isdigit():
                    return base + int(frac)
        fast = self._fast(ts)
        if fast is None:
            return self._full(ts)
        if (n == 29 or n == 24) and ts[19] == "." and ts[20:23].isdigit():
            if len(self._seconds) > 200_000:
                self._seconds.clear()
            self._seconds[ts[:19] + ts[23:]] = fast - int(ts[20:23])
        return fast

    def _fast(self, ts: str) -> int | None:
        n = len(ts)
        if n < 20 or ts[16] != ":" or ts[10] != "T":
            return None
        if ts[-1] == "Z":
            end, off = n - 1, "Z"
        elif ts[-3] == ":" and ts[-6] in "+-":
            end, off = n - 6, ts[-6:]
        else:
            return None
        sec = ts[17:19]
        if not (sec.isdigit() and sec.isascii() and sec <= "59"):
            return None  # the full parser words it (`:60`, `:99` are no second of a minute)
        ms = 0
        if end > 19:
            frac = ts[20:end]
            if ts[19] != "." or not frac.isdigit():
                return None
            ms = int(frac[:3].ljust(3, "0"))
        key = ts[:16] + off
        base = self._minutes.get(key)
        if base is None:
            try:
                base = self._full(ts[:16] + ":00" + off)
            except TimestampError:
                return None  # the full parser words it, quoting the ts as it came
            if len(self._minutes) > 200_000:
                self._minutes.clear()
            self._minutes[key] = base
        return base + int(sec) * 1000 + ms

    def _full(self, ts: str) -> int:
        leap = 0
        text = ts.upper()  # RFC 3339 allows a lowercase "t" and "z"
        if text[16:19] == ":60" and text[13] == ":":
            # a leap second (RFC 3339 allows one at 23:59:60 UTC, whatever the offset shows):
            # as POSIX time counts it, the instant of the next day's first second
            text, leap = f"{text[:17]}59{text[19:]}", 1000
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise TimestampError(
                "invalid_timestamp", f"ts {ts[:64]!r} is not RFC 3339 or epoch milliseconds"
            ) from None
        if dt.tzinfo is None:
            if self._assume is None:
                raise TimestampError(
                    "naive_timestamp",
                    f"ts {ts[:64]!r} has no UTC offset (set assume_timezone to accept it)",
                )
            dt = dt.replace(tzinfo=self._assume)
        # Integer arithmetic: exact to the millisecond, no float rounding.
        delta = dt - _EPOCH
        if leap and delta.seconds % 86_400 != 86_399:
            raise TimestampError("invalid_timestamp", f"ts {ts[:64]!r} has no such second")
        ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000 + leap
        if not _MIN_MS <= ms < _MAX_MS:
            raise TimestampError("invalid_timestamp", f"ts {ts[:64]!r} out of range")
        return ms


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Decoder:
    """Turns raw lines into `Decoded` events or `Rejected` records.

    `status_map` translates channel status names to canonical ones (canonical names always
    map to themselves); `bound_type` is the event type of a single-type source.
    """

    def __init__(
        self,
        status_map: Mapping[str, str] | None = None,
        assume_timezone: tzinfo | None = None,
        max_bytes: int = 65_536,
    ) -> None:
        # one lookup maps a channel's status name or a canonical one to the canonical string
        self._status = {s: s for s in STATUSES}
        self._status.update({k: canonical(v) or v for k, v in (status_map or {}).items()})
        parser = TimestampParser(assume_timezone)
        self._parse_ts = parser.__call__
        self._seconds = parser._seconds  # the parser's cache, read inline by decode_lines
        self._max = max_bytes
        self._mixed = msgspec.json.Decoder(AnyEvent)
        self._bound = {t: msgspec.json.Decoder(cls) for t, cls in _BY_TYPE.items()}
        self._interned: dict[str, str] = {}

    def _intern(self, s: str) -> str:
        got = self._interned.get(s)
        if got is None:
            if len(self._interned) < 10_000:
                got = self._interned[s] = sys.intern(s)
            else:
                got = s
        return got

    def decode(
        self, raw: bytes, source: str, position: str, bound_type: str | None = None
    ) -> Decoded | Rejected:
        """Decode one JSON line."""
        if raw.startswith(_BOM):  # some Windows tools start a UTF-8 file with one
            raw = raw[len(_BOM) :]
        if len(raw) > self._max:
            return Rejected(
                "oversized",
                f"{len(raw)} bytes > limit {self._max}",
                source,
                position,
                raw[:1024],
                truncated=True,
            )
        try:
            # A bound type's struct takes a line with or without `type` (msgspec checks the
            # tag only when it is there), whatever text the line's values hold.
            ev = (self._mixed if bound_type is None else self._bound[bound_type]).decode(raw)
        except msgspec.ValidationError as exc:
            reason, detail = _reason_for(exc), str(exc)
            if bound_type is not None and reason == "unknown_type":  # which one, if it is one
                tag = msgspec.json.decode(raw, type=_TypeOnly).type
                if tag in _BY_TYPE:
                    detail = f"source carries {bound_type} events, got {tag}"
            return Rejected(reason, detail, source, position, raw)
        except UnicodeDecodeError:
            return Rejected("encoding", _utf8_error(raw) or "not UTF-8", source, position, raw)
        except msgspec.DecodeError as exc:
            where = _utf8_error(raw)  # outside a string, msgspec calls bad UTF-8 bad JSON
            if where is not None:
                return Rejected("encoding", where, source, position, raw)
            return Rejected("malformed_json", str(exc), source, position, raw)
        except RecursionError:  # msgspec follows nesting on the C stack
            detail = "JSON nested too deeply (an event is a flat object)"
            return Rejected("malformed_json", detail, source, position, raw)
        return self.finish(ev, raw, source, position)

    def decode_lines(
        self,
        lines: list[bytes],
        source: str,
        bound_type: str | None = None,
        not_after: int | None = None,
    ) -> tuple[list[tuple[int, Any]], list[tuple[int, Rejected]]]:
        """A chunk at once: `(ts, event)` for the good lines, `(index, Rejected)` for the bad.

        `not_after` (live only) rejects events stamped later than it (`future_timestamp`).

        The common case (a mixed-stream line whose timestamp second was seen before) runs
        inline here; anything else takes `decode`, which has every check and message.
        """
        good: list[tuple[int, Any]] = []
        bad: list[tuple[int, Rejected]] = []
        mixed = self._mixed.decode
        seconds = self._seconds
        status_map, interned = self._status, self._interned
        limit = self._max
        for i, raw in enumerate(lines):
            if len(raw) < 2 and not raw.strip():
                continue  # a blank line
            ev: Any = None
            if bound_type is None and len(raw) <= limit:
                try:
                    ev = mixed(raw)
                except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
                    ev = None
            if ev is not None:
                ts = ev.ts
                if type(ts) is int:
                    ms = ts if _MIN_MS <= ts < _MAX_MS else None
                elif len(ts) in (24, 29) and ts[19] == ".":
                    # Only ASCII seconds are cached, and `_MILLIS` only holds "000".."999": a hit
                    # in both is a valid ts (isdigit() and int() would also take '²' or '١').
                    base = seconds.get(ts[:19] + ts[23:])
                    frac = _MILLIS.get(ts[20:23])
                    ms = None if base is None or frac is None else base + frac
                else:
                    ms = None
                if ms is not None and not_after is not None and ms > not_after:
                    ms = None  # the careful path words the rejection
                t = type(ev)
                if ms is not None:
                    # as `_slim` (why there): less to hold while the event waits
                    ev.ts = ms
                    if ev.event_id == "":
                        ev.event_id = None  # as `_slim`
                    if t is not AccessLogEvent and ev.source is not None:
                        ev.source = interned.get(ev.source) or self._intern(ev.source)
                    if t is OrderEvent:
                        status = status_map.get(ev.status)
                        amount = ev.amount  # finite and below 10^12 in size (`_amount_ok`)
                        if status is not None and (
                            amount is None or (amount.is_finite() and amount.adjusted() < 12)
                        ):
                            ev.status = status
                            ev.buyer_id = None
                            if ev.channel is not None:
                                ev.channel = interned.get(ev.channel) or self._intern(ev.channel)
                            if ev.warehouse is not None:
                                ev.warehouse = interned.get(ev.warehouse) or self._intern(
                                    ev.warehouse
                                )
                            good.append((ms, ev))
                            continue
                    elif t is PaymentEvent:
                        amount = ev.amount
                        if amount is None or (amount.is_finite() and amount.adjusted() < 12):
                            good.append((ms, ev))
                            continue
                    elif t is AccessLogEvent:
                        ev.route = interned.get(ev.route) or self._intern(ev.route)
                        good.append((ms, ev))
                        continue
                    else:
                        if t is WmsEvent and ev.warehouse is not None:
                            ev.warehouse = interned.get(ev.warehouse) or self._intern(ev.warehouse)
                        good.append((ms, ev))
                        continue
            if not raw.strip():
                continue  # a line of whitespace only
            d = _not_after(self.decode(raw, source, "", bound_type), not_after, source, raw)
            if type(d) is Decoded:
                good.append((d.ts_ms, d.event))
            else:
                bad.append((i, d))  # type: ignore[arg-type]
        return good, bad

    def _slim(self, ev: Any, t: type, ts_ms: int) -> None:
        """Drop what a decoded event would hold for nothing while it waits for the watermark
        (a live daemon holds `lateness` × rate of them): the timestamp text, which nothing
        reads again (the int is shared with the `(ts, event)` pair), the buyer id, which no
        rule reads (it is still type-checked), and a copy of each emitting system's name.
        An empty `event_id` is no id: systems that have none often write `""`, and as an id
        it would make every later event of the order a duplicate.
        `decode_lines` does the same inline."""
        ev.ts = ts_ms
        if ev.event_id == "":
            ev.event_id = None
        if t is not AccessLogEvent and ev.source is not None:
            ev.source = self._interned.get(ev.source) or self._intern(ev.source)
        if t is OrderEvent:
            ev.buyer_id = None

    def finish(self, ev: Any, raw: bytes, source: str, position: str) -> Decoded | Rejected:
        """Checks msgspec cannot express: timestamps, status map, finite amounts."""
        try:
            ts_ms = self._parse_ts(ev.ts)
        except TimestampError as exc:
            return Rejected(exc.reason, str(exc), source, position, raw)
        t = type(ev)
        interned = self._interned
        self._slim(ev, t, ts_ms)
        if t is OrderEvent:
            status = self._status.get(ev.status)
            if status is None:
                detail = f"order status {ev.status[:64]!r} is neither canonical nor in status_map"
                return Rejected("unknown_status", detail, source, position, raw)
            ev.status = status
            if ev.channel is not None:
                ev.channel = interned.get(ev.channel) or self._intern(ev.channel)
            if ev.warehouse is not None:
                ev.warehouse = interned.get(ev.warehouse) or self._intern(ev.warehouse)
            if ev.amount is not None and not _amount_ok(ev.amount):
                return Rejected("invalid_field", _BAD_AMOUNT, source, position, raw)
        elif t is PaymentEvent:
            if ev.amount is not None and not _amount_ok(ev.amount):
                return Rejected("invalid_field", _BAD_AMOUNT, source, position, raw)
        elif t is WmsEvent:
            if ev.warehouse is not None:
                ev.warehouse = interned.get(ev.warehouse) or self._intern(ev.warehouse)
        elif t is AccessLogEvent:
            ev.route = interned.get(ev.route) or self._intern(ev.route)
        return Decoded(ts_ms, ev)


def _utf8_error(raw: bytes) -> str | None:
    """Where the line stops being UTF-8, or None if it is (msgspec counts from the start of
    the string value; whoever reads the dead letter counts from the start of the line)."""
    try:
        raw.decode()
    except UnicodeDecodeError as exc:
        return f"not UTF-8: {exc.reason} at byte {exc.start}"
    return None


_BOM = b"\xef\xbb\xbf"
_BAD_AMOUNT = "amount is not a finite decimal below 10^12 in size - at `$.amount`"


def _amount_ok(amount: Decimal) -> bool:
    """Larger amounts are a unit or encoding mistake; `1e5000` would also overflow exact
    cents. (`decode_lines` has this inline.)"""
    return amount.is_finite() and amount.adjusted() < 12


# --- nginx "combined" access logs with $request_time appended ---------------------------------

_NGINX = re.compile(
    rb"^(?P<addr>\S+) \S+ (?P<user>\S+) \[(?P<time>[^\]]+)\] "
    # the request line; or what nginx logs when it could read none: `-`, or the bytes of a
    # TLS handshake sent to a plain-HTTP port, escaped (`\x16\x03\x01`), both with a 400
    rb'"(?:(?P<method>[A-Z]+) (?P<path>\S+)(?: [^"]*)?|(?:[^"\\]|\\.)*)" '
    rb'(?P<status>\d{3}) (?P<bytes>\d+|-) "(?:[^"\\]|\\.)*" "(?:[^"\\]|\\.)*"'
    rb" (?P<rt>\d+(?:\.\d+)?)\s*$"
)


def _not_after(
    d: Decoded | Rejected, not_after: int | None, source: str, raw: bytes
) -> Decoded | Rejected:
    """A live source's event stamped later than `not_after` becomes `future_timestamp`."""
    if type(d) is not Decoded or not_after is None or d.ts_ms <= not_after:
        return d
    past = (d.ts_ms - not_after) / 1000
    ahead = f"ts is {past:.3f}s past what engine.max_future allows ahead of this machine's clock"
    return Rejected("future_timestamp", ahead, source, "", raw)


def decode_nginx_lines(
    lines: list[bytes], source: str, not_after: int | None = None
) -> tuple[list[tuple[int, Any]], list[tuple[int, Rejected]]]:
    """`Decoder.decode_lines` for nginx access-log lines."""
    good: list[tuple[int, Any]] = []
    bad: list[tuple[int, Rejected]] = []
    for i, raw in enumerate(lines):
        if len(raw) < 2 and not raw.strip():
            continue
        d = _not_after(decode_nginx(raw, source, ""), not_after, source, raw)
        if type(d) is Decoded:
            good.append((d.ts_ms, d.event))
        elif raw.strip():  # a line of whitespace only is skipped, as in `decode_lines`
            bad.append((i, d))  # type: ignore[arg-type]
    return good, bad


def parse_nginx_time(text: str) -> int:
    """`10/Oct/2026:13:55:36 +0800` -> epoch ms."""
    dt = datetime.strptime(text, "%d/%b/%Y:%H:%M:%S %z")
    return int(dt.timestamp()) * 1000


def decode_nginx(raw: bytes, source: str, position: str) -> Decoded | Rejected:
    """One nginx combined line (`$request_time` in seconds appended) as an access_log event."""
    m = _NGINX.match(raw)
    if m is None:
        return Rejected(
            "malformed_line",
            "not an nginx combined log line with $request_time",
            source,
            position,
            raw,
        )
    try:
        ts_ms = parse_nginx_time(m.group("time").decode())
    except ValueError:
        return Rejected("invalid_timestamp", "bad nginx time", source, position, raw)
    method = m.group("method")
    path = "-" if method is None else m.group("path").decode("utf-8", "replace").split("?", 1)[0]
    ev = AccessLogEvent(
        ts=ts_ms,
        route=sys.intern(path) if len(path) <= 512 else path[:512],
        status=int(m.group("status")),
        latency_ms=float(m.group("rt")) * 1000.0,
        method=None if method is None else method.decode(),
    )
    return Decoded(ts_ms, ev)


def rank(ev: AnyEvent) -> int:
    """Tie-break of events with the same instant: the order first, then money, goods, parcels."""
    return _RANK[type(ev)]


_RANK: dict[type, int] = {
    OrderEvent: 0,
    PaymentEvent: 1,
    WmsEvent: 2,
    LogisticsEvent: 3,
    AccessLogEvent: 4,
}

__all__ = [
    "REASONS",
    "AccessLogEvent",
    "AnyEvent",
    "Decoded",
    "Decoder",
    "LogisticsEvent",
    "OrderEvent",
    "OrderScoped",
    "PaymentEvent",
    "Rejected",
    "TimestampParser",
    "WmsEvent",
    "decode_nginx",
    "rank",
]
