"""surge's CPU matmul (C++ FFI kernel) against a float64 NumPy oracle, inside jit.

Sizes cover the kernel's edges: M from one row (the memory-bound path) through row
counts that leave partial tiles (7, 33, 500), N from one column through widths that
are not multiples of a vector, a panel or a work item (1, 24, 100) to the lm_head's
49152, and K from 64 to 1536, plus depths that are not whole vectors of 8. Weights are float32 or bfloat16, stored [K, N] or read
as [N, K] (transpose_w). The oracle multiplies in float64 the very weights the kernel
reads (bfloat16 values are exact in float32), so the only error left is float32
accumulation, bounded relative to sum_k |x_k w_k|; against the unrounded float32 weights
a bfloat16 result is held to bfloat16's own precision instead.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from surge.kernels import cpu_matmul, native
from surge.kernels.cpu_matmul import matmul

pytestmark = pytest.mark.skipif(not cpu_matmul.available(), reason=str(cpu_matmul.unavailable_reason()))

# |y - y_oracle| <= TOL * (|x| @ |w|): float32 accumulation of the products the kernel reads.
ACCUMULATION_TOL = 2e-6
# bfloat16 rounds each weight by up to 2^-9 relative; against the unrounded weights.
STORAGE_TOL = {jnp.float32: 2e-6, jnp.bfloat16: 2.0 ** -8}

MS = [1, 2, 7, 32, 33, 128, 500]
KS = [64, 576, 1536]
NS = [1, 24, 100, 3072]
LM_HEAD_N = 49152


def _cases():
    for m, k, n in itertools.product(MS, KS, NS):
        if m * k * n > 500 * 576 * 3072:
            continue  # the slowest oracle products add nothing the others do not cover
        yield m, k, n
    for m in (1, 2, 7):
        yield m, 576, LM_HEAD_N


CASES = list(_cases())

_jitted = {
    False: jax.jit(lambda x, w: matmul(x, w)),
    True: jax.jit(lambda x, w: matmul(x, w, transpose_w=True)),
}


@functools.lru_cache(maxsize=4)
def _random(m, k, n):
    rng = np.random.default_rng([m, k, n])
    return rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)  # x, logical w [K, N]


@functools.lru_cache(maxsize=4)
def _stored(m, k, n, dtype, transpose_w):
    """(w as the kernel reads it, as float32 [K, N]; the argument in its stored dtype and layout)."""
    w = _random(m, k, n)[1]
    stored = w.astype(ml_dtypes.bfloat16) if dtype == jnp.bfloat16 else w
    return stored.astype(np.float32), jnp.asarray(np.ascontiguousarray(stored.T) if transpose_w else stored)


def _operands(m, k, n, dtype, transpose_w):
    x, w = _random(m, k, n)
    return (x, w) + _stored(m, k, n, dtype, transpose_w)


def _check(y, x, w_read, w_exact, dtype):
    x64 = x.astype(np.float64)
    scale = (np.abs(x) @ np.abs(w_read)).astype(np.float64)  # sum_k |x_k w_k|; float32 is plenty for a bound
    y = np.asarray(y, np.float64)
    assert y.shape == scale.shape
    err = np.abs(y - x64 @ w_read.astype(np.float64))
    worst = np.unravel_index(np.argmax(err - ACCUMULATION_TOL * scale), err.shape)
    assert np.all(err <= ACCUMULATION_TOL * scale + 1e-30), (
        f"max error {err[worst]:.3g} at {worst}, allowed {ACCUMULATION_TOL * scale[worst]:.3g}")
    if dtype == jnp.bfloat16:
        storage_err = np.abs(y - x64 @ w_exact.astype(np.float64))
        assert np.all(storage_err <= STORAGE_TOL[dtype] * scale + 1e-30)


@pytest.mark.parametrize("transpose_w", [False, True], ids=["kn", "nk"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("m,k,n", CASES, ids=[f"M{m}-K{k}-N{n}" for m, k, n in CASES])
def test_matches_float64_oracle(m, k, n, dtype, transpose_w):
    x, w_exact, w_read, w_arg = _operands(m, k, n, dtype, transpose_w)
    y = _jitted[transpose_w](jnp.asarray(x), w_arg)
    assert y.dtype == jnp.float32
    _check(y, x, w_read, w_exact, dtype)


@pytest.mark.parametrize("transpose_w", [False, True], ids=["kn", "nk"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("m,k,n", [(1, 13, 7), (5, 13, 100), (1, 100, 100), (9, 100, 7), (3, 1, 30)])
def test_depths_that_are_not_whole_vectors(m, k, n, dtype, transpose_w):
    x, w_exact, w_read, w_arg = _operands(m, k, n, dtype, transpose_w)
    _check(_jitted[transpose_w](jnp.asarray(x), w_arg), x, w_read, w_exact, dtype)


def test_leading_dims_and_bfloat16_activations():
    x, w_exact, w_read, w_arg = _operands(6, 64, 40, jnp.bfloat16, False)
    x3 = x.reshape(2, 3, 64).astype(ml_dtypes.bfloat16)
    y = jax.jit(matmul)(jnp.asarray(x3), w_arg)
    assert y.shape == (2, 3, 40) and y.dtype == jnp.float32
    _check(y.reshape(6, 40), x3.reshape(6, 64).astype(np.float32), w_read, w_exact, jnp.bfloat16)


def test_inside_a_larger_jitted_function():
    x, _, w_read, w_arg = _operands(5, 64, 30, jnp.float32, True)

    @jax.jit
    def step(x, w):
        h = matmul(jnp.tanh(x), w, transpose_w=True)
        return matmul(h[:, :16] * 2.0, w[:, :16].T) + 1.0  # [5, 16] @ [16, 30] sliced from w

    y = step(jnp.asarray(x), w_arg)
    h = np.tanh(x.astype(np.float64)) @ w_read.astype(np.float64)
    expected = (h[:, :16] * 2.0) @ w_read[:16, :].astype(np.float64) + 1.0
    np.testing.assert_allclose(np.asarray(y), expected, rtol=1e-4, atol=1e-4)


def test_results_do_not_depend_on_thread_count():
    """Each column of y belongs to one thread and is summed in one order: bitwise equal."""
    x, _, _, w_arg = _operands(33, 576, 3072, jnp.bfloat16, False)
    outputs = []
    try:
        for threads in (1, 2, 3):
            native.set_num_threads(threads)
            outputs.append(np.asarray(_jitted[False](jnp.asarray(x), w_arg)))
    finally:
        native.set_num_threads(0)
    for other in outputs[1:]:
        np.testing.assert_array_equal(outputs[0], other)


def test_empty_sizes():
    w = jnp.ones((0, 7), jnp.float32)  # K = 0: y is zeros
    np.testing.assert_array_equal(np.asarray(jax.jit(matmul)(jnp.ones((3, 0)), w)), np.zeros((3, 7)))
    y = jax.jit(matmul)(jnp.ones((0, 8)), jnp.ones((8, 5), jnp.bfloat16))  # M = 0
    assert y.shape == (0, 5)


def test_shape_mismatch_names_the_inputs():
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 64\]"):
        matmul(jnp.ones((2, 65)), jnp.ones((64, 3)))
    with pytest.raises(ValueError, match="w must be 2-D"):
        matmul(jnp.ones((2, 64)), jnp.ones((64, 3, 1)))
    with pytest.raises(ValueError, match="packed w of 100 elements"):
        matmul(jnp.ones((2, 64)), jnp.ones((100,)))
    with pytest.raises(ValueError, match="N a multiple of 16"):
        matmul(jnp.ones((2, 64)), jnp.ones((64 * 24,)))
    with pytest.raises(ValueError, match="cannot pack"):
        cpu_matmul.pack(jnp.ones((64, 24)))


def test_ffi_target_rejects_inconsistent_buffers():
    call = jax.ffi.ffi_call(cpu_matmul.TARGET, jax.ShapeDtypeStruct((2, 3), jnp.float32))
    with pytest.raises(Exception, match=r"w must be \[K, N\] with K = 64"):
        jax.block_until_ready(call(jnp.ones((2, 64)), jnp.ones((65, 3)), transpose_w=False, panels=False))
    with pytest.raises(Exception, match="w must be float32 or bfloat16"):
        jax.block_until_ready(call(jnp.ones((2, 64)), jnp.ones((64, 3), jnp.float16), transpose_w=False,
                                   panels=False))
    with pytest.raises(Exception, match=r"packed w must be 1-D \[K \* N\] = \[192\]"):
        jax.block_until_ready(call(jnp.ones((2, 64)), jnp.ones((190,)), transpose_w=False, panels=True))


def test_other_weight_dtypes_fall_back_to_jnp_dot(caplog):
    x, _, _, _ = _operands(3, 64, 10, jnp.float32, False)
    w = np.random.default_rng(1).standard_normal((64, 10)).astype(np.float16)
    with caplog.at_level("WARNING", logger="surge"):
        y = jax.jit(matmul)(jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(y), x.astype(np.float64) @ w.astype(np.float64), rtol=1e-3, atol=1e-3)
    assert any("float16" in r.getMessage() for r in caplog.records) or cpu_matmul._logged_reasons


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("m,k,n", [(1, 64, 48), (3, 70, 32), (5, 128, 80), (33, 96, 112), (130, 48, 16)])
@pytest.mark.parametrize("transpose_w", [False, True])
def test_packed_weights_match_numpy(dtype, m, k, n, transpose_w):
    x, w, w_read, stored = _operands(m, k, n, dtype, transpose_w)
    packed = cpu_matmul.pack(stored, transpose_w=transpose_w)
    assert packed.shape == (k * n,) and packed.dtype == dtype
    _check(jax.jit(matmul)(jnp.asarray(x), packed), x, w_read, w, dtype)


def test_packed_panel_layout_is_exact():
    # Panels of 48 columns, each [K, width] contiguous; the last (N % 48 = 16) narrower.
    k, n = 3, 64
    w = jnp.arange(k * n, dtype=jnp.float32).reshape(k, n)
    packed = np.asarray(cpu_matmul.pack(w))
    np.testing.assert_array_equal(packed[:48 * k], np.asarray(w)[:, :48].reshape(-1))
    np.testing.assert_array_equal(packed[48 * k:], np.asarray(w)[:, 48:].reshape(-1))


def test_packed_rows_do_not_depend_on_the_batch():
    # Each row of y is summed in the same order whatever tile height it lands in.
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((13, 576)), jnp.float32)
    packed = cpu_matmul.pack(jnp.asarray(rng.standard_normal((576, 960)), jnp.float32))
    together = np.asarray(matmul(x, packed))
    for row in (0, 4, 12):
        alone = np.asarray(matmul(x[row:row + 1], packed))
        np.testing.assert_array_equal(alone[0], together[row])
