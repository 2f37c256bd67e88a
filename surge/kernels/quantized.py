"""GGUF-quantized weights as surge holds them, and their meaning on every backend.

A quantized weight is a plain uint8 array [N, K / 32, block_bytes]: its N output rows, each
K / 32 GGUF blocks exactly as the file stores them; block_bytes names the type (34 Q8_0,
18 Q4_0, 20 Q4_1; csrc/cpu/kernels.h gives the block formats). The rows are always the
outputs: a projection whose float form is [K, N] and an embedding table [N, K] (read
transposed as a tied lm_head, or row by row for the token lookup) are both stored this way,
so ``x @ W`` and ``x @ table.T`` are both "x against the stored rows".

In: such an array (and token ids for ``take_rows``). Out: ``dequantize`` float32 [N, K]
(what a backend without a quantized kernel multiplies), ``take_rows`` float32 [T, K] of the
rows named by ids (the embedding lookup), ``is_quantized`` / ``quant_type`` to tell one apart.
The cpu backend multiplies these arrays in their quantized form (surge.kernels.cpu_matmul).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

BLOCK = 32
# block_bytes -> GGUF type name.
BLOCK_BYTES = {34: "Q8_0", 18: "Q4_0", 20: "Q4_1"}
TYPE_BLOCK_BYTES = {name: size for size, name in BLOCK_BYTES.items()}


def quant_type(w) -> Optional[str]:
    """"Q8_0" / "Q4_0" / "Q4_1" for a quantized weight, None for anything else."""
    if getattr(w, "ndim", 0) != 3 or jnp.dtype(w.dtype) != jnp.uint8:
        return None
    return BLOCK_BYTES.get(int(w.shape[2]))


def is_quantized(w) -> bool:
    return quant_type(w) is not None


def in_features(w) -> int:
    """K of a quantized weight."""
    return int(w.shape[1]) * BLOCK


def _half(lo: jax.Array, hi: jax.Array) -> jax.Array:
    bits = lo.astype(jnp.uint16) | (hi.astype(jnp.uint16) << 8)
    return jax.lax.bitcast_convert_type(bits, jnp.float16).astype(jnp.float32)


def _dequantize_blocks(blocks: jax.Array) -> jax.Array:
    """[..., block_bytes] uint8 -> [..., 32] float32 (GGUF's own formulas)."""
    kind = BLOCK_BYTES[int(blocks.shape[-1])]
    d = _half(blocks[..., 0], blocks[..., 1])[..., None]
    if kind == "Q8_0":
        q = jax.lax.bitcast_convert_type(blocks[..., 2:], jnp.int8).astype(jnp.float32)
        return d * q
    offset = 4 if kind == "Q4_1" else 2
    packed = blocks[..., offset:]
    q = jnp.concatenate([packed & 0x0F, packed >> 4], axis=-1).astype(jnp.float32)
    if kind == "Q4_0":
        return d * (q - 8.0)
    return d * q + _half(blocks[..., 2], blocks[..., 3])[..., None]


def dequantize(w: jax.Array) -> jax.Array:
    """[N, K / 32, block_bytes] -> float32 [N, K]."""
    if not is_quantized(w):
        raise ValueError(f"not a quantized weight: shape {getattr(w, 'shape', None)}, dtype "
                         f"{getattr(w, 'dtype', None)} (want uint8 [N, K / 32, block_bytes in {sorted(BLOCK_BYTES)}])")
    return _dequantize_blocks(w).reshape(w.shape[0], -1)


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """float32 [*ids.shape, K]: rows `ids` of a quantized table (only those are dequantized)."""
    rows = jnp.take(table, ids, axis=0)
    return _dequantize_blocks(rows).reshape(*ids.shape, -1)

