"""LoopClock: host time per step and the device-idle gap, on a fake clock and fake steps (no timing)."""

from __future__ import annotations

import pytest

from surge.engine.loop_clock import LoopClock


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class FakeStep:
    """A dispatched step that the test finishes by hand; result() 'blocks' by moving the clock to its end."""

    def __init__(self, clock, ends_at):
        self.clock, self.ends_at = clock, ends_at

    def is_ready(self):
        return self.clock.now >= self.ends_at

    def result(self):
        self.clock.now = max(self.clock.now, self.ends_at)
        return "ids"


def test_serial_loop_gap_is_the_host_work_between_steps():
    clock = FakeClock()
    loop = LoopClock(clock)
    for step in range(3):  # each step: 2 s of host work, dispatch, a 10 s device step waited on, 1 s more host work
        loop.start_step()
        clock.now += 2.0
        loop.before_dispatch()
        pending = FakeStep(clock, clock.now + 10.0)
        loop.dispatched(pending)
        assert loop.wait(pending) == "ids"
        clock.now += 1.0
        loop.end_step(busy=True)
    assert loop.host_seconds == pytest.approx(9.0)
    assert loop.wait_seconds == pytest.approx(30.0)
    # The device idles from each step's end to the next dispatch: 1 s + 2 s, twice (the first dispatch has no
    # step before it).
    assert loop.num_gaps == 2 and loop.idle_seconds == pytest.approx(6.0)


def test_async_loop_with_the_next_step_queued_has_no_gap():
    clock = FakeClock()
    loop = LoopClock(clock)
    in_flight = None
    device_free_at = 0.0
    for step in range(4):  # dispatch N+1 (queued behind N), then wait for N; host work is shorter than a step
        loop.start_step()
        clock.now += 2.0
        loop.before_dispatch()
        device_free_at = max(device_free_at, clock.now) + 10.0
        pending = FakeStep(clock, device_free_at)
        loop.dispatched(pending)
        if in_flight is not None:
            loop.wait(in_flight)
        in_flight = pending
        clock.now += 1.0
        loop.end_step(busy=True)
    assert loop.num_gaps == 3 and loop.idle_seconds == 0.0
    assert loop.host_seconds == pytest.approx(12.0)


def test_a_step_that_ended_unseen_counts_the_longest_gap_it_can_have_been():
    clock = FakeClock()
    loop = LoopClock(clock)
    loop.start_step()
    first = FakeStep(clock, 5.0)
    loop.dispatched(first)  # seen running at 0
    loop.end_step(busy=True)
    clock.now = 3.0
    loop.start_step()  # still running at 3: seen running
    clock.now = 8.0  # it ended at 5, unobserved
    loop.dispatched(FakeStep(clock, 20.0))
    assert loop.idle_seconds == pytest.approx(5.0)  # 8 - 3: at most this long, never less than 8 - 5
    loop.end_step(busy=True)


def test_an_empty_engine_starts_a_new_busy_period():
    clock = FakeClock()
    loop = LoopClock(clock)
    loop.start_step()
    pending = FakeStep(clock, 1.0)
    loop.dispatched(pending)
    loop.wait(pending)
    loop.end_step(busy=False)  # no request left
    clock.now = 100.0  # a user arrives much later
    loop.start_step()
    loop.dispatched(FakeStep(clock, 101.0))
    loop.end_step(busy=True)
    assert loop.num_gaps == 0 and loop.idle_seconds == 0.0


def test_loop_clock_gives_each_steps_device_seconds():
    clock = FakeClock()
    loop = LoopClock(clock)
    # Serial: dispatch at 2, the step ends at 12.
    loop.start_step()
    clock.now = 2.0
    first = FakeStep(clock, 12.0)
    loop.dispatched(first)
    loop.wait(first)
    assert loop.last_step_seconds == pytest.approx(10.0)
    clock.now = 13.0
    loop.end_step(busy=True)
    assert loop.last_host_seconds == pytest.approx(3.0)
    # Async: the second is dispatched at 14, the third at 15, queued behind it; the second ends at 20, the
    # third at 27 (7 s from the second's end, not from its own dispatch).
    loop.start_step()
    clock.now = 14.0
    second = FakeStep(clock, 20.0)
    loop.dispatched(second)
    clock.now = 15.0
    third = FakeStep(clock, 27.0)
    loop.dispatched(third)
    loop.wait(second)
    assert loop.last_step_seconds == pytest.approx(6.0)
    loop.wait(third)
    assert loop.last_step_seconds == pytest.approx(7.0)
    # A step already done when waited on: an upper bound (from the previous end to the wait).
    fourth = FakeStep(clock, 28.0)
    loop.dispatched(fourth)
    clock.now = 30.0
    loop.wait(fourth)
    assert loop.last_step_seconds == pytest.approx(3.0)
