"""The watermark of CONTRACT §3: largest event time seen minus the allowed lateness.

With several sources, a source still reading its backlog holds it at its own newest event
(minus the lateness): a sparse source (payments, one line an order) races ahead of a dense one
(orders, five) through the same hour on disk, and the largest event time of all would have
fired every deadline the dense one's events were still to settle. A source read to its end,
or silent for `idle_after`, holds nothing (as Flink leaves idle partitions out of the minimum).
A source not heard from yet holds it still, for `idle_after` from the start (`expect`).

Live, when no input arrived for `idle_after`, the watermark moves on with the wall clock
from the moment input stopped, so deadlines still fire on a quiet night; while input keeps
arriving (a backlog), event time alone drives it. At the end of a finite input it becomes
the largest event time. Wall time is passed in, never read here.

A resumed clock keeps the wall time of its last input: once the resumed daemon has had
`idle_after` to read a backlog and found none, the quiet spell counts from that input, the
time before the stop and the downtime included, as if the daemon had never stopped.
"""

from __future__ import annotations

from collections.abc import Collection


class WatermarkClock:
    __slots__ = (
        "_carry",
        "_idle_after",
        "_last_input",
        "_lateness",
        "_newest",
        "_pending",
        "_seen",
        "_started",
        "_stopped_input",
        "_written",
        "max_ts",
        "value",
    )

    def __init__(self, lateness_ms: int, idle_after_ms: int | None = None) -> None:
        self._lateness = lateness_ms
        self._idle_after = idle_after_ms  # None: replay, event time only
        self._last_input: int | None = None  # wall ms of the last input seen
        # resumed: wall ms of the last input before the stop, until the first observe turns it
        # into `_carry`, the quiet time before the restart added to a quiet spell (0: none)
        self._stopped_input: int | None = None
        self._carry = 0
        # per source: its last write, if its last input read it to its end; None: still reading
        self._written: dict[str | None, int | None] = {}
        self._newest: dict[str | None, int] = {}  # per source: its largest event time
        self._seen: dict[str | None, int] = {}  # per source: wall ms of its last input
        self._pending: set[str | None] = set()  # sources expected, not heard from yet
        self._started: int | None = None  # wall ms of `start`
        self.max_ts: int | None = None
        self.value: int | None = None

    @property
    def live(self) -> bool:
        """False in a replay: event time only, never the wall clock."""
        return self._idle_after is not None

    def observe(
        self,
        max_ts: int | None,
        wall_ms: int,
        written_ms: int | None = None,
        source: str | None = None,
    ) -> None:
        """Input from `source` arrived at `wall_ms`; `max_ts` is the largest event time in it
        (if any); `written_ms`: when the source was last written, if this input read it to its
        end.

        A backlog read at start (a restart, or a file written before the daemon came up) was
        counted as arriving when it was read: its quiet spell, and every deadline after its
        newest event, came that much late (a file last written 2 h before a restart: alerts
        2 h late). The input went quiet at the last write of any of its sources, once every
        source that has sent input has been read to its end: while one is still reading its
        backlog (behind in event time, so it moves nothing), its events may yet settle what
        the others' deadlines would fire.

        Only input that moves event time on ends an idle spell. A rejected line, or an event
        behind the newest one, used to restart the idle clock without moving event time: the
        watermark fell back by the whole quiet spell (an hour's quiet and one bad line held
        every deadline an hour more), and such lines trickling in held it still.
        """
        written = self._written
        written[source] = written_ms
        self._seen[source] = wall_ms
        self._pending.discard(source)
        if max_ts is not None and max_ts > self._newest.get(source, max_ts - 1):
            self._newest[source] = max_ts
        if max_ts is not None and (self.max_ts is None or max_ts > self.max_ts):
            self.value = self.peek(wall_ms)  # what the quiet spell reached stays reached
            self.max_ts = max_ts
            self._last_input = wall_ms
            self._carry = 0  # a resumed spell ends; the sources' writes say the rest
        elif self._last_input is None:
            self.start(wall_ms)

    def expect(self, sources: Collection[str | None]) -> None:
        """Live, with several sources: wait for each to send input (or `idle_after` from the
        start) before moving on: a backlog's first chunk of one source came ahead of another's,
        and the watermark had passed what the other was about to read."""
        if len(sources) > 1:
            self._pending = set(sources) - self._seen.keys()

    def start(self, wall_ms: int) -> None:
        """Started (or resumed): the idle clock runs from here, and from before a restart."""
        self._started = wall_ms
        if self._last_input is None:
            self._last_input = wall_ms
            if self._stopped_input is not None:
                self._carry = max(0, wall_ms - self._stopped_input)
                self._stopped_input = None

    def _quiet_carry(self) -> int:
        """How long before the last input the input had been quiet already: since the stop
        before a resume, or since the sources' newest write once each is read to its end."""
        last = self._last_input
        return 0 if last is None else max(self._carry, self._quiet_before(last))

    def _quiet_before(self, wall_ms: int) -> int:
        """How long before `wall_ms` every source had been quiet (0 while one still reads,
        or before any has said)."""
        last = None
        for written in self._written.values():
            if written is None:
                return 0
            last = written if last is None else max(last, written)
        return 0 if last is None else max(0, wall_ms - last)

    def current(self, wall_ms: int) -> int | None:
        """The watermark now (never moves back)."""
        self.value = self.peek(wall_ms)
        return self.value

    def peek(self, wall_ms: int) -> int | None:
        """What `current` would say, without moving the watermark (for readers elsewhere)."""
        if self.max_ts is None or self._waiting(wall_ms):
            return self.value
        held = self._held(wall_ms)
        if held is not None:  # a backlog is being read: event time alone drives it
            w = held - self._lateness
        else:
            w = self.max_ts - self._lateness
            idle = self._idle_for(wall_ms)
            if idle is not None and idle >= self._idle_after:  # type: ignore[operator]
                w += idle + self._quiet_carry()
        value = self.value
        return w if value is None or w > value else value

    def _held(self, wall_ms: int | None) -> int | None:
        """The newest event of the slowest source still reading its backlog, if that is
        behind the others (None: no source holds the watermark back)."""
        return min((newest for _, newest in self._holding(wall_ms)), default=None)

    def _waiting(self, wall_ms: int) -> bool:
        """A source expected has not been heard from, and it is not `idle_after` since start."""
        if not self._pending or self._idle_after is None or self._started is None:
            return False
        if wall_ms - self._started < self._idle_after:
            return True
        self._pending.clear()  # silent since the start: an input with nothing to read
        return False

    def _holding(self, wall_ms: int | None) -> list[tuple[str | None, int]]:
        """`(source, newest event)` of each source still reading a backlog, behind the
        newest event of all; a source silent for `idle_after` mid-backlog (an unreadable
        file) holds nothing."""
        top, idle_after, seen, written = self.max_ts, self._idle_after, self._seen, self._written
        if top is None:
            return []
        return [
            (source, newest)
            for source, newest in self._newest.items()
            if newest < top
            and written[source] is None
            and (wall_ms is None or idle_after is None or wall_ms - seen[source] < idle_after)
        ]

    def read_to(self) -> int | None:
        """The watermark of the input read so far, without the idle clock's advance."""
        if self.max_ts is None:
            return None
        held = self._held(None)
        return (self.max_ts if held is None else held) - self._lateness

    def final(self) -> int | None:
        """End of a finite input: deadlines at or before the largest event time fire."""
        if self.max_ts is not None and (self.value is None or self.max_ts > self.value):
            self.value = self.max_ts
        return self.value

    def wake_at(self, wall_ms: int, next_due: int | None) -> int | None:
        """Wall ms at which the idle watermark reaches `next_due` (live only)."""
        idle = self._idle_for(wall_ms)
        if idle is None or self._last_input is None or self.max_ts is None:
            return None
        assert self._idle_after is not None
        if self._waiting(wall_ms):
            return self._started + self._idle_after  # type: ignore[operator]
        holding = self._holding(wall_ms)
        if holding:  # their input moves it on; or wake when they would have fallen silent
            return min(self._seen[source] for source, _ in holding) + self._idle_after
        if idle < self._idle_after:
            return self._last_input + self._idle_after
        if next_due is None:
            return None
        # current() = max_ts - lateness + (wall - last_input) + carry, and never moves back.
        carry = self._quiet_carry()
        due_wall = next_due - self.max_ts + self._lateness + self._last_input - carry
        return max(wall_ms + 1, due_wall)

    def _idle_for(self, wall_ms: int) -> int | None:
        if self._idle_after is None or self._last_input is None:
            return None
        return max(0, wall_ms - self._last_input)

    def __getstate__(self) -> tuple[int | None, ...]:
        last = self._last_input
        if last is not None:  # still quiet: keep when it went quiet (a first stop's, say)
            last -= self._quiet_carry()
        else:
            last = self._stopped_input
        return (self._lateness, self._idle_after, self.max_ts, self.value, last)

    def __setstate__(self, state: tuple[int | None, ...]) -> None:
        self._lateness, self._idle_after, self.max_ts, self.value, stopped = state  # type: ignore[assignment]
        self._last_input, self._stopped_input, self._carry = None, stopped, 0
        # the sources say again, as they are read from where they stopped
        self._written, self._newest, self._seen = {}, {}, {}
        self._pending, self._started = set(), None
