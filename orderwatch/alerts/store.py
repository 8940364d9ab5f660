"""Which alert instances were already announced, kept in SQLite so restarts and replays agree.

CONTRACT §4: "the same condition never produces two firing alerts, including after a restart
or a replay of already-seen input". The dataflow is at-least-once after a resume and a replay
re-emits everything, so the store is the single place that decides which changes are *new*.

An *instance* is `(fingerprint, starts_at)`: the same labels firing again after a
resolution carry a different `starts_at`. `apply()` keeps a change only when it moves an
instance forward:

- `firing` of an unknown instance: kept (a still-firing *other* instance of the same
  fingerprint is superseded silently: one fingerprint fires at most once at a time);
- `firing` of a known instance (firing, resolved or one-shot): dropped, but for one that
  ended as unconfirmed after a restart (`UNCONFIRMED`), which fires again;
- `resolved` of a firing instance: kept; of a resolved one: dropped; of an unknown one:
  kept once (the first we hear of it tells receivers it ended), recorded, then dropped;
- one-shot (`endsAt == startsAt`): kept once per instance, forever.

Resolved and one-shot instances are pruned when their `starts_at` falls `retention`
(default 7 days) behind the largest event time the store has seen, and any *unknown*
instance that old is dropped as already seen: pruning never reopens a duplicate.
Decisions use event time only (never the wall clock), so a replay decides as the live
run did.

Announcing is at least once: each kept change also goes to the `outbox` table in the same
transaction, and leaves it once it was announced (`mark_announced`). A process that dies
between storing and printing finds its changes there at its next start (`unannounced`), so
nothing stored goes unannounced; one that dies between printing and that delete prints them
twice.

The control plane writes it from a worker thread, so that a slow fsync or a lock another
process holds on the file (a backup, a sqlite3 shell) never stalls the API and the scrapes on
its loop. Two locks: the database's, held while SQLite works or waits, and the alerts', held
only to change or read the views in memory; reads of what fires never wait for the disk.
"""

from __future__ import annotations

import heapq
import json
import sqlite3
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping
from itertools import islice
from pathlib import Path
from typing import Any

import orjson
import structlog
from sortedcontainers import SortedList

from orderwatch.domain.alert import (
    FIRING,
    RESOLUTION,
    RESOLVED,
    UNCONFIRMED,
    AlertChange,
    rfc3339_ms,
)
from orderwatch.domain.rules import GAP_ALERT, PAID_WITHOUT_WMS
from orderwatch.domain.stats import LabelCap
from orderwatch.durations import format_duration_ms
from orderwatch.logs import RateLimited

log = structlog.get_logger()

DB_NAME = "alerts.db"
DEFAULT_RETENTION_MS = 7 * 86_400_000
RECENT_ONE_SHOTS = 500
_PRUNE_EVERY_MS = 600_000  # prune when the event-time high-water moved this far

_SCHEMA = """
CREATE TABLE IF NOT EXISTS instances (
    fingerprint TEXT NOT NULL,
    starts_at   INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('firing', 'resolved', 'once')),
    ends_at     INTEGER,
    order_id    TEXT,
    labels      TEXT NOT NULL,
    annotations TEXT NOT NULL,
    PRIMARY KEY (fingerprint, starts_at)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS instances_by_state ON instances (state, starts_at);
CREATE INDEX IF NOT EXISTS instances_by_order ON instances (order_id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    process     INTEGER NOT NULL,
    fingerprint TEXT NOT NULL,
    starts_at   INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('firing', 'resolved'))
);
"""
_COLUMNS = "fingerprint, starts_at, state, ends_at, labels, annotations"

AlertKey = tuple[str, str, str]  # (alertname, rule, severity)


