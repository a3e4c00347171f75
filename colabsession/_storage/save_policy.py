"""When a :class:`~colabsession.Checkpointer` saves: the save-decision policy.

A save is due when one of these holds:

- the first time a run is given to ``maybe_save`` in a session with nothing saved or restored yet
  (a run killed before its first interval ended would otherwise start over from nothing);
- ``every`` has passed since the last save; while the session's run is young the wait is
  shorter, as long as the run had gone on at the last save, at least :data:`FIRST_INTERVAL`
  (30 s, 30 s, 1 min, 2 min, 4 min, ... up to ``every``), so that a short run loses at most
  about half of what it did, a long one at most ``every``;
- ``every_steps`` steps have passed since the last save;
- the session's deadline is nearer than :attr:`SavePolicy.margin`, or a stop was asked for
  (SIGTERM, Ctrl-C inside a loop that knows its step boundaries): the final save.

>>> policy = SavePolicy(every=600.0, every_steps=None, margin_floor=60.0, clock=SessionClock())
>>> policy.interval_due(step=0, now=time.monotonic())   # nothing saved yet: at once
True
"""

from __future__ import annotations

import time
from collections.abc import Callable

from colabsession._runtime.clock import SessionClock

FIRST_INTERVAL = 30.0  # the shortest wait between two time-based saves of a young run
SAFETY = 3.0  # the deadline margin covers this many times the slowest recent save


class SavePolicy:
    """The state that decides saves: when the last one was, how long saves and steps take,
    and whether a stop was asked for. *monotonic* is the clock for intervals (tests pass a
    fake); *clock* the session's, for the deadline."""

    def __init__(
        self,
        *,
        every: float | None,
        every_steps: int | None,
        margin_floor: float,
        clock: SessionClock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.every, self.every_steps, self.margin_floor = every, every_steps, margin_floor
        self.clock = clock
        self.monotonic = monotonic
        self.last_saved_step: int | None = None
        self.last_save_at: float | None = None  # None: nothing saved or restored this session
        self.started: float | None = None  # the first step seen
        self.save_seconds: list[float] = []
        self.step_seconds = 0.0
        self.stop_asked = False
        self.stop_reason = "SIGTERM received"
        self._last_step_at: float | None = None

    def step_seen(self, now: float) -> None:
        """A step ended at *now* (``maybe_save`` was called): its duration feeds the margin."""
        if self._last_step_at is not None:
            self.step_seconds = 0.8 * self.step_seconds + 0.2 * (now - self._last_step_at)
        else:
            self.started = now
        self._last_step_at = now

    def saved(self, step: int, now: float) -> None:
        if self.started is None:  # saves driven by due() and save() alone, as cs.hf's
            self.started = now
        self.last_saved_step, self.last_save_at = step, now

    def restored(self, step: int | None) -> None:
        """The run resumes from *step* (None: from nothing): the next interval counts from now."""
        self.last_saved_step = step
        self.last_save_at = None if step is None else self.monotonic()

    def took(self, seconds: float) -> None:
        """A save took *seconds* (to the local disk): the margin grows with slow saves."""
        self.save_seconds.append(seconds)
        del self.save_seconds[:-5]

    def request_stop(self, why: str) -> None:
        """Save at the next step boundary and stop; safe in a signal handler (two stores)."""
        self.stop_reason = why
        self.stop_asked = True

    @property
    def margin(self) -> float:
        """Seconds before the deadline at which the final save starts: the floor, or the
        slowest recent save times a safety factor plus two steps, whichever is more."""
        slowest = max(self.save_seconds, default=0.0)
        return max(self.margin_floor, SAFETY * slowest + 2 * self.step_seconds)

    def final_due(self) -> bool:
        return self.stop_asked or self.clock.remaining <= self.margin

    def interval(self) -> float | None:
        """The wait from the last save to the next time-based one (None: none are made)."""
        if self.every is None:
            return None
        if self.last_save_at is None:
            return 0.0
        run = 0.0 if self.started is None else self.last_save_at - self.started
        young = max(FIRST_INTERVAL, run)
        return min(self.every, young)

    def interval_due(self, step: int, now: float) -> bool:
        last = self.last_saved_step if self.last_saved_step is not None else -1
        if self.every_steps is not None and step - last >= self.every_steps:
            return True
        wait = self.interval()
        if wait is None:
            return False
        return self.last_save_at is None or now - self.last_save_at >= wait
