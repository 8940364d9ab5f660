"""JSON bytes fit to size, for bytes that stay in memory.

orjson (3.12 and later) writes into a buffer of at least 4 KiB and hands it back untrimmed:
`orjson.dumps` of a 300-byte line holds ~4.4 KB until the bytes are freed (measured with
tracemalloc; Home Assistant trims theirs for the same reason). Harmless for bytes written out
at once; bytes that are kept (an alert's annotations, lines waiting in a chunk) get a copy of
their own size.
"""

from __future__ import annotations

from typing import Any

import orjson


def dumps_kept(obj: Any) -> bytes:
    """`orjson.dumps(obj)` in a buffer of its own length."""
    return bytes(memoryview(orjson.dumps(obj)))
