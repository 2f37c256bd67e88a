"""The cpu backend (C++ FFI kernel) against a float64 NumPy oracle and the reference backend.

Each batch is ragged: decodes (q_len 1), a prefill chunk on top of cached tokens, a
fresh prefill, padding tokens and a padding sequence, with kv lengths that are not
multiples of the page size. Every free page, the null page and every unused slot of a
used page hold NaN, and with a sliding window the pages no query can see are NaN too,
so a kernel that reads a key it must not see fails the comparison.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from surge.kernels.base import AttentionSpec
from surge.kernels.cpu import CpuBackend
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.native import get_num_threads, set_num_threads

pytestmark = pytest.mark.skipif(CpuBackend.unavailable_reason() is not None,
                                reason=str(CpuBackend.unavailable_reason()))

# (tokens already cached, new tokens) of each real sequence.
SEQS = [(36, 1), (15, 1), (20, 45), (0, 50), (100, 1)]
NUM_PADDING_TOKENS = 5


class Batch:
    """A ragged batch: logical K/V per sequence, the new tokens, metadata and page assignment."""

    def __init__(self, rng, *, num_kv_heads, group, head_dim, page_size, dtype, sliding_window=None, seqs=SEQS):
        self.num_kv_heads, self.head_dim, self.page_size = num_kv_heads, head_dim, page_size
        self.num_heads = num_kv_heads * group
        self.dtype = dtype
        self.seqs = seqs
        self.max_seqs = len(seqs) + 1  # the last sequence is padding
        self.pages_per_seq = max(-(-(c + n) // page_size) for c, n in seqs) + 1
        pages_needed = sum(-(-(c + n) // page_size) for c, n in seqs)
        self.num_pages = pages_needed + 6  # page 0 (null) and a few free pages
        free = list(rng.permutation(np.arange(1, self.num_pages)))

        def rounded(shape):
            return rng.standard_normal(shape).astype(dtype).astype(np.float64)

        self.kv = []  # per sequence: (K [kv_len, KV, hd], V) in float64, rounded to the storage dtype
        self.pages = []
        self.page_table = np.zeros((self.max_seqs, self.pages_per_seq), np.int32)
        positions, slots, seq_ids, cu, kv_lens = [], [], [], [0], []
        for s, (cached, new) in enumerate(seqs):
            total = cached + new
            pages = [int(free.pop()) for _ in range(-(-total // page_size))]
            self.pages.append(pages)
            self.page_table[s, :len(pages)] = pages
            self.kv.append((rounded((total, num_kv_heads, head_dim)), rounded((total, num_kv_heads, head_dim))))
            for pos in range(cached, total):
                positions.append(pos)
                slots.append(pages[pos // page_size] * page_size + pos % page_size)
                seq_ids.append(s)
            cu.append(cu[-1] + new)
            kv_lens.append(total)
        self.num_real = cu[-1]
        num_tokens = self.num_real + NUM_PADDING_TOKENS
        positions += [0] * NUM_PADDING_TOKENS
        slots += [0] * NUM_PADDING_TOKENS
        seq_ids += [self.max_seqs] * NUM_PADDING_TOKENS
        cu.append(cu[-1])
        kv_lens.append(0)
        self.md = AttentionMetadata(
            positions=np.array(positions, np.int32), slot_mapping=np.array(slots, np.int32),
            token_seq_ids=np.array(seq_ids, np.int32), page_table=self.page_table,
            cu_q_lens=np.array(cu, np.int32), kv_lens=np.array(kv_lens, np.int32),
            num_seqs=np.array(len(seqs), np.int32))
        self.q = rounded((num_tokens, self.num_heads, head_dim))
        self.q[self.num_real:] = np.nan
        self.k = np.full((num_tokens, num_kv_heads, head_dim), np.nan)
        self.v = np.full((num_tokens, num_kv_heads, head_dim), np.nan)
        for s, (cached, new) in enumerate(seqs):
            rows = slice(cu[s], cu[s + 1])
            self.k[rows] = self.kv[s][0][cached:]
            self.v[rows] = self.kv[s][1][cached:]
        # Pages wholly before every new token's window are never visible: make them NaN.
        self.hidden_pages = set()
        if sliding_window:
            for s, (cached, _) in enumerate(seqs):
                first_visible = cached - sliding_window + 1
                self.hidden_pages |= {p for i, p in enumerate(self.pages[s]) if (i + 1) * page_size <= first_visible}

    def cache(self, layout: str):
        """K and V page arrays in `layout` ("cpu": [N, KV, ps, hd], "reference": [N, ps, KV, hd]) holding
        the already-cached tokens; everything else NaN."""
        shape = (self.num_pages, self.page_size, self.num_kv_heads, self.head_dim)
        k_pages, v_pages = np.full(shape, np.nan), np.full(shape, np.nan)
        for s, (cached, _) in enumerate(self.seqs):
            for pos in range(cached):
                page = self.pages[s][pos // self.page_size]
                if page not in self.hidden_pages:
                    k_pages[page, pos % self.page_size] = self.kv[s][0][pos]
                    v_pages[page, pos % self.page_size] = self.kv[s][1][pos]
        if layout == "cpu":
            k_pages, v_pages = k_pages.transpose(0, 2, 1, 3), v_pages.transpose(0, 2, 1, 3)
        return jnp.asarray(k_pages, self.dtype), jnp.asarray(v_pages, self.dtype)

    def expected(self, scale, sliding_window=None, soft_cap=None):
        """Float64 attention of every real token (padding rows stay zero)."""
        out = np.zeros(self.q.shape)
        group = self.num_heads // self.num_kv_heads
        cu = self.md.cu_q_lens
        for s in range(len(self.seqs)):
            keys, values = self.kv[s]
            for t in range(cu[s], cu[s + 1]):
                pos = int(self.md.positions[t])
                lo = max(0, pos - sliding_window + 1) if sliding_window else 0
                for h in range(self.num_heads):
                    g = h // group
                    scores = keys[lo:pos + 1, g] @ self.q[t, h] * scale
                    if soft_cap:
                        scores = soft_cap * np.tanh(scores / soft_cap)
                    weights = np.exp(scores - scores.max())
                    out[t, h] = weights @ values[lo:pos + 1, g] / weights.sum()
        return out

    def inputs(self, q_dtype=None):
        q_dtype = q_dtype or self.dtype
        return (jnp.asarray(self.q, q_dtype), jnp.asarray(self.k, self.dtype), jnp.asarray(self.v, self.dtype))


def run_backend(backend, batch, layout, *, scale, sliding_window=None, soft_cap=None, q_dtype=None):
    q, k, v = batch.inputs(q_dtype)

    @jax.jit
    def step(q, k, v, k_pages, v_pages, md):
        return backend.attention(q, k, v, (k_pages, v_pages), md,
                                 AttentionSpec(scale, sliding_window=sliding_window, logit_soft_cap=soft_cap))

    out, (k_pages, v_pages) = step(q, k, v, *batch.cache(layout), batch.md)
    return np.asarray(out.astype(jnp.float32)), np.asarray(k_pages.astype(jnp.float32)), \
        np.asarray(v_pages.astype(jnp.float32))


BF16 = ml_dtypes.bfloat16
CASES = [
    # group, head_dim, page_size, sliding_window, soft_cap, cache dtype, q dtype
    pytest.param(1, 64, 16, None, None, np.float32, None, id="mha-hd64-ps16"),
    pytest.param(3, 64, 16, None, None, np.float32, None, id="gqa3-hd64-ps16"),
    pytest.param(8, 128, 32, None, None, np.float32, None, id="gqa8-hd128-ps32"),
    pytest.param(3, 128, 16, 24, None, np.float32, None, id="gqa3-hd128-window"),
    pytest.param(1, 64, 32, None, 20.0, np.float32, None, id="mha-hd64-softcap"),
    pytest.param(8, 64, 16, 20, 30.0, np.float32, None, id="gqa8-window-softcap"),
    pytest.param(3, 64, 16, None, None, BF16, None, id="gqa3-bf16"),
    pytest.param(8, 128, 32, 24, 30.0, BF16, None, id="gqa8-hd128-bf16-window-softcap"),
    pytest.param(3, 64, 32, None, None, BF16, np.float32, id="gqa3-bf16-cache-f32-q"),
    pytest.param(2, 40, 16, None, None, np.float32, None, id="hd40-odd-chunks"),
    pytest.param(3, 36, 16, 17, None, np.float32, None, id="hd36-scalar-tail"),
]


@pytest.mark.parametrize("group, head_dim, page_size, window, soft_cap, dtype, q_dtype", CASES)
def test_matches_numpy_oracle_and_writes_slots(group, head_dim, page_size, window, soft_cap, dtype, q_dtype):
    rng = np.random.default_rng(group * 1000 + head_dim + page_size)
    batch = Batch(rng, num_kv_heads=2, group=group, head_dim=head_dim, page_size=page_size, dtype=dtype,
                  sliding_window=window)
    scale = 1.0 if soft_cap else head_dim ** -0.5
    out, k_pages, v_pages = run_backend(CpuBackend(), batch, "cpu", scale=scale, sliding_window=window,
                                        soft_cap=soft_cap, q_dtype=q_dtype)
    expected = batch.expected(scale, window, soft_cap)
    real = slice(0, batch.num_real)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == np.float32 and q_dtype is None else dict(atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(out[real], expected[real], **tol)
    assert np.all(out[batch.num_real:] == 0.0)
    # Every real token's k, v landed in its slot: page, then its KV head's row at the offset.
    for t in range(batch.num_real):
        page, offset = divmod(int(batch.md.slot_mapping[t]), page_size)
        np.testing.assert_array_equal(k_pages[page, :, offset], batch.k[t].astype(np.float32))
        np.testing.assert_array_equal(v_pages[page, :, offset], batch.v[t].astype(np.float32))


@pytest.mark.parametrize("group, head_dim, page_size, window, soft_cap, dtype", [
    (3, 64, 16, None, None, np.float32),
    (8, 128, 32, 24, 30.0, np.float32),
    (3, 64, 16, 20, None, BF16),
])
def test_matches_reference_backend(group, head_dim, page_size, window, soft_cap, dtype):
    reference = pytest.importorskip("surge.kernels.reference")
    batch = Batch(np.random.default_rng(7), num_kv_heads=2, group=group, head_dim=head_dim, page_size=page_size,
                  dtype=dtype, sliding_window=window)
    kwargs = dict(scale=head_dim ** -0.5, sliding_window=window, soft_cap=soft_cap)
    ours, _, _ = run_backend(CpuBackend(), batch, "cpu", **kwargs)
    theirs, _, _ = run_backend(reference.ReferenceBackend(), batch, "reference", **kwargs)
    real = slice(0, batch.num_real)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == np.float32 else dict(atol=2e-2, rtol=2e-2)
    np.testing.assert_allclose(ours[real], theirs[real], **tol)


def _small_batch(dtype=np.float32):
    return Batch(np.random.default_rng(3), num_kv_heads=3, group=3, head_dim=64, page_size=16, dtype=dtype)


def test_cache_is_updated_in_place_when_donated():
    batch = _small_batch()
    backend = CpuBackend()

    def step(q, k, v, k_pages, v_pages, md):
        return backend.attention(q, k, v, (k_pages, v_pages), md, AttentionSpec(0.125))

    k_pages, v_pages = batch.cache("cpu")
    k_ptr, v_ptr = k_pages.unsafe_buffer_pointer(), v_pages.unsafe_buffer_pointer()
    donating = jax.jit(step, donate_argnums=(3, 4))
    _, (k_new, v_new) = donating(*batch.inputs(), k_pages, v_pages, batch.md)
    assert k_new.unsafe_buffer_pointer() == k_ptr
    assert v_new.unsafe_buffer_pointer() == v_ptr
    assert k_pages.is_deleted() and v_pages.is_deleted()
    hlo = donating.lower(*batch.inputs(), k_new, v_new, batch.md).compile().as_text()
    assert " copy(" not in hlo and "copy-start" not in hlo

    # Without donation XLA must keep the caller's cache intact (it copies, the kernel writes the copy).
    k_pages, v_pages = batch.cache("cpu")
    before = np.asarray(k_pages)
    _, (k_new, _) = jax.jit(step)(*batch.inputs(), k_pages, v_pages, batch.md)
    np.testing.assert_array_equal(np.asarray(k_pages), before)
    assert not np.array_equal(np.asarray(k_new), before, equal_nan=True)


@pytest.mark.parametrize("field, value, message", [
    ("page_table", 10_000, "page_table"),
    ("page_table", -1, "page_table"),
    ("slot_mapping", 10_000_000, "slot_mapping"),
    ("kv_lens", 10_000, "kv_lens"),
])
def test_bad_metadata_raises_instead_of_crashing(field, value, message):
    batch = _small_batch()
    md = {name: np.array(getattr(batch.md, name)) for name in AttentionMetadata.__dataclass_fields__}
    if field == "page_table":
        md[field][2, 1] = value  # a page the prefill chunk's sequence uses
    else:
        md[field].reshape(-1)[1] = value
    step = jax.jit(lambda q, k, v, kp, vp, md: CpuBackend().attention(q, k, v, (kp, vp), md, AttentionSpec(0.125)))
    with pytest.raises(Exception, match=message):
        out, _ = step(*batch.inputs(), *batch.cache("cpu"), AttentionMetadata(**md))
        out.block_until_ready()


def test_padding_tokens_and_empty_batch_give_zeros():
    batch = _small_batch()
    md = AttentionMetadata(**{**{n: getattr(batch.md, n) for n in AttentionMetadata.__dataclass_fields__},
                              "num_seqs": np.array(0, np.int32)})
    q, k, v = batch.inputs()
    out, (k_pages, _) = jax.jit(lambda *a: CpuBackend().attention(*a[:3], (a[3], a[4]), a[5], AttentionSpec(0.125)))(
        q, k, v, *batch.cache("cpu"), md)
    assert np.all(np.asarray(out) == 0.0)
    # Even with no sequence to attend, the step's k/v are written.
    page, offset = divmod(int(batch.md.slot_mapping[0]), 16)
    np.testing.assert_array_equal(np.asarray(k_pages)[page, :, offset], batch.k[0].astype(np.float32))


def test_thread_count_does_not_change_results():
    batch = _small_batch(BF16)
    try:
        set_num_threads(1)
        single, _, _ = run_backend(CpuBackend(), batch, "cpu", scale=0.125)
        set_num_threads(2)
        double, _, _ = run_backend(CpuBackend(), batch, "cpu", scale=0.125)
    finally:
        set_num_threads(0)
    np.testing.assert_array_equal(single, double)
    with pytest.raises(ValueError, match="num_threads"):
        set_num_threads(-1)


def test_one_pool_size_for_every_kernel():
    """set_num_threads sizes the one pool get_num_threads reads; 0 = every core."""
    try:
        set_num_threads(3)
        assert get_num_threads() == 3
        set_num_threads(0)
        assert get_num_threads() == os.cpu_count()
    finally:
        set_num_threads(0)


def test_layout_and_availability():
    backend = CpuBackend()
    assert backend.kv_cache_shape(10, 16, 3, 64) == (10, 3, 16, 64)
    assert CpuBackend.unavailable_reason() is None
    with pytest.raises(TypeError, match="float16"):
        batch = _small_batch()
        q, k, v = batch.inputs()
        backend.attention(q.astype(jnp.float16), k, v, batch.cache("cpu"), batch.md, AttentionSpec(0.1))
