"""Reference kernel backend: paged attention in plain JAX, the oracle for every kernel.

In: per layer, q [T, H, hd], k and v [T, KV, hd], the layer's cache
``(k_pages, v_pages)`` each [num_pages, page_size, KV, hd], and the shared
AttentionMetadata. Out: attention output [T, H, hd] (q's dtype) and the cache
with this step's K/V written.

Each token gathers the pages of its own sequence (``page_table[token_seq_ids]``)
and attends over them with a mask built from ``kv_lens``, ``positions`` and the
spec's sliding window or attention chunk; masked scores and values are replaced before they can
reach a sum, so whatever the free pages hold (the tests fill them with NaN)
never reaches the output. Tokens with no visible key (padding) return zeros.
Long batches are processed in fixed chunks of tokens to bound the size of the
gathered keys; every shape is static.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

from surge.kernels.base import AttentionSpec, KernelBackend, KVCache
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.registry import register_backend

# Tokens attended together; the gathered K/V of a chunk is [chunk, pages_per_seq * page_size, KV, hd].
_TOKEN_CHUNK = 64


@register_backend("reference", fallback=True)
class ReferenceBackend(KernelBackend):

    def kv_cache_shape(self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int) -> tuple:
        return (num_pages, page_size, num_kv_heads, head_dim)

    def attention(self, q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: KVCache, md: AttentionMetadata,
                  spec: AttentionSpec) -> Tuple[jax.Array, KVCache]:
        k_pages, v_pages = write_kv(kv_cache, k, v, md.slot_mapping)
        return paged_attention(q, k_pages, v_pages, md, spec), (k_pages, v_pages)


def write_kv(kv_cache: KVCache, k: jax.Array, v: jax.Array, slot_mapping: jax.Array) -> KVCache:
    """Scatter the new rows into their flat slots (padding tokens all land in slot 0, the null page)."""
    k_pages, v_pages = kv_cache
    num_pages, page_size, num_kv_heads, head_dim = k_pages.shape

    def scatter(pages: jax.Array, rows: jax.Array) -> jax.Array:
        flat = pages.reshape(num_pages * page_size, num_kv_heads, head_dim)
        flat = flat.at[slot_mapping].set(rows.astype(pages.dtype), mode="promise_in_bounds")
        return flat.reshape(pages.shape)

    return scatter(k_pages, k), scatter(v_pages, v)


def paged_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    md: AttentionMetadata,
    spec: AttentionSpec,
) -> jax.Array:
    """Attention of each token over its sequence's cached keys (already including this step's)."""
    num_tokens = q.shape[0]
    if num_tokens <= _TOKEN_CHUNK or num_tokens % _TOKEN_CHUNK:
        return _attend(q, md.positions, md.token_seq_ids, k_pages, v_pages, md, spec)
    num_chunks = num_tokens // _TOKEN_CHUNK

    def chunk(args):
        q_c, pos_c, seq_c = args
        return _attend(q_c, pos_c, seq_c, k_pages, v_pages, md, spec)

    out = jax.lax.map(chunk, (q.reshape(num_chunks, _TOKEN_CHUNK, *q.shape[1:]),
                              md.positions.reshape(num_chunks, _TOKEN_CHUNK),
                              md.token_seq_ids.reshape(num_chunks, _TOKEN_CHUNK)))
    return out.reshape(q.shape)


def _attend(q, positions, token_seq_ids, k_pages, v_pages, md, spec: AttentionSpec):
    num_tokens, num_heads, head_dim = q.shape
    _, page_size, num_kv_heads, _ = k_pages.shape
    group = num_heads // num_kv_heads
    max_seqs, pages_per_seq = md.page_table.shape
    context = pages_per_seq * page_size

    is_real_token = token_seq_ids < max_seqs
    seq = jnp.clip(token_seq_ids, 0, max_seqs - 1)
    pages = md.page_table[seq]  # [T, P]
    keys = k_pages[pages].reshape(num_tokens, context, num_kv_heads, head_dim)
    values = v_pages[pages].reshape(num_tokens, context, num_kv_heads, head_dim)

    key_pos = jnp.arange(context, dtype=jnp.int32)[None, :]
    query_pos = positions[:, None]
    visible = is_real_token[:, None] & (key_pos < md.kv_lens[seq][:, None]) & (key_pos <= query_pos)
    if spec.sliding_window is not None:
        visible &= key_pos > query_pos - spec.sliding_window  # [T, C]
    if spec.chunk_size is not None:
        visible &= key_pos >= query_pos // spec.chunk_size * spec.chunk_size

    # Scores of hidden keys are replaced below, but a hidden value times a zero weight is still
    # NaN when the slot holds NaN, so hidden values are zeroed here.
    values = jnp.where(visible[:, :, None, None], values, 0).astype(jnp.float32)
    q_grouped = q.astype(jnp.float32).reshape(num_tokens, num_kv_heads, group, head_dim)
    scores = jnp.einsum("tkgd,tckd->tkgc", q_grouped, keys.astype(jnp.float32)) * spec.scale
    if spec.logit_soft_cap is not None:
        scores = spec.logit_soft_cap * jnp.tanh(scores / spec.logit_soft_cap)
    mask = visible[:, None, None, :]
    scores = jnp.where(mask, scores, -jnp.inf)
    row_max = jnp.max(scores, axis=-1, keepdims=True)
    row_max = jnp.where(jnp.isfinite(row_max), row_max, 0.0)
    probs = jnp.where(mask, jnp.exp(scores - row_max), 0.0)
    denom = jnp.maximum(jnp.sum(probs, axis=-1, keepdims=True), jnp.finfo(jnp.float32).tiny)
    out = jnp.einsum("tkgc,tckd->tkgd", probs / denom, values)
    return out.reshape(num_tokens, num_heads, head_dim).astype(q.dtype)
