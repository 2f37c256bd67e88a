"""GGUF-quantized weights as surge holds them, and their meaning on every backend.

A quantized weight is a plain uint8 array [N, K / B, block_bytes]: its N output rows, each
K / B GGUF blocks of B weights exactly as the file stores them; block_bytes names the type
(B = 32: 34 Q8_0, 18 Q4_0, 20 Q4_1; B = 256, the K-quants' super-blocks: 144 Q4_K, 176 Q5_K,
210 Q6_K; csrc/cpu/kernels.h gives the block formats). The rows are always the
outputs: a projection whose float form is [K, N] and an embedding table [N, K] (read
transposed as a tied lm_head, or row by row for the token lookup) are both stored this way,
so ``x @ W`` and ``x @ table.T`` are both "x against the stored rows".

In: such an array (and token ids for ``take_rows``). Out: ``dequantize`` float32 [N, K]
(what a backend without a quantized kernel multiplies), ``take_rows`` float32 [T, K] of the
rows named by ids (the embedding lookup), ``is_quantized`` / ``quant_type`` to tell one apart
(``quant_types`` lists those of a model's arrays).
The cpu backend multiplies these arrays in their quantized form (surge.kernels.cpu_matmul).
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

BLOCK = 32
SUPER_BLOCK = 256
# block_bytes -> GGUF type name.
BLOCK_BYTES = {34: "Q8_0", 18: "Q4_0", 20: "Q4_1", 144: "Q4_K", 176: "Q5_K", 210: "Q6_K"}
TYPE_BLOCK_BYTES = {name: size for size, name in BLOCK_BYTES.items()}
K_QUANTS = ("Q4_K", "Q5_K", "Q6_K")


def block_weights(type_name: str) -> int:
    """Weights per block of a type: 32, or 256 for the K-quants."""
    return SUPER_BLOCK if type_name in K_QUANTS else BLOCK


def quant_type(w) -> Optional[str]:
    """"Q8_0" / "Q4_0" / "Q4_1" / "Q4_K" / "Q5_K" / "Q6_K" for a quantized weight, None for anything else."""
    if getattr(w, "ndim", 0) != 3 or jnp.dtype(w.dtype) != jnp.uint8:
        return None
    return BLOCK_BYTES.get(int(w.shape[2]))


def is_quantized(w) -> bool:
    return quant_type(w) is not None


def quant_types(arrays) -> list:
    """The quantized types among `arrays`, sorted (empty when none is quantized)."""
    return sorted({kind for kind in map(quant_type, arrays) if kind is not None})


def in_features(w) -> int:
    """K of a quantized weight."""
    return int(w.shape[1]) * block_weights(quant_type(w))


def _half(lo: jax.Array, hi: jax.Array) -> jax.Array:
    bits = lo.astype(jnp.uint16) | (hi.astype(jnp.uint16) << 8)
    return jax.lax.bitcast_convert_type(bits, jnp.float16).astype(jnp.float32)


def _nibbles(packed: jax.Array) -> jax.Array:
    """[..., c, 32] bytes -> [..., 2 c, 32]: each run of 32 bytes' low nibbles, then its high ones."""
    both = jnp.stack([packed & 0x0F, packed >> 4], axis=-2)
    return both.reshape(*packed.shape[:-2], 2 * packed.shape[-2], packed.shape[-1])


def _k_scales_mins(packed: jax.Array):
    """Q4_K / Q5_K's 12 bytes -> the 6-bit scales and mins of the 8 sub-blocks, [..., 8] float32 each."""
    lo, mid, hi = packed[..., 0:4], packed[..., 4:8], packed[..., 8:12]
    scales = jnp.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=-1)
    mins = jnp.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=-1)
    return scales.astype(jnp.float32), mins.astype(jnp.float32)


def _dequantize_super_blocks(blocks: jax.Array, kind: str) -> jax.Array:
    """[..., block_bytes] uint8 super-blocks -> [..., 256] float32 (the formulas of csrc/cpu/kernels.h)."""
    lead = blocks.shape[:-1]
    if kind == "Q6_K":
        low = _nibbles(blocks[..., 0:128].reshape(*lead, 4, 32))  # rows h, 32 (u % 2) + i: [.., 8, 32]
        low = low.reshape(*lead, 2, 2, 2, 32).swapaxes(-2, -3).reshape(*lead, 8, 32)
        high = blocks[..., 128:192].reshape(*lead, 2, 1, 32) >> jnp.asarray([0, 2, 4, 6], jnp.uint8)[:, None]
        q = (low | ((high.reshape(*lead, 8, 32) & 3) << 4)).astype(jnp.float32) - 32.0
        scales = jax.lax.bitcast_convert_type(blocks[..., 192:208], jnp.int8).astype(jnp.float32)
        d = _half(blocks[..., 208], blocks[..., 209])[..., None]
        return ((d * scales)[..., None] * q.reshape(*lead, 16, 16)).reshape(*lead, SUPER_BLOCK)
    d = _half(blocks[..., 0], blocks[..., 1])[..., None]
    dmin = _half(blocks[..., 2], blocks[..., 3])[..., None]
    scales, mins = _k_scales_mins(blocks[..., 4:16])
    if kind == "Q4_K":
        q = _nibbles(blocks[..., 16:144].reshape(*lead, 4, 32))
    else:  # Q5_K: bit j of qh[i] is the fifth bit of weight i of sub-block j
        high = blocks[..., 16:48][..., None, :] >> jnp.arange(8, dtype=jnp.uint8)[:, None]
        q = _nibbles(blocks[..., 48:176].reshape(*lead, 4, 32)) | ((high & 1) << 4)
    w = (d * scales)[..., None] * q.astype(jnp.float32) - (dmin * mins)[..., None]
    return w.reshape(*lead, SUPER_BLOCK)


def _dequantize_blocks(blocks: jax.Array) -> jax.Array:
    """[..., block_bytes] uint8 -> [..., 32 or 256] float32 (GGUF's own formulas)."""
    kind = BLOCK_BYTES[int(blocks.shape[-1])]
    if kind in K_QUANTS:
        return _dequantize_super_blocks(blocks, kind)
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
    """[N, K / B, block_bytes] -> float32 [N, K]."""
    if not is_quantized(w):
        raise ValueError(f"not a quantized weight: shape {getattr(w, 'shape', None)}, dtype "
                         f"{getattr(w, 'dtype', None)} (want uint8 [N, K / B, block_bytes in {sorted(BLOCK_BYTES)}])")
    return _dequantize_blocks(w).reshape(w.shape[0], -1)


def take_rows(table: jax.Array, ids: jax.Array) -> jax.Array:
    """float32 [*ids.shape, K]: rows `ids` of a quantized table (only those are dequantized)."""
    rows = jnp.take(table, ids, axis=0)
    return _dequantize_blocks(rows).reshape(*ids.shape, -1)

