"""The cpu backend's SiLU-and-multiply (C++ FFI) against the base backend's jax.nn.silu version."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.kernels.base import KernelBackend
from surge.kernels.cpu import CpuBackend
from surge.kernels.registry import available

pytestmark = pytest.mark.skipif(available().get("cpu") is not None, reason="surge._C (cpu backend) not built")


@pytest.mark.parametrize("shape", [(1, 2 * 576), (37, 2 * 1536), (3, 5, 2 * 12), (512, 2 * 1536)])
def test_matches_jax(shape):
    x = jnp.asarray(np.random.default_rng(len(shape)).standard_normal(shape) * 6, jnp.float32)
    got = jax.jit(CpuBackend().silu_and_mul)(x)
    want = KernelBackend.silu_and_mul(CpuBackend(), x)
    assert got.shape == shape[:-1] + (shape[-1] // 2,)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=1e-6)


def test_extremes():
    gate = jnp.asarray([0.0, -100.0, 100.0, 90.0, -90.0, jnp.inf, -jnp.inf, 1.0, 2.0], jnp.float32)
    up = jnp.full_like(gate, 2.0)
    got = np.asarray(CpuBackend().silu_and_mul(jnp.concatenate([gate, up])[None]))[0]
    np.testing.assert_allclose(got[:5], [0.0, -0.0, 200.0, 180.0, -0.0], atol=1e-30)
    assert got[5] == np.inf  # (silu(-inf) is -inf * 0: left undefined, as in jax.nn.silu)
    np.testing.assert_allclose(got[7:], 2 * np.array([1.0, 2.0]) / (1 + np.exp(-np.array([1.0, 2.0]))), rtol=1e-6)


def test_other_dtypes_use_the_jax_version():
    x = jnp.ones((2, 8), jnp.bfloat16)
    assert CpuBackend().silu_and_mul(x).dtype == jnp.bfloat16
