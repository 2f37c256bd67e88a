"""Triton kernel backend: the kernels of ``triton_kernels`` called through jax-triton on a GPU.

In: per layer, q [T, H, hd], k and v [T, KV, hd], the layer's cache
``(k_pages, v_pages)`` each [num_pages, KV, page_size, hd] (this backend's
layout: one page of one KV head is contiguous) and the shared AttentionMetadata.
Out: attention output [T, H, hd] in q's dtype and the cache with this step's
K/V written.

Two launches per layer: ``write_kv_kernel`` scatters the new rows into the
pages with the cache aliased in place (``input_output_aliases``; with the cache
donated to the enclosing jit, XLA writes into the same buffer), then
``paged_attention_kernel`` reads them. Launch shapes and constants come from
``triton_kernels.launch``, the same ones the CPU interpreter tests run.

jax_triton refuses to import on a CPU-only jax, so it (and triton) are imported
only inside this backend's methods; importing this module costs nothing.
"""

from __future__ import annotations

import importlib
from typing import Optional, Tuple

import jax
import jax.numpy as jnp

from surge.kernels.base import AttentionSpec, KernelBackend, KVCache
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.registry import register_backend
from surge.triton_kernels import launch

_GPU_PLATFORMS = ("gpu", "cuda", "rocm")
# Warps and pipeline stages per attention program (64-row tiles; see launch.DEFAULT_BLOCK_ROWS).
_NUM_WARPS = 4
_NUM_STAGES = 2


@register_backend("triton", platforms=("gpu", "cuda", "rocm"))
class TritonBackend(KernelBackend):
    @classmethod
    def unavailable_reason(cls, options=None) -> Optional[str]:
        platform = jax.default_backend()
        if platform not in _GPU_PLATFORMS:
            return f"needs a GPU, but jax's default backend is {platform!r}"
        for module in ("triton", "jax_triton"):
            try:
                importlib.import_module(module)
            except ImportError as exc:
                return f"cannot import {module} ({exc}); install surge[gpu]"
        return None

    def kv_cache_shape(self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int) -> tuple:
        return launch.kv_cache_shape(num_pages, page_size, num_kv_heads, head_dim)

    def attention(self, q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: KVCache, md: AttentionMetadata,
                  spec: AttentionSpec) -> Tuple[jax.Array, KVCache]:
        import jax_triton
        from surge.triton_kernels import paged_attention as kernels

        k_pages, v_pages = kv_cache
        _check_shapes(q, k, v, k_pages, v_pages)
        num_tokens, num_heads, head_dim = q.shape
        _, num_kv_heads, page_size, _ = k_pages.shape
        max_seqs, pages_per_seq = md.page_table.shape

        grid, meta = launch.write_kv_launch(num_tokens, num_kv_heads, head_dim, page_size)
        cache_shape = jax.ShapeDtypeStruct(k_pages.shape, k_pages.dtype)
        k_pages, v_pages = jax_triton.triton_call(
            k.astype(k_pages.dtype), v.astype(v_pages.dtype), _i32(md.slot_mapping), k_pages, v_pages,
            kernel=kernels.write_kv_kernel, out_shape=(cache_shape, cache_shape), grid=grid,
            input_output_aliases={3: 0, 4: 1}, num_warps=1, num_stages=1, name="surge_write_kv", **meta)

        grid, meta = launch.attention_launch(
            num_tokens=num_tokens, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
            page_size=page_size, max_seqs=max_seqs, pages_per_seq=pages_per_seq, scale=spec.scale,
            sliding_window=spec.sliding_window, logit_soft_cap=spec.logit_soft_cap, attention_chunk=spec.chunk_size,
            cache_dtype=jnp.dtype(k_pages.dtype).name)
        out = jax_triton.triton_call(
            q, k_pages, v_pages, _i32(md.page_table), _i32(md.cu_q_lens), _i32(md.kv_lens), _i32(md.positions),
            _i32(md.num_seqs).reshape(1),
            kernel=kernels.paged_attention_kernel, out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype), grid=grid,
            zeroed_outputs=(0,), num_warps=_NUM_WARPS, num_stages=_NUM_STAGES, name="surge_paged_attention", **meta)
        return out, (k_pages, v_pages)


def _i32(x) -> jax.Array:
    return jnp.asarray(x, jnp.int32)


def _check_shapes(q, k, v, k_pages, v_pages) -> None:
    num_tokens, num_heads, head_dim = q.shape
    if k_pages.shape != v_pages.shape or k_pages.ndim != 4:
        raise ValueError(f"k_pages {k_pages.shape} and v_pages {v_pages.shape} must both be "
                         "[num_pages, num_kv_heads, page_size, head_dim]")
    _, num_kv_heads, _, cache_head_dim = k_pages.shape
    expected = (num_tokens, num_kv_heads, head_dim)
    if k.shape != expected or v.shape != expected:
        raise ValueError(f"k {k.shape} and v {v.shape} must be {expected} to match q {q.shape} and the cache")
    if cache_head_dim != head_dim:
        raise ValueError(f"cache head_dim {cache_head_dim} differs from q's head_dim {head_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"q has {num_heads} heads, not a multiple of the cache's {num_kv_heads} KV heads")