def _dumps(d: dict[str, str]) -> str:
    return json.dumps(d, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def _row_to_change(row: tuple[Any, ...]) -> AlertChange:
    fp, starts_at, state, ends_at, labels, annotations = row
    status = RESOLVED if state == "resolved" else FIRING
    # orjson shares the key strings of every row it reads (json.loads makes new ones each
    # time); the annotations stay the JSON they were written as, checked to be JSON, since
    # the API embeds them as they are
    notes = annotations.encode()
    orjson.loads(notes)
    return AlertChange(status, orjson.loads(labels), notes, starts_at, ends_at, fp)


def _key(alert: AlertChange) -> AlertKey:
    labels = alert.labels
    return (labels.get("alertname", ""), labels.get("rule", ""), labels.get("severity", ""))


def _shifted(entries: Iterable[tuple[int, str]], by: int) -> Iterable[tuple[int, str]]:
    return ((at - by, fp) for at, fp in entries)


class AlertStore:
    """Durable alert state: dedups changes (`apply`) and answers what is firing now."""

    def __init__(
        self,
        path: Path | None,
        *,
        retention_ms: int = DEFAULT_RETENTION_MS,
        channels: LabelCap | None = None,
        warehouses: LabelCap | None = None,
        process: int = 0,
    ) -> None:
        self.path = path
        self.retention_ms = retention_ms
        self.process = process  # of a cluster sharing this file: whose outbox rows are whose
        self._channels = channels or LabelCap(50)
        self._warehouses = warehouses or LabelCap(50)
        self._lock = threading.Lock()  # the views in memory: `_firing`, `_oldest`, counts
        self._db_lock = threading.Lock()  # the connection, and what only writing touches
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(
            ":memory:" if path is None else str(path),
            isolation_level=None,  # explicit BEGIN/COMMIT below
            check_same_thread=False,
        )
        if path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged change survives a crash
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._firing: dict[str, AlertChange] = {}
        # The firing alerts again, by (alertname, rule), oldest first, and their counts: what
        # every scrape reads, kept as they change so a scrape does not sort a storm's alerts.
        self._oldest: dict[tuple[str, str], SortedList] = {}
        self._counts: Counter[AlertKey] = Counter()
        self._recent: deque[AlertChange] = deque(maxlen=RECENT_ONE_SHOTS)
        self._fired: Counter[AlertKey] = Counter()  # effective firings since this process began
        self._leaks: Counter[tuple[str, str]] = Counter()  # paid_without_wms by channel, warehouse
        self._high_water = 0
        self._progress = 0  # the latest watermark noted (`progress`)
        self._pruned_at = 0
        self._too_old: AlertChange | None = None  # the last change `_decide` found too old
        self._too_old_n = 0
        self._too_old_log = RateLimited(log)  # one line per 10 s, whatever the flood
        self._queued = 0  # the last outbox row this store wrote
        self._claimed: list[int] = []  # outbox rows `unannounced` returned
        self._load()

    def _load(self) -> None:
        db = self._db
        for row in db.execute(f"SELECT {_COLUMNS} FROM instances WHERE state = 'firing'"):
            self._hold(_row_to_change(row))
        rows = db.execute(
            f"SELECT {_COLUMNS} FROM instances WHERE state = 'once' "
            "ORDER BY starts_at DESC, fingerprint LIMIT ?",
            (RECENT_ONE_SHOTS,),
        ).fetchall()
        self._recent.extend(_row_to_change(r) for r in reversed(rows))
        got = db.execute("SELECT value FROM meta WHERE key = 'high_water'").fetchone()
        self._high_water = self._pruned_at = got[0] if got else 0
        got = db.execute("SELECT value FROM meta WHERE key = 'progress'").fetchone()
        self._progress = got[0] if got else 0

    def close(self) -> None:
        with self._db_lock:
            self._db.close()

    def __enter__(self) -> AlertStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------------

    def apply(
        self, changes: Iterable[AlertChange], progress: int | None = None
    ) -> list[AlertChange]:
        """Record `changes`; return the effective ones, in order, once they are on disk.
        `progress`: how far the dataflow had read its input (`progress`), kept with them."""
        changes = list(changes)
        if not changes:
            return []
        with self._db_lock:
            db = self._db
            horizon = self._high_water - self.retention_ms
            high_water = max(self._high_water, max(c.at for c in changes))
            db.execute("BEGIN IMMEDIATE")
            self._too_old, self._too_old_n = None, 0  # a failed attempt's count is retried
            try:
                kept = [c for c in changes if self._decide(c, horizon)]
                for c in kept:
                    self._queued = (
                        db.execute(
                            "INSERT INTO outbox (process, fingerprint, starts_at, status) "
                            "VALUES (?, ?, ?, ?)",
                            (self.process, c.fingerprint, c.starts_at, c.status),
                        ).lastrowid
                        or self._queued
                    )
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('high_water', ?) "
                    "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (high_water,),
                )
                if progress is not None and progress > self._progress:
                    self._write_progress(progress)
                pruned = high_water - self._pruned_at >= _PRUNE_EVERY_MS
                if pruned:
                    db.execute(
                        "DELETE FROM instances WHERE state IN ('resolved', 'once') "
                        "AND starts_at < ?",  # not `!= 'firing'`: that scans the whole index
                        (high_water - self.retention_ms,),
                    )
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:  # else "cannot rollback" would hide the real error
                    db.execute("ROLLBACK")
                raise
            # Memory follows only what is committed.
            self._high_water = high_water
            if progress is not None and progress > self._progress:
                self._progress = progress
            if pruned:
                self._pruned_at = high_water
            with self._lock:
                for change in kept:
                    self._remember(change)
            if self._too_old is not None:
                self._tell_too_old()
            return kept

    def note_progress(self, watermark: int | None) -> None:
        """Keep how far the input was read (at a clean stop), so that the next start knows it
        even when no alert changed near the end."""
        if watermark is None or watermark <= self._progress:
            return
        with self._db_lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._write_progress(watermark)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:  # only a start's settling waits less: not worth failing
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                log.warning("alert_store_progress_not_kept", error=str(exc))
                return
            self._progress = watermark

    def _write_progress(self, watermark: int) -> None:
        self._db.execute(
            "INSERT INTO meta (key, value) VALUES ('progress', ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (watermark,),
        )

    def _tell_too_old(self) -> None:
        """Dropping a new alert as "announced, then pruned" is right for a replay of old input,
        and silent loss when the store's event time ran ahead of this input's (a simulator's
        clock, or a source with a wrong clock, on the same state.dir): say so, rate-limited."""
        c, n = self._too_old, self._too_old_n
        assert c is not None
        self._too_old_log.warning(
            "old_alerts_dropped",
            "alerts older than the alert store remembers dropped as announced before; if they "
            "are new, this state.dir has seen later event time (a simulator or a source with a "
            "wrong clock?): use another state.dir",
            count=n,
            rule=c.labels.get("rule", c.labels.get("alertname")),
            starts_at=rfc3339_ms(c.starts_at),
            store_event_time=rfc3339_ms(self._high_water),
            retention=format_duration_ms(self.retention_ms),
        )

    def mark_announced(self) -> None:
        """Everything `apply` and `unannounced` returned so far was announced: its outbox rows
        go now. Without waiting for the disk (a lost delete only announces them again), so
        announcing costs no second fsync per batch."""
        with self._db_lock:
            claimed, self._claimed = self._claimed, []
            if not (claimed or self._queued):
                return
            db = self._db
            try:
                db.execute("PRAGMA synchronous=NORMAL")  # WAL: this commit is not fsynced
                db.execute("BEGIN IMMEDIATE")
                db.execute(
                    "DELETE FROM outbox WHERE process = ? AND seq <= ?",
                    (self.process, self._queued),
                )
                db.executemany("DELETE FROM outbox WHERE seq = ?", [(q,) for q in claimed])
                db.execute("COMMIT")
            except sqlite3.Error as exc:  # left in the outbox: announced again at a restart
                if db.in_transaction:
                    db.execute("ROLLBACK")
                log.warning("alert_outbox_not_cleared", error=str(exc))
            finally:
                db.execute("PRAGMA synchronous=FULL")  # an acknowledged change survives a crash

    def unannounced(self, processes: int = 1) -> list[AlertChange]:
        """Changes stored but not announced before the last stop (a crash between the two),
        in the order they were stored; `mark_announced` once they are. Process 0 also takes
        those of processes beyond `processes` (the cluster is smaller now)."""
        with self._db_lock:
            rows = self._db.execute(
                "SELECT o.seq, o.status, i.fingerprint, i.starts_at, i.state, i.ends_at, "
                "i.labels, i.annotations FROM outbox o LEFT JOIN instances i "
                "ON i.fingerprint = o.fingerprint AND i.starts_at = o.starts_at "
                "WHERE o.process = ? OR (? AND o.process >= ?) ORDER BY o.seq",
                (self.process, self.process == 0, processes),
            ).fetchall()
        out = []
        for _, status, *instance in rows:
            if instance[0] is None:
                continue  # pruned since: too old to announce now
            change = _row_to_change(tuple(instance))
            if status == FIRING and change.status == RESOLVED:  # it resolved since
                notes = {k: v for k, v in change.annotations.items() if k != RESOLUTION}
                change = AlertChange(FIRING, change.labels, notes, change.starts_at, None)
            out.append(change)
        with self._db_lock:
            self._claimed += [r[0] for r in rows]
        return out

    def retire(self, could_fire: Callable[[dict[str, str]], bool]) -> list[AlertChange]:
        """Resolve the firing alerts the running rules could not have fired (a rule removed,
        its severity changed or its filter narrowed since): nothing else would ever end them.
        They end at the latest event time the store has seen; returns those resolutions."""
        ended = [
            alert.resolved(self._high_water, **{RESOLUTION: "its rule is no longer configured"})
            for alert in self.firing()
            if not could_fire(alert.labels)
        ]
        return self.apply(ended)

    def _decide(self, c: AlertChange, horizon: int) -> bool:
        """Is `c` news? Writes the instance's new state inside the open transaction."""
        db = self._db
        row = db.execute(
            "SELECT state FROM instances WHERE fingerprint = ? AND starts_at = ?",
            (c.fingerprint, c.starts_at),
        ).fetchone()
        if c.status == RESOLVED:
            if row is not None:
                if row[0] != "firing":
                    return False
                db.execute(
                    "UPDATE instances SET state = 'resolved', ends_at = ?, annotations = ? "
                    "WHERE fingerprint = ? AND starts_at = ?",
                    (c.ends_at, c.annotations_json.decode(), c.fingerprint, c.starts_at),
                )
                return True
        elif row is not None:
            # already announced (firing, resolved or one-shot), unless it ended as unconfirmed
            return row[0] == "resolved" and not c.one_shot and self._reopens(c)
        if c.starts_at < horizon:  # older than what we remember: seen before, then pruned
            self._too_old, self._too_old_n = c, self._too_old_n + 1
            return False
        if c.status == FIRING and not c.one_shot:
            # One fingerprint fires at most once at a time. `+state` keeps the planner off the
            # state index, which would walk every firing instance: O(firing) per new alert.
            db.execute(
                "UPDATE instances SET state = 'resolved', ends_at = ? "
                "WHERE fingerprint = ? AND +state = 'firing'",
                (c.starts_at, c.fingerprint),
            )
        state = "once" if c.one_shot else ("firing" if c.status == FIRING else "resolved")
        db.execute(
            f"INSERT INTO instances ({_COLUMNS}, order_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                c.fingerprint,
                c.starts_at,
                state,
                c.ends_at,
                _dumps(c.labels),
                c.annotations_json.decode(),
                c.labels.get("order_id"),
            ),
        )
        return True

    def _reopens(self, c: AlertChange) -> bool:
        """Fire `c` again if its instance was ended as unconfirmed after a restart (`UNCONFIRMED`)
        and this run raises it after all: a late event raised it only once the watermark had
        passed its start. Not while another instance of its fingerprint fires."""
        db = self._db
        # the database, not `_firing`: that view follows only once this batch is committed,
        # and the batch may hold the unconfirmed end itself
        if db.execute(
            "SELECT 1 FROM instances WHERE fingerprint = ? AND +state = 'firing'", (c.fingerprint,)
        ).fetchone():
            return False
        (notes,) = db.execute(
            "SELECT annotations FROM instances WHERE fingerprint = ? AND starts_at = ?",
            (c.fingerprint, c.starts_at),
        ).fetchone()
        if orjson.loads(notes).get(RESOLUTION) != UNCONFIRMED:
            return False
        db.execute(
            "UPDATE instances SET state = 'firing', ends_at = NULL, annotations = ? "
            "WHERE fingerprint = ? AND starts_at = ?",
            (c.annotations_json.decode(), c.fingerprint, c.starts_at),
        )
        return True

    def _remember(self, c: AlertChange) -> None:
        if c.status == RESOLVED:
            current = self._firing.get(c.fingerprint)
            if current is not None and current.starts_at == c.starts_at:
                del self._firing[c.fingerprint]
                self._unindex(current)
            return
        self._fired[_key(c)] += 1
        if c.one_shot:
            self._recent.append(c)
            return
        self._hold(c)
        labels = c.labels
        if labels.get("alertname") == GAP_ALERT and labels.get("rule") == PAID_WITHOUT_WMS:
            where = (
                self._channels(labels.get("channel")),
                self._warehouses(labels.get("warehouse")),
            )
            self._leaks[where] += 1

    def _hold(self, c: AlertChange) -> None:
        """`c` fires now, in place of any other instance of its fingerprint."""
        superseded = self._firing.get(c.fingerprint)
        if superseded is not None:
            self._unindex(superseded)
        self._firing[c.fingerprint] = c
        labels = c.labels
        where = (labels.get("alertname", ""), labels.get("rule", ""))
        oldest = self._oldest.get(where)
        if oldest is None:
            oldest = self._oldest[where] = SortedList()
        oldest.add((c.starts_at, c.fingerprint))
        self._counts[_key(c)] += 1

    def _unindex(self, c: AlertChange) -> None:
        labels = c.labels
        where = (labels.get("alertname", ""), labels.get("rule", ""))
        self._oldest[where].remove((c.starts_at, c.fingerprint))
        key = _key(c)
        self._counts[key] -= 1
        if not self._counts[key]:
            del self._counts[key]

    # --- reading -------------------------------------------------------------------------------

    @property
    def progress(self) -> int:
        """How far in event time the runs that wrote this store had got: the latest of the
        changes stored and of the watermarks noted with them (`apply`, `note_progress`)."""
        return max(self._high_water, self._progress)

    def firing(self) -> list[AlertChange]:
        """Alerts firing now (one-shot anomalies excluded), oldest first."""
        with self._lock:
            alerts = list(self._firing.values())
        alerts.sort(key=lambda a: (a.starts_at, a.fingerprint))
        return alerts

    def recent_one_shots(self, limit: int = 100) -> list[AlertChange]:
        """The latest one-shot anomalies (at most `RECENT_ONE_SHOTS` kept), newest first."""
        with self._lock:
            recent = list(self._recent)
        recent.sort(key=lambda a: (a.starts_at, a.fingerprint), reverse=True)
        return recent[: max(limit, 0)]

    def oldest(
        self,
        alertname: str,
        rule: str | None = None,
        limit: int | None = None,
        shift: Mapping[str, int] | None = None,
    ) -> list[AlertChange]:
        """Firing alerts named `alertname` (of one `rule` if given), oldest `starts_at` first
        (then by fingerprint), at most `limit`: the cost of what is returned, not of all that
        fires. `shift` orders by `starts_at` less each rule's amount instead (e.g. its window:
        when the order's clock started)."""
        with self._lock:
            lists = {r: v for (name, r), v in self._oldest.items() if name == alertname}
            if rule is not None:
                lists = {rule: lists[rule]} if rule in lists else {}
            runs: list[Iterable[tuple[int, str]]] = [
                _shifted(v, shift.get(r, 0)) if shift else v for r, v in lists.items()
            ]
            entries = runs[0] if len(runs) == 1 else heapq.merge(*runs)
            first = islice(entries, None if limit is None else max(limit, 0))
            return [self._firing[fp] for _, fp in first]

    def firing_count(self, alertname: str, rule: str | None = None) -> int:
        """How many alerts named `alertname` (of one `rule` if given) fire now."""
        with self._lock:
            return sum(
                len(v)
                for (name, r), v in self._oldest.items()
                if name == alertname and rule in (None, r)
            )

    def counts(self) -> dict[AlertKey, int]:
        """Firing alerts by (alertname, rule, severity)."""
        with self._lock:
            return dict(self._counts)

    def fired(self) -> dict[AlertKey, int]:
        """Effective firings (one-shots included) applied since this process started."""
        with self._lock:
            return dict(self._fired)

    def leaks(self) -> dict[tuple[str, str], int]:
        """`paid_without_wms` firings applied since this process started, by channel, warehouse."""
        with self._lock:
            return dict(self._leaks)

    def for_order(self, order_id: str) -> list[AlertChange]:
        """Every remembered instance about one order (firing, resolved, one-shot), oldest first."""
        with self._db_lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM instances WHERE order_id = ? "
                "ORDER BY starts_at, fingerprint",
                (order_id,),
            ).fetchall()
        return [_row_to_change(r) for r in rows]
