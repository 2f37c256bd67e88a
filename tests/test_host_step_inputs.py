"""The host side of a step, made cheaper, builds exactly what it built before.

Covers the per-step shortcuts of the runner's input building: RoPE tables from frequencies computed once
(surge.models.rope.host_rope_inputs_fn) against `rope_inputs`, bit for bit, for every scaling kind; and a
PendingStep that flattens its outputs once still reports readiness and results as the device gives them.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from surge.models.arch import LinearRopeScaling, LongRopeScaling, ModelArchConfig, RopeScaling
from surge.models.rope import host_rope_inputs_fn, rope_inputs
from surge.runner.model_runner import PendingStep
from surge.scheduler.output import SchedulerOutput

BASE = dict(architecture="LlamaForCausalLM", vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2,
            num_heads=2, num_kv_heads=1, head_dim=16)
ARCHS = {
    "default": ModelArchConfig(**BASE),
    "llama3": ModelArchConfig(**BASE, rope_theta=500000.0,
                              rope_scaling=RopeScaling(8.0, 1.0, 4.0, 64)),
    "linear": ModelArchConfig(**BASE, rope_scaling=LinearRopeScaling(4.0), local_rope_theta=10000.0),
    "partial_local": ModelArchConfig(**BASE, rotary_dim=8, local_rope_theta=5000.0),
    "longrope": ModelArchConfig(**BASE, rope_scaling=LongRopeScaling(
        tuple(np.linspace(1.0, 1.5, 8).tolist()), tuple(np.linspace(2.0, 8.0, 8).tolist()), 64, 1.2)),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_host_rope_inputs_equal_rope_inputs_bit_for_bit(name):
    arch = ARCHS[name]
    build = host_rope_inputs_fn(arch)
    for positions in (np.zeros(4, np.int32), np.arange(50, 90, dtype=np.int32), np.array([7, 0, 2047], np.int32)):
        expected = rope_inputs(arch, positions, xp=np)
        got = build(positions)
        assert len(got) == len(expected) == (2 if arch.local_rope_theta is not None else 1)
        for (cos, sin), (want_cos, want_sin) in zip(got, expected):
            assert cos.dtype == sin.dtype == np.float32
            np.testing.assert_array_equal(cos, want_cos)
            np.testing.assert_array_equal(sin, want_sin)


def test_pending_step_reports_ready_and_the_first_rows():
    sampled = jnp.arange(8, dtype=jnp.int32) + 3
    pending = PendingStep(SchedulerOutput(), num_seqs=3, sampled=sampled, prompt=None)
    pending.start_copy()
    sampled.block_until_ready()
    assert pending.is_ready()
    result = pending.result()
    np.testing.assert_array_equal(result.token_ids, [3, 4, 5])
    assert result.logprobs == {} and result.prompt_logprobs == {}
