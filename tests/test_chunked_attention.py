"""Chunked local attention (Llama 4's attention_chunk_size) on every backend, against a float64 oracle.

A token at position p sees only the keys of its own chunk, [p // chunk * chunk, p]. The batches are
those of the Triton interpreter tests (ragged: decodes, prefill chunks on cached tokens, fresh
prefills, padding tokens and a padding sequence) with NaN in free pages, the null page, unwritten
slots and the padding tokens' q/k/v, so a key that a token must not see shows up as NaN. The
reference backend (pure JAX), the cpu backend's native kernel, Pallas in interpret mode and the
Triton kernel under its interpreter must all match, with and without a soft cap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from test_triton_kernels import BOUNDARY, MIXED, Batch, kernels, launch, torch  # sets TRITON_INTERPRET
from surge.kernels import registry
from surge.kernels.base import AttentionSpec
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.pallas import PallasBackend, PallasOptions

CASES = [
    # kv_heads, group, head_dim, page_size, chunk, cap, seqs
    (2, 2, 64, 16, 8, None, MIXED),  # chunks shorter than a page
    (1, 4, 64, 16, 32, 2.0, MIXED),  # chunks of two pages, with a soft cap
    (2, 1, 64, 16, 16, None, BOUNDARY),  # chunk == page, q lengths around the kernels' blocks
]


def _case_id(case):
    kv, group, hd, ps, chunk, cap, seqs = case
    return f"kv{kv}-gqa{group}-ps{ps}-chunk{chunk}-cap{cap or 0}-{'mixed' if seqs is MIXED else 'boundary'}"


def oracle(b: Batch, scale, chunk, cap):
    k_cache, v_cache = b.k_cache.astype(np.float64), b.v_cache.astype(np.float64)
    for t in range(b.num_real):
        page, offset = divmod(int(b.slot_mapping[t]), b.page_size)
        k_cache[page, :, offset], v_cache[page, :, offset] = b.k[t], b.v[t]
    group = b.num_heads // b.num_kv_heads
    out = np.zeros((b.num_real, b.num_heads, b.head_dim))
    for t in range(b.num_real):
        s, pos = b.token_seq_ids[t], b.positions[t]
        seen = np.arange(pos // chunk * chunk, pos + 1)
        pages, offsets = b.page_table[s, seen // b.page_size], seen % b.page_size
        keys, values = k_cache[pages, :, offsets], v_cache[pages, :, offsets]
        q = b.q[t].astype(np.float64).reshape(b.num_kv_heads, group, b.head_dim)
        scores = np.einsum("kgd,nkd->kgn", q, keys) * scale
        if cap:
            scores = cap * np.tanh(scores / cap)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        out[t] = np.einsum("kgn,nkd->kgd", weights / weights.sum(-1, keepdims=True), values).reshape(
            b.num_heads, b.head_dim)
    return out


def _metadata(b: Batch) -> AttentionMetadata:
    return AttentionMetadata(positions=b.positions, slot_mapping=b.slot_mapping, token_seq_ids=b.token_seq_ids,
                             page_table=b.page_table, cu_q_lens=b.cu_q_lens, kv_lens=b.kv_lens,
                             num_seqs=np.int32(len(b.seqs)))


def _run_jax_backend(backend, b: Batch, scale, chunk, cap):
    # Batch holds the [pages, KV, page_size, hd] layout; transpose where the backend keeps another.
    shape = backend.kv_cache_shape(b.k_cache.shape[0], b.page_size, b.num_kv_heads, b.head_dim)
    to_layout = (lambda x: x) if shape == b.k_cache.shape else (lambda x: x.transpose(0, 2, 1, 3))
    cache = (jnp.asarray(to_layout(b.k_cache)), jnp.asarray(to_layout(b.v_cache)))
    step = jax.jit(lambda q, k, v, c, md: backend.attention(
        q, k, v, c, md, AttentionSpec(scale, logit_soft_cap=cap, chunk_size=chunk))[0])
    return np.asarray(step(b.q, b.k, b.v, cache, _metadata(b)))


def _run_triton(b: Batch, scale, chunk, cap):
    def tensor(array, dt=torch.float32):
        return torch.from_numpy(np.ascontiguousarray(array)).to(dt)

    k_cache, v_cache = tensor(b.k_cache), tensor(b.v_cache)
    grid, meta = launch.write_kv_launch(b.num_tokens, b.num_kv_heads, b.head_dim, b.page_size)
    kernels.write_kv_kernel[grid](tensor(b.k), tensor(b.v), tensor(b.slot_mapping, torch.int32),
                                  k_cache, v_cache, k_cache, v_cache, **meta)
    grid, meta = launch.attention_launch(
        num_tokens=b.num_tokens, num_heads=b.num_heads, num_kv_heads=b.num_kv_heads, head_dim=b.head_dim,
        page_size=b.page_size, max_seqs=b.max_seqs, pages_per_seq=b.pages_per_seq, scale=scale,
        sliding_window=None, logit_soft_cap=cap, attention_chunk=chunk, cache_dtype="float32",
        block_rows=16, block_keys=16)
    out = torch.zeros((b.num_tokens, b.num_heads, b.head_dim), dtype=torch.float32)
    kernels.paged_attention_kernel[grid](
        tensor(b.q), k_cache, v_cache, tensor(b.page_table, torch.int32), tensor(b.cu_q_lens, torch.int32),
        tensor(b.kv_lens, torch.int32), tensor(b.positions, torch.int32),
        torch.tensor(len(b.seqs), dtype=torch.int32), out, **meta)
    return out.numpy()


def _run_cpu(b: Batch, *args):
    reason = registry.available().get("cpu")
    if reason is not None:
        pytest.skip(reason)
    return _run_jax_backend(registry.get_backend("cpu"), b, *args)


RUNNERS = {
    "reference": lambda b, *a: _run_jax_backend(registry.get_backend("reference"), b, *a),
    "cpu": _run_cpu,
    "pallas": lambda b, *a: _run_jax_backend(PallasBackend(PallasOptions(interpret=True)), b, *a),
    "triton": _run_triton,
}


@pytest.mark.parametrize("backend", sorted(RUNNERS))
@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_chunked_attention_matches_the_oracle(backend, case):
    num_kv_heads, group, head_dim, page_size, chunk, cap, seqs = case
    b = Batch(np.random.default_rng(CASES.index(case)), seqs, num_kv_heads=num_kv_heads, group=group,
              head_dim=head_dim, page_size=page_size, dtype="float32")
    scale = 2.0 / np.sqrt(head_dim)
    expected = oracle(b, scale, chunk, cap)
    out = RUNNERS[backend](b, scale, chunk, cap)
    np.testing.assert_allclose(out[:b.num_real], expected, rtol=1e-5, atol=1e-5)
    # The chunk mask must bite: without it the same batch gives other outputs.
    unchunked = oracle(b, scale, 10 ** 6, cap)
    assert np.abs(unchunked - expected).max() > 1e-2


def test_a_non_positive_chunk_is_refused_before_the_cpu_kernel():
    reason = registry.available().get("cpu")
    if reason is not None:
        pytest.skip(reason)
    b = Batch(np.random.default_rng(0), MIXED, num_kv_heads=1, group=2, head_dim=64, page_size=16, dtype="float32")
    with pytest.raises(ValueError, match="AttentionSpec.chunk_size=0 must be a positive integer"):
        _run_jax_backend(registry.get_backend("cpu"), b, 0.1, 0, None)
