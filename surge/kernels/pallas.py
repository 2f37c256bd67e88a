"""Pallas kernel backend: a TPU ragged paged-attention kernel (interpretable on CPU).

In: per layer, q [T, H, hd], k and v [T, KV, hd], the layer's cache
``(k_pages, v_pages)`` each [num_pages, KV, page_size, hd] (this backend's
layout: one page of one KV head is a contiguous page_size x hd tile, one DMA)
and the shared AttentionMetadata. Out: attention output [T, H, hd] in q's
dtype and the cache with this step's K/V written.

The write is a plain JAX scatter (in place when the enclosing jit donates the
cache). The attention is one ``pallas_call``:
- q is regrouped to [KV, T * G, hd] (G = H // KV), so the G query heads that
  share a KV head are rows of one tile and each K/V page is fetched once for all;
- grid ``(T_padded / block_tokens, KV)``; each step owns a fixed block of rows
  of the flat token axis, which may hold tokens of several sequences;
- page table, cu_q_lens, kv_lens, num_seqs and positions are scalar-prefetched
  into SMEM (``PrefetchScalarGridSpec``); the caches stay in HBM and the pages a
  sequence needs are DMA'd into a double-buffered VMEM tile, several pages per
  step, the next step's pages in flight while the current ones are used;
- for each sequence overlapping the block, an online softmax in float32 updates
  only that sequence's rows; keys beyond kv_len (stale or NaN VMEM, free pages)
  are masked out of the scores and zeroed out of V before any multiply;
- rows with no visible key (padding) come out as zeros.

Positions are assumed to ascend within a sequence (its new tokens are its last
ones), which bounds the pages a block visits; the per-row masks are exact.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Tuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from surge.kernels.base import AttentionSpec, KernelBackend, KVCache
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.registry import register_backend

# Keys per inner step (rounded down to whole pages): a 128-lane score tile.
_KEYS_PER_STEP = 128
# Query rows (tokens x heads of one KV head) per grid step, for batches with more tokens than sequences.
_ROWS_PER_BLOCK = 128
# Tokens per grid step are a multiple of this, so rows stay aligned to bf16's 16-row tiles.
_TOKEN_ALIGN = 16


@dataclasses.dataclass(frozen=True)
class PallasOptions:
    # Run the Pallas kernels in interpret mode (CPU testing of the TPU kernel).
    interpret: bool = False


@register_backend("pallas", options=PallasOptions, platforms=("tpu",))
class PallasBackend(KernelBackend):
    @classmethod
    def unavailable_reason(cls, options: Optional[PallasOptions] = None) -> Optional[str]:
        if options is not None and options.interpret:
            return None
        platform = jax.default_backend()
        if platform != "tpu":
            return f"needs a TPU, but jax's default backend is {platform!r} (set backend.interpret=true to run " \
                   "the kernel in interpret mode on CPU)"
        return None

    @property
    def interpret(self) -> bool:
        return self.options.interpret

    def kv_cache_shape(self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int) -> tuple:
        return (num_pages, num_kv_heads, page_size, head_dim)

    def attention(self, q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: KVCache, md: AttentionMetadata,
                  spec: AttentionSpec) -> Tuple[jax.Array, KVCache]:
        reason = self.unavailable_reason(self.options)
        if reason is not None:
            raise RuntimeError(f"pallas backend cannot run here: {reason}")
        k_pages, v_pages = write_kv(kv_cache, k, v, md.slot_mapping)
        out = ragged_paged_attention(q, k_pages, v_pages, md, spec, interpret=self.interpret)
        return out, (k_pages, v_pages)


def write_kv(kv_cache: KVCache, k: jax.Array, v: jax.Array, slot_mapping: jax.Array) -> KVCache:
    """Scatter token t's [KV, hd] rows into page slot_mapping[t] // page_size at offset slot % page_size."""
    k_pages, v_pages = kv_cache
    page_size = k_pages.shape[2]
    pages, offsets = slot_mapping // page_size, slot_mapping % page_size
    # Advanced indices on axes 0 and 2 around a slice: the indexed view is [T, KV, hd], matching k.
    k_pages = k_pages.at[pages, :, offsets].set(k.astype(k_pages.dtype), mode="promise_in_bounds")
    v_pages = v_pages.at[pages, :, offsets].set(v.astype(v_pages.dtype), mode="promise_in_bounds")
    return k_pages, v_pages


