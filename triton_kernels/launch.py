"""Grids and compile-time constants for the kernels in ``paged_attention``.

In: the problem's static sizes (tokens, heads, head_dim, page size, sequences,
pages per sequence), the attention options and the cache dtype's name.
Out: ``(grid, constexprs)`` pairs that every caller passes unchanged, the
Triton interpreter tests with torch tensors and the JAX backend through
``jax_triton.triton_call``, so both run the exact same specialisation.
Pure Python: imports neither triton nor jax.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

Launch = Tuple[Tuple[int, ...], Dict[str, object]]

# Rows (tokens x query heads of one KV head) per attention program, and keys per
# inner step: a 64 x head_dim query tile against 64-key tiles suits an H100 at
# 4 warps, and both are >= 16, the smallest tile tl.dot accepts.
DEFAULT_BLOCK_ROWS = 64
DEFAULT_BLOCK_KEYS = 64


def next_power_of_2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def kv_cache_shape(num_pages: int, page_size: int, num_kv_heads: int, head_dim: int) -> tuple:
    """Shape of each of a layer's K and V page arrays for these kernels."""
    return (num_pages, num_kv_heads, page_size, head_dim)


def write_kv_launch(num_tokens: int, num_kv_heads: int, head_dim: int, page_size: int) -> Launch:
    _check_positive(num_tokens=num_tokens, num_kv_heads=num_kv_heads, head_dim=head_dim, page_size=page_size)
    return (num_tokens,), dict(
        NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, PAGE_SIZE=page_size,
        KV_HEADS_P=next_power_of_2(num_kv_heads), HEAD_DIM_P=max(16, next_power_of_2(head_dim)))


def attention_launch(
    *,
    num_tokens: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    page_size: int,
    max_seqs: int,
    pages_per_seq: int,
    scale: float,
    sliding_window: Optional[int],
    logit_soft_cap: Optional[float],
    cache_dtype: str,
    attention_chunk: Optional[int] = None,
    block_rows: int = DEFAULT_BLOCK_ROWS,
    block_keys: int = DEFAULT_BLOCK_KEYS,
) -> Launch:
    """Grid ``(num_tokens // block_q + max_seqs, num_kv_heads)`` and the attention kernel's constexprs."""
    _check_positive(num_tokens=num_tokens, num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim,
                    page_size=page_size, max_seqs=max_seqs, pages_per_seq=pages_per_seq)
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    if sliding_window is not None and sliding_window <= 0:
        raise ValueError(f"sliding_window={sliding_window} must be positive or None")
    if logit_soft_cap is not None and logit_soft_cap <= 0:
        raise ValueError(f"logit_soft_cap={logit_soft_cap} must be positive or None")
    if attention_chunk is not None and attention_chunk <= 0:
        raise ValueError(f"attention_chunk={attention_chunk} must be positive or None")
    for name, value in (("block_rows", block_rows), ("block_keys", block_keys)):
        if value < 16 or value != next_power_of_2(value):
            raise ValueError(f"{name}={value} must be a power of two >= 16")
    group = num_heads // num_kv_heads
    group_p = next_power_of_2(group)
    block_q = max(1, block_rows // group_p)
    grid = (num_tokens // block_q + max_seqs, num_kv_heads)
    return grid, dict(
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_DIM=head_dim, PAGE_SIZE=page_size,
        PAGES_PER_SEQ=pages_per_seq, MAX_SEQS=max_seqs, SCALE=float(scale),
        SOFT_CAP=float(logit_soft_cap or 0.0), WINDOW=int(sliding_window or 0),
        CHUNK=int(attention_chunk or 0),
        GROUP=group, GROUP_P=group_p, HEAD_DIM_P=max(16, next_power_of_2(head_dim)),
        SEQS_P=next_power_of_2(max_seqs), BLOCK_Q=block_q, BLOCK_N=block_keys,
        DOT_PRECISION="ieee" if cache_dtype == "float32" else "tf32")


def _check_positive(**sizes: int) -> None:
    for name, value in sizes.items():
        if int(value) <= 0:
            raise ValueError(f"{name}={value} must be positive")
