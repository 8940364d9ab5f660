"""Alert identity and state changes (CONTRACT §4).

An alert *is* its labels. Its fingerprint is the same 64-bit FNV-1a signature of the sorted
labels that Prometheus and Alertmanager compute, so the id an on-call engineer sees in
orderwatch is the one Alertmanager shows for the same alert.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import orjson

from orderwatch.jsonbytes import dumps_kept

FIRING: Literal["firing"] = "firing"
RESOLVED: Literal["resolved"] = "resolved"
RESOLUTION = "resolution"  # the annotation a resolution adds: what ended the alert
# The resolution of an alert left firing before a start that this run's input has not raised
# again by its settling point (`ShardTracker.carry`); the alert store reopens such an instance
# if it is raised after all (a late event).
UNCONFIRMED = (
    "not raised again since orderwatch restarted: its state from before the restart is gone "
    "(state.recovery off, or the snapshot is older) and the input read since does not raise "
    "it, so this may still hold; check the order by hand"
)

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3
_MASK = 0xFFFFFFFFFFFFFFFF
_SEP = 0xFF


def fingerprint(labels: Mapping[str, str]) -> str:
    """Prometheus' `LabelsToSignature`: FNV-1a over sorted name, 0xff, value, 0xff."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name, labels[name]):
            for byte in part.encode("utf-8"):
                h = ((h ^ byte) * _FNV_PRIME) & _MASK
            h = ((h ^ _SEP) * _FNV_PRIME) & _MASK
    return f"{h:016x}"


def rfc3339_ms(ms: int) -> str:
    """Epoch ms as RFC 3339 UTC with millisecond precision (`2026-01-20T00:00:00.000Z`)."""
    return (
        datetime.fromtimestamp(ms / 1000, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def pack_annotations(annotations: dict[str, str]) -> bytes:
    """Annotations as compact UTF-8 JSON, in their order (the summary first, as written)."""
    return dumps_kept(annotations)


class AlertChange:
    """One alert state change: `firing` (endsAt None, or = startsAt for one-shots) or `resolved`.

    A firing alert stays in memory until it resolves (in its shard and in the alert store),
    and an alert storm is when that matters: 漏发 at a promotion peak fires for every paid
    order. So the annotations, most of an alert's size, are kept as their JSON (~750 bytes
    instead of a ~1,900-byte dict of strings) and read back only when shown.
    """

    __slots__ = ("_notes", "ends_at", "fingerprint", "labels", "starts_at", "status")

    def __init__(
        self,
        status: Literal["firing", "resolved"],
        labels: dict[str, str],
        annotations: dict[str, str] | bytes,
        starts_at: int,
        ends_at: int | None,
        fp: str | None = None,
    ) -> None:
        self.status = status
        self.labels = labels
        self._notes = (
            annotations if isinstance(annotations, bytes) else pack_annotations(annotations)
        )
        self.starts_at = starts_at
        self.ends_at = ends_at
        self.fingerprint = fp or fingerprint(labels)

    @property
    def annotations(self) -> dict[str, str]:
        """A fresh copy: changing it does not change the alert."""
        notes: dict[str, str] = orjson.loads(self._notes)
        return notes

    @property
    def annotations_json(self) -> bytes:
        """The annotations as JSON (`pack_annotations`)."""
        return self._notes

    @property
    def one_shot(self) -> bool:
        return self.status == FIRING and self.ends_at is not None

    @property
    def at(self) -> int:
        """The event time of this change: when it fired, or when it resolved."""
        return self.starts_at if self.status == FIRING else (self.ends_at or self.starts_at)

    def resolved(self, ends_at: int, **extra: str) -> AlertChange:
        """The resolution of this firing alert at `ends_at` (never before it started)."""
        notes = pack_annotations({**self.annotations, **extra}) if extra else self._notes
        return AlertChange(
            RESOLVED,
            self.labels,
            notes,
            self.starts_at,
            max(ends_at, self.starts_at),
            self.fingerprint,
        )

    def sort_key(self) -> tuple[int, str, int]:
        return (self.at, self.fingerprint, 0 if self.status == FIRING else 1)

    def to_json(self, *, packed: bool = False) -> dict[str, Any]:
        """The CONTRACT §4 line: status, labels, annotations, startsAt, endsAt, fingerprint.

        `packed`: the annotations as an `orjson.Fragment` of their JSON, which orjson embeds
        as it is (other serializers cannot read it).
        """
        return {
            "status": self.status,
            "labels": self.labels,
            "annotations": orjson.Fragment(self._notes) if packed else self.annotations,
            "startsAt": rfc3339_ms(self.starts_at),
            "endsAt": None if self.ends_at is None else rfc3339_ms(self.ends_at),
            "fingerprint": self.fingerprint,
        }

    def __getstate__(self) -> tuple[Any, ...]:
        return (
            self.status,
            self.labels,
            self._notes,
            self.starts_at,
            self.ends_at,
            self.fingerprint,
        )

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        (
            self.status,
            self.labels,
            self._notes,
            self.starts_at,
            self.ends_at,
            self.fingerprint,
        ) = state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, AlertChange):
            return False
        mine, theirs = self.__getstate__(), other.__getstate__()
        if mine == theirs:
            return True
        # the same annotations in another order are equal, as dicts are
        same_but_notes = mine[:2] + mine[3:] == theirs[:2] + theirs[3:]
        return same_but_notes and self.annotations == other.annotations

    def __hash__(self) -> int:
        return hash((self.fingerprint, self.status, self.starts_at, self.ends_at))

    def __repr__(self) -> str:
        return (
            f"AlertChange({self.status} {self.labels.get('rule')} "
            f"{self.labels.get('order_id', '')} {rfc3339_ms(self.at)})"
        )
