"""Shard snapshots for bytewax recovery: a header, and a check before resuming.

A snapshot is `OWS`, one format byte, the settings it was taken with (2-byte length, JSON), and
the pickled (tracker, clock, chunk order). The format lets a version whose state layout differs
refuse a recovery store at start-up with a clear message instead of misreading it (or failing
deep inside the dataflow). The settings matter because a shard's state carries its rules: a
resumed shard would silently keep the old thresholds, and a new shard count would look for
orders in shards that do not hold them; so a store taken with other settings is refused too.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sqlite3
import struct
from contextlib import closing
from pathlib import Path
from typing import Any

from pydantic_core import to_json

from orderwatch.config import Config
from orderwatch.domain.rules import GAP_RULES

#: Bump whenever the pickled shard state changes shape (e.g. `OrderRec` fields).
STATE_FORMAT = 20
_LEN = struct.Struct(">H")
_MAGIC = b"OWS"
#: bytewax 0.21 keeps snapshots in `<dir>/part-*.sqlite3`, table `snaps`, keyed by step id.
SHARD_STEP = "orderwatch.track_orders"


class StateFormatError(RuntimeError):
    """A recovery snapshot this version cannot read."""


Settings = dict[str, str]


# A rule's next step and runbook link are only read when it fires: they may change across a
# resume (a resumed shard takes the current rules, `pipelines.orders`).
_WORDING: Any = {
    "stuck": {"__all__": {"description", "runbook_url"}},
    "gaps": {name: {"runbook_url"} for name in GAP_RULES},
}


def state_settings(cfg: Config) -> Settings:
    """A digest of each config part a shard's state holds or depends on."""
    parts: dict[str, Any] = {
        "rules": cfg.rules.model_dump(exclude=_WORDING),
        "lifecycle": cfg.lifecycle,
        "timezone": cfg.timezone,
        "lateness": (cfg.lateness, cfg.idle_after),
        "engine": cfg.engine.model_dump(exclude={"max_event_bytes", "max_future"}),
        "metrics": (cfg.metrics.max_label_values, cfg.metrics.channels),
    }
    return {k: hashlib.sha256(to_json(v)).hexdigest()[:16] for k, v in parts.items()}


def dump_shard(state: tuple[Any, ...], settings: Settings) -> bytes:
    head = json.dumps(settings, sort_keys=True).encode()
    body = pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)
    return _MAGIC + bytes((STATE_FORMAT,)) + _LEN.pack(len(head)) + head + body


def load_shard(blob: bytes, settings: Settings) -> tuple[Any, ...]:
    """The state tuple `dump_shard` was given (a shard's: tracker, clock, chunk order and key);
    refuses other formats and settings."""
    start = _verify(blob, settings)
    try:
        state = pickle.loads(blob[start:])
    except Exception as exc:
        raise StateFormatError(_stale(f"unreadable ({type(exc).__name__})")) from exc
    if not isinstance(state, tuple):
        raise StateFormatError(_stale(f"unreadable (a {type(state).__name__})"))
    return state


def snapshot_format(blob: bytes) -> int:
    """The format a snapshot was written in (1: before snapshots had a header)."""
    return blob[len(_MAGIC)] if blob[: len(_MAGIC)] == _MAGIC and len(blob) > len(_MAGIC) else 1


def check_recovery_store(directory: Path, settings: Settings) -> None:
    """Raise `StateFormatError` when the store's latest shard snapshot has another format,
    or was taken with other settings.

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
        if not isinstance(blob, bytes):
            continue
        try:
            _verify(blob, settings)
        except StateFormatError as exc:
            raise StateFormatError(f"{part}: {exc}") from None


def _verify(blob: bytes, settings: Settings) -> int:
    """Where the pickle starts in a snapshot this version can resume with `settings`;
    raises `StateFormatError` for another format or other settings."""
    found = snapshot_format(blob)
    if found != STATE_FORMAT:
        raise StateFormatError(_stale(f"format {found}"))
    try:
        taken_with, start = _settings(blob)
    except (struct.error, ValueError) as exc:  # ValueError: bad JSON or UTF-8
        raise StateFormatError(_stale(f"unreadable ({type(exc).__name__})")) from exc
    _check_settings(taken_with, settings)
    return start


def _settings(blob: bytes) -> tuple[Settings, int]:
    """The settings in a current-format snapshot, and where its pickle starts."""
    at = len(_MAGIC) + 1
    (size,) = _LEN.unpack_from(blob, at)
    at += _LEN.size
    return json.loads(blob[at : at + size]), at + size


def _check_settings(taken_with: Settings, settings: Settings) -> None:
    changed = sorted(
        k for k in taken_with.keys() | settings.keys() if taken_with.get(k) != settings.get(k)
    )
    if changed:
        raise StateFormatError(
            f"recovery snapshot was taken with other settings ({', '.join(changed)}); a resumed "
            "shard would keep the old ones (its rules are part of its state, and a new "
            "engine.shards would look for orders in the wrong shards). Start with the settings "
            "it was taken with, or move <state.dir>/recovery aside to start from empty state"
        )


def _stale(what: str) -> str:
    return (
        f"recovery snapshot is {what}; this orderwatch reads format {STATE_FORMAT} only. "
        "Another version wrote it: move <state.dir>/recovery aside to start from empty state"
    )
