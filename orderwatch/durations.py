"""Durations as operators write them (`90s`, `30m`, `48h`, `1h30m`, `500ms`, `7d`).

Inside the engine every duration and instant is an integer of milliseconds: cheap to compare
and exact, unlike floats or datetimes on the hot path.
"""

from __future__ import annotations

import re

_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")


def parse_duration_ms(text: str | int | float) -> int:
    """Parse `90s`, `30m`, `1h30m` (or a number of seconds) into milliseconds."""
    if isinstance(text, bool):
        raise ValueError("expected a duration like '90s', '30m' or '48h'")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return round(text * 1000)
    s = text.strip().replace(" ", "")
    if not s:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_MS[m.group(2)]
        pos = m.end()
    if pos != len(s):
        raise ValueError(f"invalid duration {text!r}: expected e.g. '90s', '30m', '48h', '1h30m'")
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
