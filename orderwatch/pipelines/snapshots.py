"""Shard snapshots for bytewax recovery: a format header, and a check before resuming.

A snapshot is `OWS` + one format byte + the pickled (tracker, clock, chunk order). The header
lets a version whose state layout differs refuse a recovery store at start-up with a clear
message instead of misreading it (or failing deep inside the dataflow).
"""

from __future__ import annotations

import pickle
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

#: Bump whenever the pickled shard state changes shape (e.g. `OrderRec` fields).
STATE_FORMAT = 6
_MAGIC = b"OWS"
#: bytewax 0.21 keeps snapshots in `<dir>/part-*.sqlite3`, table `snaps`, keyed by step id.
SHARD_STEP = "orderwatch.track_orders"


class StateFormatError(RuntimeError):
    """A recovery snapshot this version cannot read."""


def dump_shard(state: tuple[Any, Any, Any]) -> bytes:
    return _MAGIC + bytes((STATE_FORMAT,)) + pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def load_shard(blob: bytes) -> tuple[Any, Any, Any]:
    """(tracker, clock, chunk order) from a snapshot; refuses other formats."""
    found = snapshot_format(blob)
    if found != STATE_FORMAT:
        raise StateFormatError(_stale(f"format {found}"))
    try:
        tracker, clock, order = pickle.loads(blob[len(_MAGIC) + 1 :])
    except Exception as exc:
        raise StateFormatError(_stale(f"unreadable ({type(exc).__name__})")) from exc
    return tracker, clock, order


def snapshot_format(blob: bytes) -> int:
    """The format a snapshot was written in (1: before snapshots had a header)."""
    return blob[len(_MAGIC)] if blob[: len(_MAGIC)] == _MAGIC and len(blob) > len(_MAGIC) else 1


def check_recovery_store(directory: Path) -> None:
    """Raise `StateFormatError` when the store's latest shard snapshot has another format.

    Reads bytewax's own tables; a store it cannot read that way is left to bytewax.
    """
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True)) as db:
                row = db.execute(
                    "SELECT ser_change FROM snaps WHERE step_id = ? AND ser_change IS NOT NULL "
                    "ORDER BY snap_epoch DESC LIMIT 1",
                    (SHARD_STEP,),
                ).fetchone()
            blob = pickle.loads(row[0]) if row else None  # bytewax pickles what we returned
        except (sqlite3.Error, pickle.UnpicklingError):
            continue
        if isinstance(blob, bytes) and snapshot_format(blob) != STATE_FORMAT:
            raise StateFormatError(f"{part}: " + _stale(f"format {snapshot_format(blob)}"))


def _stale(what: str) -> str:
    return (
        f"recovery snapshot is {what}; this orderwatch reads format {STATE_FORMAT} only. "
        "Another version wrote it: move <state.dir>/recovery aside to start from empty state"
    )
