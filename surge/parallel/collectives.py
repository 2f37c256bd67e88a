"""The collectives a tensor-parallel model calls inside ``shard_map``: pure JAX, no state.

In: a value computed on one device's shard and the mesh axis name the model was split over
(None = not split: every function is then the identity or the plain single-device op).
Out: the value every device of that axis agrees on.

- ``reduce_partial``: the one all-reduce (psum) after a row-parallel projection (o_proj, down_proj),
  whose per-device products are partial sums of the full product.
- ``embed_lookup``: token rows of an embedding table split by vocabulary rows; each device looks up
  the ids that fall in its slice (zeros elsewhere) and one psum gives every device the full rows.
  Exact: each row is the sum of one real row and zeros.
- ``gather_vocab``: logits [rows, vocab / T] of each device's vocabulary slice, all-gathered into
  the full [rows, vocab] (the padding columns past ``vocab_size`` cut off), so the sampler sees every
  token's logit.
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp


def reduce_partial(x: jax.Array, axis: Optional[str]) -> jax.Array:
    return x if axis is None else jax.lax.psum(x, axis)


def embed_lookup(table: jax.Array, ids: jax.Array, axis: Optional[str],
                 take: Callable[[jax.Array, jax.Array], jax.Array]) -> jax.Array:
    """Rows `ids` of `table` (this device's vocabulary slice when `axis` is set); ``take(table, ids)`` reads rows."""
    if axis is None:
        return take(table, ids)
    rows_here = table.shape[0]
    local = ids - jax.lax.axis_index(axis) * rows_here
    mine = (local >= 0) & (local < rows_here)
    rows = take(table, jnp.where(mine, local, 0))
    return jax.lax.psum(jnp.where(mine[:, None], rows, jnp.zeros((), rows.dtype)), axis)


def gather_vocab(logits: jax.Array, axis: Optional[str], vocab_size: int) -> jax.Array:
    if axis is None:
        return logits
    full = jax.lax.all_gather(logits, axis, axis=logits.ndim - 1, tiled=True)
    return full[..., :vocab_size]
