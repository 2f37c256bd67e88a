"""The reference backend against a naive numpy loop on a small ragged batch.

The batch mixes a decode (q_len 1), a prefill chunk on top of cached tokens, a
fresh prefill, padding tokens and a padding sequence; free pages, the null page
and the padding rows hold NaN, which must never reach a real token's output.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.kernels.base import AttentionSpec
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.reference import ReferenceBackend

PAGE_SIZE = 4
NUM_PAGES = 16
PAGES_PER_SEQ = 4
HEAD_DIM = 8


def _ragged_batch(rng, num_kv_heads, num_heads, num_padding_tokens=3):
    # (tokens already cached, new tokens) per real sequence: decode, prefill chunk, fresh prefill.
    seqs = [(6, 1), (5, 4), (0, 3)]
    max_seqs = len(seqs) + 1  # one padding sequence
    num_real = sum(n for _, n in seqs)
    num_tokens = num_real + num_padding_tokens
    shape = (NUM_PAGES, PAGE_SIZE, num_kv_heads, HEAD_DIM)
    k_pages = np.full(shape, np.nan, np.float32)
    v_pages = np.full(shape, np.nan, np.float32)
    page_table = np.zeros((max_seqs, PAGES_PER_SEQ), np.int32)
    # Pages handed out non-contiguously, so a wrong page lookup shows.
    free = list(rng.permutation(np.arange(1, NUM_PAGES)))
    positions, slots, seq_ids, cu, kv_lens = [], [], [], [0], []
    for s, (cached, new) in enumerate(seqs):
        total = cached + new
        pages = [free.pop() for _ in range(-(-total // PAGE_SIZE))]
        page_table[s, :len(pages)] = pages
        for pos in range(total):
            slot = pages[pos // PAGE_SIZE] * PAGE_SIZE + pos % PAGE_SIZE
            if pos < cached:
                k_pages.reshape(-1, num_kv_heads, HEAD_DIM)[slot] = rng.standard_normal((num_kv_heads, HEAD_DIM))
                v_pages.reshape(-1, num_kv_heads, HEAD_DIM)[slot] = rng.standard_normal((num_kv_heads, HEAD_DIM))
            else:
                positions.append(pos)
                slots.append(slot)
                seq_ids.append(s)
        cu.append(cu[-1] + new)
        kv_lens.append(total)
    positions += [0] * num_padding_tokens
    slots += [0] * num_padding_tokens
    seq_ids += [max_seqs] * num_padding_tokens
    cu.append(cu[-1])
    kv_lens.append(0)
    q = rng.standard_normal((num_tokens, num_heads, HEAD_DIM)).astype(np.float32)
    k = rng.standard_normal((num_tokens, num_kv_heads, HEAD_DIM)).astype(np.float32)
    v = rng.standard_normal((num_tokens, num_kv_heads, HEAD_DIM)).astype(np.float32)
    q[num_real:] = k[num_real:] = v[num_real:] = np.nan
    md = AttentionMetadata(
        positions=np.array(positions, np.int32), slot_mapping=np.array(slots, np.int32),
        token_seq_ids=np.array(seq_ids, np.int32), page_table=page_table, cu_q_lens=np.array(cu, np.int32),
        kv_lens=np.array(kv_lens, np.int32), num_seqs=np.int32(len(seqs)))
    return q, k, v, k_pages, v_pages, md, num_real


def _naive(q, k, v, k_pages, v_pages, md, num_real, scale, window, cap):
    k_flat = k_pages.reshape(-1, *k_pages.shape[2:]).copy()
    v_flat = v_pages.reshape(-1, *v_pages.shape[2:]).copy()
    for t in range(num_real):
        k_flat[md.slot_mapping[t]] = k[t]
        v_flat[md.slot_mapping[t]] = v[t]
    num_heads, num_kv_heads = q.shape[1], k.shape[1]
    out = np.zeros((num_real, num_heads, HEAD_DIM), np.float64)
    for t in range(num_real):
        s, pos = md.token_seq_ids[t], md.positions[t]
        visible = [j for j in range(md.kv_lens[s]) if j <= pos and (window is None or j > pos - window)]
        slots = [md.page_table[s, j // PAGE_SIZE] * PAGE_SIZE + j % PAGE_SIZE for j in visible]
        for h in range(num_heads):
            kv_head = h // (num_heads // num_kv_heads)
            scores = np.array([q[t, h] @ k_flat[slot, kv_head] for slot in slots], np.float64) * scale
            if cap is not None:
                scores = cap * np.tanh(scores / cap)
            weights = np.exp(scores - scores.max())
            weights /= weights.sum()
            out[t, h] = weights @ v_flat[slots, kv_head]
    return out, k_flat.reshape(k_pages.shape), v_flat.reshape(v_pages.shape)


@pytest.mark.parametrize("num_kv_heads,num_heads", [(2, 2), (2, 6)])
@pytest.mark.parametrize("window,cap", [(None, None), (3, None), (None, 2.0), (5, 2.0)])
def test_matches_naive_loop(num_kv_heads, num_heads, window, cap):
    rng = np.random.default_rng(num_heads * 7 + (window or 0))
    q, k, v, k_pages, v_pages, md, num_real = _ragged_batch(rng, num_kv_heads, num_heads)
    scale = 0.9  # larger than 1/sqrt(hd) so the soft cap is active
    backend = ReferenceBackend()
    assert backend.kv_cache_shape(NUM_PAGES, PAGE_SIZE, num_kv_heads, HEAD_DIM) == k_pages.shape

    step = jax.jit(lambda q, k, v, cache, md: backend.attention(
        q, k, v, cache, md, AttentionSpec(scale, sliding_window=window, logit_soft_cap=cap)))
    out, (new_k, new_v) = step(q, k, v, (jnp.asarray(k_pages), jnp.asarray(v_pages)), md)
    out = np.asarray(out)
    expected, expected_k, expected_v = _naive(q, k, v, k_pages, v_pages, md, num_real, scale, window, cap)

    np.testing.assert_allclose(out[:num_real], expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(out).all(), "padding tokens must produce finite output"
    # Every slot but the null page's slot 0 (the padding sink) is exactly as the naive write left it.
    sink = (slice(0, 1), slice(0, 1))
    for got, want in ((np.array(new_k), expected_k), (np.array(new_v), expected_v)):
        got[sink] = want[sink] = 0
        np.testing.assert_array_equal(got, want)


def test_long_batch_takes_the_chunked_path_and_agrees():
    rng = np.random.default_rng(3)
    q, k, v, k_pages, v_pages, md, num_real = _ragged_batch(rng, 1, 3, num_padding_tokens=128 - 8)
    assert q.shape[0] == 128
    backend = ReferenceBackend()
    out, _ = jax.jit(lambda *a: backend.attention(*a, AttentionSpec(0.5, sliding_window=4)))(
        q, k, v, (jnp.asarray(k_pages), jnp.asarray(v_pages)), md)
    expected, _, _ = _naive(q, k, v, k_pages, v_pages, md, num_real, 0.5, 4, None)
    np.testing.assert_allclose(np.asarray(out)[:num_real], expected, rtol=1e-5, atol=1e-5)
    assert np.isfinite(np.asarray(out)).all()


def test_bfloat16_cache_keeps_query_dtype():
    rng = np.random.default_rng(5)
    q, k, v, k_pages, v_pages, md, num_real = _ragged_batch(rng, 2, 4)
    cache = (jnp.asarray(k_pages, jnp.bfloat16), jnp.asarray(v_pages, jnp.bfloat16))
    out, (new_k, _) = ReferenceBackend().attention(jnp.asarray(q, jnp.bfloat16), k, v, cache, md,
                                                AttentionSpec(0.3))
    assert out.dtype == jnp.bfloat16 and new_k.dtype == jnp.bfloat16
    expected, _, _ = _naive(q, k, v, k_pages, v_pages, md, num_real, 0.3, None, None)
    np.testing.assert_allclose(np.asarray(out[:num_real], np.float32), expected, rtol=0.05, atol=0.05)
