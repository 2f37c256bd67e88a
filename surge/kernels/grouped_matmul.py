"""A grouped (mixture-of-experts) matmul as XLA loops: each row meets only its own group's weights.

In: rows x [M, in] sorted by group, weights w [G, in, out], group_sizes int32[G] (the next
group_sizes[g] rows belong to group g). Out: float32 [M, out] (rows past sum(group_sizes): zeros).

XLA:CPU lowers jax.lax.ragged_dot densely (every row against every group, then masked: G times
the work and a [G, M, in] temporary). Here a scan over the groups walks each group's rows in
tiles of `tile` rows (a fori_loop whose trip count is that group's tile count), multiplies a tile
by the group's weights once and writes back only the rows that are the group's, so the work is the
routed rows (rounded up to tiles) and each group's weights are read once per tile. Shapes are
static; the loops have data-dependent trip counts, so nothing recompiles with the routing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def default_tile(num_rows: int, num_groups: int) -> int:
    """Rows per tile: about the rows a group gets, a power of two in [16, 64]."""
    per_group = max(1, num_rows // max(1, num_groups))
    return max(16, min(64, 1 << (per_group.bit_length() - 1)))


def grouped_matmul_loops(x: jax.Array, w: jax.Array, group_sizes: jax.Array, tile: int = 0) -> jax.Array:
    num_rows = x.shape[0]
    tile = tile or default_tile(num_rows, w.shape[0])
    group_sizes = group_sizes.astype(jnp.int32)
    starts = jnp.cumsum(group_sizes) - group_sizes
    padded = jnp.concatenate([x, jnp.zeros((tile, x.shape[1]), x.dtype)])  # a last tile never reads past the end
    row_in_tile = jnp.arange(tile, dtype=jnp.int32)[:, None]

    def group(out, args):
        weights, start, size = args

        def one_tile(i, out):
            first = start + i * tile
            y = jnp.dot(jax.lax.dynamic_slice_in_dim(padded, first, tile), weights,
                        preferred_element_type=jnp.float32)
            mine = row_in_tile < size - i * tile  # rows of the next group keep what they hold
            old = jax.lax.dynamic_slice_in_dim(out, first, tile)
            return jax.lax.dynamic_update_slice_in_dim(out, jnp.where(mine, y, old), first, 0)

        return jax.lax.fori_loop(0, (size + tile - 1) // tile, one_tile, out), None

    out = jnp.zeros((num_rows + tile, w.shape[2]), jnp.float32)
    out, _ = jax.lax.scan(group, out, (w, starts, group_sizes))
    return out[:num_rows]
