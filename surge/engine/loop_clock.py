"""How the engine loop spends its time: host work per step and the device's idle gap between steps.

In: the engine's calls around each `step()` — `start_step`, `dispatched(pending)` right after a step was
handed to the device, `wait(pending)` around fetching a step's ids, `end_step` — and, for any dispatched
step, whether its outputs are ready (`pending.is_ready()`, which never blocks). Out: running totals that
`Engine.stats()` reports (as `EngineStats.step_host_seconds`, `step_device_wait_seconds`, `device_idle_seconds`):

- `host_seconds`: time inside `step()` not spent blocked on the device (scheduling, building inputs,
  reconciling, detokenizing, stop strings, outputs);
- `wait_seconds`: time `step()` spent blocked on a step's results;
- `idle_seconds`: for each step dispatched while the previous one existed, how long the device sat with
  nothing queued: from the previous step's end to this dispatch. When the previous step is still running at
  the dispatch the gap is 0 (the device has the next step queued). When the host blocked on it, its end is
  when the wait returned. Otherwise it ended at some moment after it was last seen running, and the gap
  counted is the longest it can have been (an upper bound, never an under-count).

For the speculative cost model (surge.spec_decode.step_cost), two per-step figures too:
`last_step_seconds`, after `wait`, the device seconds of the step just waited on: from when it could start
(its dispatch, or the end of the step before it) to when the wait returned — exact when the wait blocked,
an upper bound when the step was already done (a device faster than the host); and `last_host_seconds`,
after `end_step`, that step's host seconds.

The gap is only counted between steps of one busy period: after a step that leaves no request in the
engine, the next dispatch starts afresh (a device waiting for users is not loop overhead).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional


@dataclass
class _Dispatched:
    pending: object
    seen_running_at: float  # the last time its outputs were seen not ready
    done_at: Optional[float] = None  # when a wait on it returned, if the host had to block


class LoopClock:
    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self.host_seconds = 0.0
        self.wait_seconds = 0.0
        self.idle_seconds = 0.0
        self.num_gaps = 0  # dispatches that followed another step of the same busy period
        self._step_started: Optional[float] = None
        self._step_waited = 0.0
        self._last: Optional[_Dispatched] = None
        self._dispatched_at: dict[int, float] = {}  # id(pending) -> dispatch time, until waited on
        self._previous_end: Optional[float] = None  # the latest known (or latest possible) end of a waited step
        self.last_step_seconds: Optional[float] = None
        self.last_host_seconds = 0.0

    def start_step(self) -> None:
        now = self._clock()
        self._step_started, self._step_waited = now, 0.0
        self._observe(now)

    def before_dispatch(self) -> None:
        self._observe(self._clock())

    def dispatched(self, pending) -> None:
        """`pending` was just handed to the device: count the gap since the step before it ended."""
        now = self._clock()
        previous = self._last
        if previous is not None:
            if previous.done_at is not None:
                gap = now - previous.done_at
            elif previous.pending.is_ready():
                gap = now - previous.seen_running_at
            else:
                gap = 0.0
            self.idle_seconds += max(gap, 0.0)
            self.num_gaps += 1
        self._last = _Dispatched(pending, seen_running_at=now)
        self._dispatched_at[id(pending)] = now

    def wait(self, pending):
        """`pending.result()`, timed; a wait that had to block dates the end of that step."""
        started = self._clock()
        was_ready = pending.is_ready()
        result = pending.result()
        ended = self._clock()
        self._step_waited += ended - started
        self.wait_seconds += ended - started
        if self._last is not None and self._last.pending is pending and not was_ready:
            self._last.done_at = ended
        dispatched_at = self._dispatched_at.pop(id(pending), None)
        self.last_step_seconds = None
        if dispatched_at is not None:
            could_start = dispatched_at if self._previous_end is None else max(dispatched_at, self._previous_end)
            self.last_step_seconds = max(ended - could_start, 0.0)
        self._previous_end = started if was_ready else ended
        self._observe(ended)
        return result

    def count_wait(self, seconds: float) -> None:
        """A wait timed on another clock (a data-parallel replica's) that this step spent blocked."""
        self._step_waited += seconds
        self.wait_seconds += seconds

    def end_step(self, busy: bool) -> None:
        """Close the step; `busy` is False when no request is left (the next dispatch opens a new period)."""
        if self._step_started is not None:
            self.last_host_seconds = self._clock() - self._step_started - self._step_waited
            self.host_seconds += self.last_host_seconds
            self._step_started = None
        if not busy:
            self._last = None
            self._previous_end = None

    def _observe(self, now: float) -> None:
        last = self._last
        if last is not None and last.done_at is None and not last.pending.is_ready():
            last.seen_running_at = now


__all__ = ["LoopClock"]
