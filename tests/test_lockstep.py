"""surge.parallel.lockstep on one process: the keep-alive process 0 sends while idle, and the followers'
loop skipping it (the two-process runs are in tests/test_multihost.py)."""

import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from surge.parallel.lockstep import KEEP_ALIVE, STEP, STOP, StepBroadcast, follow


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def _broadcast(clock, keep_alive_s=60.0):
    return StepBroadcast(Mesh(np.array(jax.devices()[:1]), ("tp",)), keep_alive_s=keep_alive_s, clock=clock)


def test_keep_alive_is_sent_only_after_keep_alive_s_without_a_broadcast(monkeypatch):
    clock = FakeClock()
    broadcast = _broadcast(clock)
    sent = []
    real = broadcast._broadcast
    monkeypatch.setattr(broadcast, "_broadcast", lambda arrays: sent.append(np.asarray(arrays[0])) or real(arrays))
    clock.now += 59.0
    assert not broadcast.keep_alive() and sent == []
    clock.now += 1.0
    assert broadcast.keep_alive()
    assert sent[0].tolist() == [KEEP_ALIVE, 0, 0]
    assert not broadcast.keep_alive()  # the keep-alive itself counts as a broadcast
    (global_buffer,) = broadcast.send_step((8, 1), (np.arange(4, dtype=np.int32),))
    assert sent[1].tolist() == [STEP, 8, 1] and np.asarray(global_buffer).tolist() == [0, 1, 2, 3]
    clock.now += 59.0
    assert not broadcast.keep_alive()
    broadcast.send_stop()
    clock.now += 600.0
    assert not broadcast.keep_alive()  # nothing after the stop
    assert sent[-1].tolist() == [STOP, 0, 0]


def test_keep_alive_s_must_be_positive():
    with pytest.raises(ValueError, match="keep_alive_s must be > 0"):
        _broadcast(FakeClock(), keep_alive_s=0)


class ScriptedBroadcast:
    """What a follower receives: a fixed list of headers."""

    def __init__(self, headers):
        self.headers = list(headers)

    def receive_header(self):
        command, *key = self.headers.pop(0)
        return command, tuple(key)

    def receive_buffers(self, shapes):
        return tuple(np.zeros(shape, dtype) for shape, dtype in shapes)


def test_follow_skips_keep_alives_and_runs_every_step_until_stop():
    broadcast = ScriptedBroadcast([(KEEP_ALIVE, 0, 0), (STEP, 8, 1), (KEEP_ALIVE, 0, 0), (KEEP_ALIVE, 0, 0),
                                   (STEP, 16, 2), (STOP, 0, 0), (STEP, 8, 1)])
    ran = []
    num_steps = follow(broadcast, lambda key, buffers: ran.append((key, buffers[0].shape)),
                       lambda key: [((key[0],), np.int32)])
    assert num_steps == 2
    assert ran == [((8, 1), (8,)), ((16, 2), (16,))]
    assert broadcast.headers == [(STEP, 8, 1)]  # nothing read after the stop


def test_follow_refuses_an_unknown_command():
    with pytest.raises(RuntimeError, match="unknown command 9"):
        follow(ScriptedBroadcast([(9, 0, 0)]), lambda key, buffers: None, lambda key: [])

