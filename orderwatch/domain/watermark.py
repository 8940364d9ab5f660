"""The watermark of CONTRACT §3: largest event time seen minus the allowed lateness.

Live, when no input arrived for `idle_after`, the watermark moves on with the wall clock
from the moment input stopped, so deadlines still fire on a quiet night; while input keeps
arriving (a backlog), event time alone drives it. At the end of a finite input it becomes
the largest event time. Wall time is passed in, never read here.

A resumed clock keeps the wall time of its last input: once the resumed daemon has had
`idle_after` to read a backlog and found none, the quiet spell counts from that input, the
time before the stop and the downtime included, as if the daemon had never stopped.
"""

from __future__ import annotations


class WatermarkClock:
    __slots__ = (
        "_carry",
        "_idle_after",
        "_last_input",
        "_lateness",
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
        changed = written.get(source) != written_ms  # (a source without writes never changes)
        written[source] = written_ms
        if max_ts is not None and (self.max_ts is None or max_ts > self.max_ts):
            self.value = self.peek(wall_ms)  # what the quiet spell reached stays reached
            self.max_ts = max_ts
            self._last_input = wall_ms
            self._carry = self._quiet_before(wall_ms)
        elif self._last_input is None:
            self.start(wall_ms)
        elif changed:  # a source behind the others read to its end, or reading again
            self._carry = self._quiet_before(self._last_input)

    def start(self, wall_ms: int) -> None:
        """Started (or resumed): the idle clock runs from here, and from before a restart."""
        if self._last_input is None:
            self._last_input = wall_ms
            if self._stopped_input is not None:
                self._carry = max(0, wall_ms - self._stopped_input)
                self._stopped_input = None

    def _quiet_before(self, wall_ms: int) -> int:
        """How long before `wall_ms` every source had been quiet (0 while one still reads)."""
        last = 0
        for written in self._written.values():
            if written is None:
                return 0
            last = max(last, written)
        return max(0, wall_ms - last)

    def current(self, wall_ms: int) -> int | None:
        """The watermark now (never moves back)."""
        self.value = self.peek(wall_ms)
        return self.value

    def peek(self, wall_ms: int) -> int | None:
        """What `current` would say, without moving the watermark (for readers elsewhere)."""
        if self.max_ts is None:
            return self.value
        w = self.max_ts - self._lateness
        idle = self._idle_for(wall_ms)
        if idle is not None and idle >= self._idle_after:  # type: ignore[operator]
            w += idle + self._carry
        value = self.value
        return w if value is None or w > value else value

    def read_to(self) -> int | None:
        """The watermark of the input read so far, without the idle clock's advance."""
        return None if self.max_ts is None else self.max_ts - self._lateness

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
        if idle < self._idle_after:
            return self._last_input + self._idle_after
        if next_due is None:
            return None
        # current() = max_ts - lateness + (wall - last_input) + carry, and never moves back.
        due_wall = next_due - self.max_ts + self._lateness + self._last_input - self._carry
        return max(wall_ms + 1, due_wall)

    def _idle_for(self, wall_ms: int) -> int | None:
        if self._idle_after is None or self._last_input is None:
            return None
        return max(0, wall_ms - self._last_input)

    def __getstate__(self) -> tuple[int | None, ...]:
        last = self._last_input
        if last is not None and self._carry:  # resumed and still quiet: keep the first stop's
            last -= self._carry
        elif last is None:
            last = self._stopped_input
        return (self._lateness, self._idle_after, self.max_ts, self.value, last)

    def __setstate__(self, state: tuple[int | None, ...]) -> None:
        self._lateness, self._idle_after, self.max_ts, self.value, stopped = state  # type: ignore[assignment]
        self._last_input, self._stopped_input, self._carry = None, stopped, 0
        self._written = {}  # the sources say again, as they are read from where they stopped