def ragged_paged_attention(
    q: jax.Array,
    k_pages: jax.Array,
    v_pages: jax.Array,
    md: AttentionMetadata,
    spec: AttentionSpec,
    *,
    interpret: bool = False,
    block_tokens: Optional[int] = None,
) -> jax.Array:
    """Attention of every token over its sequence's pages (which already hold this step's K/V)."""
    num_tokens, num_heads, head_dim = q.shape
    num_pages, num_kv_heads, page_size, cache_head_dim = k_pages.shape
    max_seqs, pages_per_seq = md.page_table.shape
    if k_pages.shape != v_pages.shape:
        raise ValueError(f"k_pages {k_pages.shape} and v_pages {v_pages.shape} must have one shape")
    if cache_head_dim != head_dim:
        raise ValueError(f"cache head_dim {cache_head_dim} differs from q's head_dim {head_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"q has {num_heads} heads, not a multiple of the cache's {num_kv_heads} KV heads")
    group = num_heads // num_kv_heads
    if block_tokens is None:
        block_tokens = _default_block_tokens(num_tokens, max_seqs, group)
    if block_tokens % _TOKEN_ALIGN:
        raise ValueError(f"block_tokens={block_tokens} must be a multiple of {_TOKEN_ALIGN}")
    pages_per_step = max(1, min(pages_per_seq, _KEYS_PER_STEP // page_size))

    padded_tokens = -(-num_tokens // block_tokens) * block_tokens
    pad = padded_tokens - num_tokens
    positions = jnp.pad(jnp.asarray(md.positions, jnp.int32), (0, pad))
    seq_ids = jnp.pad(jnp.asarray(md.token_seq_ids, jnp.int32), (0, pad), constant_values=max_seqs)
    rows = padded_tokens * group
    # [T, H, hd] -> [KV, T * G, hd]: row t * G + g is token t, query head kv_head * G + g.
    q_rows = jnp.pad(q.astype(k_pages.dtype), ((0, pad), (0, 0), (0, 0)))
    q_rows = q_rows.reshape(padded_tokens, num_kv_heads, group, head_dim).transpose(1, 0, 2, 3)
    q_rows = q_rows.reshape(num_kv_heads, rows, head_dim)
    row_positions = jnp.repeat(positions, group)[:, None]
    row_seq_ids = jnp.repeat(seq_ids, group)[:, None]

    block_rows = block_tokens * group
    keys_per_step = pages_per_step * page_size
    kernel = functools.partial(
        _attention_kernel, block_tokens=block_tokens, page_size=page_size, pages_per_seq=pages_per_seq,
        pages_per_step=pages_per_step, scale=spec.scale, window=spec.sliding_window, soft_cap=spec.logit_soft_cap,
        chunk=spec.chunk_size)
    row_block = pl.BlockSpec((block_rows, 1), lambda i, h, *_: (i, 0))
    q_block = pl.BlockSpec((None, block_rows, head_dim), lambda i, h, *_: (h, i, 0))
    grid_spec = pltpu.PrefetchScalarGridSpec(
        num_scalar_prefetch=5,
        grid=(padded_tokens // block_tokens, num_kv_heads),
        in_specs=[row_block, row_block, q_block, pl.BlockSpec(memory_space=pl.ANY),
                  pl.BlockSpec(memory_space=pl.ANY)],
        out_specs=q_block,
        scratch_shapes=[
            pltpu.VMEM((2, keys_per_step, head_dim), k_pages.dtype),
            pltpu.VMEM((2, keys_per_step, head_dim), v_pages.dtype),
            pltpu.SemaphoreType.DMA((2, 2)),
            pltpu.VMEM((block_rows, 1), jnp.float32),
            pltpu.VMEM((block_rows, 1), jnp.float32),
            pltpu.VMEM((block_rows, head_dim), jnp.float32),
        ],
    )
    out = pl.pallas_call(
        kernel,
        grid_spec=grid_spec,
        out_shape=jax.ShapeDtypeStruct((num_kv_heads, rows, head_dim), q.dtype),
        compiler_params=pltpu.CompilerParams(dimension_semantics=("parallel", "parallel")),
        interpret=pltpu.InterpretParams() if interpret else False,
        name="surge_ragged_paged_attention",
    )(
        jnp.asarray(md.page_table, jnp.int32).reshape(-1), jnp.asarray(md.cu_q_lens, jnp.int32),
        jnp.asarray(md.kv_lens, jnp.int32), jnp.asarray(md.num_seqs, jnp.int32).reshape(1), positions,
        row_positions, row_seq_ids, q_rows, k_pages, v_pages,
    )
    out = out.reshape(num_kv_heads, padded_tokens, group, head_dim).transpose(1, 0, 2, 3)
    return out.reshape(padded_tokens, num_heads, head_dim)[:num_tokens]


def _default_block_tokens(num_tokens: int, max_seqs: int, group: int) -> int:
    # A decode bucket (a token per sequence) spreads one sequence over a whole block's rows, so keep
    # blocks small there; otherwise aim for _ROWS_PER_BLOCK rows.
    if num_tokens <= max_seqs:
        return _TOKEN_ALIGN
    return max(_TOKEN_ALIGN, (_ROWS_PER_BLOCK // group) // _TOKEN_ALIGN * _TOKEN_ALIGN)


def _attention_kernel(
    # scalar prefetch (SMEM)
    page_table_ref, cu_q_lens_ref, kv_lens_ref, num_seqs_ref, positions_ref,
    # blocked inputs (VMEM) and the caches (HBM)
    row_positions_ref, row_seq_ids_ref, q_ref, k_hbm, v_hbm,
    # output block (VMEM)
    out_ref,
    # scratch
    k_buf, v_buf, sems, row_max_ref, row_sum_ref, acc_ref,
    *, block_tokens, page_size, pages_per_seq, pages_per_step, scale, window, soft_cap, chunk,
):
    block = pl.program_id(0)
    kv_head = pl.program_id(1)
    block_begin = block * block_tokens
    block_end = block_begin + block_tokens
    keys_per_step = pages_per_step * page_size

    row_max_ref[...] = jnp.full(row_max_ref.shape, -jnp.inf, jnp.float32)
    row_sum_ref[...] = jnp.zeros(row_sum_ref.shape, jnp.float32)
    acc_ref[...] = jnp.zeros(acc_ref.shape, jnp.float32)

    def page_copies(seq, first_page, page_end, step, slot):
        """The DMAs of one step's pages (those below page_end) into buffer slot `slot`."""
        copies = []
        for j in range(pages_per_step):
            page_index = first_page + step * pages_per_step + j
            page_id = page_table_ref[seq * pages_per_seq + jnp.minimum(page_index, pages_per_seq - 1)]
            rows = pl.ds(j * page_size, page_size)
            copies.append((page_index < page_end, (
                pltpu.make_async_copy(k_hbm.at[page_id, kv_head], k_buf.at[slot, rows], sems.at[0, slot]),
                pltpu.make_async_copy(v_hbm.at[page_id, kv_head], v_buf.at[slot, rows], sems.at[1, slot]))))
        return copies

    def when_needed(copies, action):
        for needed, pair in copies:
            pl.when(needed)(functools.partial(_for_each, pair, action))

    def start(copies):
        when_needed(copies, "start")

    def wait(copies):
        when_needed(copies, "wait")

    def attend(seq, key_begin, key_end):
        """Online-softmax update of seq's rows with its keys [key_begin, key_end)."""
        # lax.div/rem (truncating) rather than // and %: all operands are >= 0, and Mosaic's lowering of
        # floor division needs to know the TPU generation, which a CPU host lowering for TPU does not.
        first_page = jax.lax.div(key_begin, page_size)
        page_end = jax.lax.div(key_end + page_size - 1, page_size)
        num_steps = jax.lax.div(page_end - first_page + pages_per_step - 1, pages_per_step)
        start(page_copies(seq, first_page, page_end, 0, 0))

        q = q_ref[...]
        row_pos = row_positions_ref[...]
        is_seq_row = row_seq_ids_ref[...] == seq

        def step_body(step, carry):
            slot = jax.lax.rem(step, 2)

            @pl.when(step + 1 < num_steps)
            def _():
                start(page_copies(seq, first_page, page_end, step + 1, 1 - slot))

            wait(page_copies(seq, first_page, page_end, step, slot))
            step_key0 = (first_page + step * pages_per_step) * page_size
            key_col = step_key0 + jax.lax.broadcasted_iota(jnp.int32, (keys_per_step, 1), 0)
            key_row = step_key0 + jax.lax.broadcasted_iota(jnp.int32, (1, keys_per_step), 1)
            keys = k_buf[slot]
            # Rows past key_end hold whatever the buffer had (NaN when fresh): keep them out of P @ V.
            values = jnp.where(key_col < key_end, v_buf[slot], 0)

            scores = jax.lax.dot_general(q, keys, (((1,), (1,)), ((), ())),
                                         preferred_element_type=jnp.float32) * scale
            if soft_cap is not None:
                scores = soft_cap * jnp.tanh(scores / soft_cap)
            visible = is_seq_row & (key_row < key_end) & (key_row <= row_pos)
            if window is not None:
                visible = visible & (key_row > row_pos - window)
            if chunk is not None:
                visible = visible & (key_row >= row_pos // chunk * chunk)
            scores = jnp.where(visible, scores, -jnp.inf)

            prev_max = row_max_ref[...]
            new_max = jnp.maximum(prev_max, jnp.max(scores, axis=1, keepdims=True))
            # Rows that have seen no key keep max -inf; shift by 0 so exp never sees -inf - -inf.
            shift = jnp.where(new_max == -jnp.inf, 0.0, new_max)
            probs = jnp.exp(scores - shift)
            rescale = jnp.exp(prev_max - shift)
            row_sum_ref[...] = row_sum_ref[...] * rescale + jnp.sum(probs, axis=1, keepdims=True)
            acc_ref[...] = acc_ref[...] * rescale + jax.lax.dot_general(
                probs.astype(values.dtype), values, (((1,), (0,)), ((), ())), preferred_element_type=jnp.float32)
            row_max_ref[...] = new_max
            return carry

        jax.lax.fori_loop(0, num_steps, step_body, 0)

    def seq_body(seq, carry):
        q_begin = cu_q_lens_ref[seq]
        q_end = cu_q_lens_ref[seq + 1]
        first = jnp.maximum(q_begin, block_begin)
        last = jnp.minimum(q_end, block_end) - 1

        @pl.when(first <= last)
        def _():
            key_end = jnp.minimum(kv_lens_ref[seq], positions_ref[last] + 1)
            key_begin = 0 if window is None else jnp.maximum(positions_ref[first] - window + 1, 0)
            if chunk is not None:
                key_begin = jnp.maximum(key_begin, positions_ref[first] // chunk * chunk)

            @pl.when(key_begin < key_end)
            def _():
                attend(seq, key_begin, key_end)

        return carry

    jax.lax.fori_loop(0, num_seqs_ref[0], seq_body, 0)

    row_sum = row_sum_ref[...]
    result = jnp.where(row_sum > 0, acc_ref[...] / jnp.where(row_sum > 0, row_sum, 1.0), 0.0)
    out_ref[...] = result.astype(out_ref.dtype)


def _for_each(copies, action: str) -> None:
    for copy in copies:
        getattr(copy, action)()
