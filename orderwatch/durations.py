"""Durations as operators write them (`90s`, `30m`, `48h`, `1h30m`, `500ms`, `7d`), and
instants (`2026-11-11T00:00:00+08:00`).

Inside the engine every duration and instant is an integer of milliseconds: cheap to compare
and exact, unlike floats or datetimes on the hot path.
"""

from __future__ import annotations

import re
from datetime import datetime

_UNIT_MS = {"w": 604_800_000, "d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
_ORDER = {unit: rank for rank, unit in enumerate(_UNIT_MS)}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
MAX_MS = 100 * 365 * 86_400_000  # a century: beyond any SLA, and far inside int64
_EXPECTED = "expected e.g. '90s', '30m', '48h', '1h30m'"
INSTANT_EXAMPLE = "2026-11-11T00:00:00+08:00"


def parse_duration_ms(text: str) -> int:
    """Parse `90s`, `30m`, `1h30m` into milliseconds.

    As Prometheus reads them: every number has a unit (a bare `10` could mean seconds or
    minutes), and units go from the largest to the smallest, each at most once (`1h1h` is a
    typo, not 2h).
    """
    if not isinstance(text, str):
        raise ValueError(f"a duration is a string with a unit, {_EXPECTED}; got {text!r}")
    s = text.strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    pos, total, last = 0, 0.0, -1
    for m in _PART.finditer(s):
        rank = _ORDER[m.group(2)]
        if m.start() != pos or rank <= last:
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos, last = m.end(), rank
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r}: {_EXPECTED}, largest unit first")
    if total > MAX_MS:
        raise ValueError(f"duration {text!r} is longer than 100 years")
    return round(total)


def format_duration_ms(ms: int) -> str:
    """Render milliseconds the way people write them: `2h5m`, `45s`, `48h`, `3d4h`, exactly
    (`1h30m15s`, `1s500ms`): what it renders are configured limits, which must read true."""
    if ms < 0:
        return "-" + format_duration_ms(-ms)
    secs, rest_ms = divmod(ms, 1000)
    parts = []
    units: tuple[tuple[str, int], ...] = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    if secs < 3 * 86400:  # ops people say "48h", not "2d"
        units = units[1:]
    for unit, size in units:
        if secs >= size:
            parts.append(f"{secs // size}{unit}")
            secs %= size
    if rest_ms or not parts:
        parts.append(f"{rest_ms}ms")
    return "".join(parts)


def parse_instant_ms(text: str) -> int:
    """Epoch milliseconds of an ISO 8601 time with a UTC offset (`2026-11-11T00:00:00+08:00`,
    `2026-11-10T16:00:00Z`). A time without one is refused, as naive event timestamps are
    (CONTRACT §1): the machine's zone is not guessed. The ValueError says what was expected."""
    expected = f"an ISO 8601 time with a UTC offset, e.g. {INSTANT_EXAMPLE}"
    try:
        stamp = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not {expected}") from None
    if stamp.tzinfo is None:
        raise ValueError(
            f"{text!r} has no UTC offset (this machine's zone is not guessed); expected {expected}"
        )
    return int(stamp.timestamp() * 1000)
