"""A step's inputs moved to the device as one buffer per dtype.

In: a pytree of numpy arrays (a StepInput). Out: ``pack`` gives its ``Layout``
(static: tree structure, each leaf's dtype, shape and offset) and one flat numpy
buffer per dtype (``pack_as``: the same buffers for a tree of a known layout, as a
compiled step's inputs are); ``unpack``, traced inside the jitted step, rebuilds the pytree
from those buffers with static slices and reshapes (free under XLA). A step then
costs a handful of host-to-device copies instead of one per leaf (about 30),
each of which costs tens of microseconds of dispatch on its own.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Tuple

import jax
import numpy as np


@dataclasses.dataclass(frozen=True)
class Layout:
    treedef: Any
    # Per leaf: (index of its buffer, offset in it, shape).
    slots: Tuple[Tuple[int, int, Tuple[int, ...]], ...]
    # The dtype of each buffer.
    dtypes: Tuple[str, ...]


def pack(tree) -> Tuple[Layout, Tuple[np.ndarray, ...]]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    dtypes: list[str] = []
    parts: list[list[np.ndarray]] = []
    sizes: list[int] = []
    slots = []
    for leaf in leaves:
        leaf = np.asarray(leaf)
        name = leaf.dtype.str
        if name not in dtypes:
            dtypes.append(name)
            parts.append([])
            sizes.append(0)
        b = dtypes.index(name)
        slots.append((b, sizes[b], leaf.shape))
        parts[b].append(leaf.reshape(-1))
        sizes[b] += leaf.size
    buffers = tuple(np.concatenate(p) if len(p) > 1 else p[0] for p in parts)
    return Layout(treedef, tuple(slots), tuple(dtypes)), buffers


def pack_as(layout: Layout, tree) -> Tuple[np.ndarray, ...]:
    """The buffers ``pack(tree)`` gives, for a tree known to have ``layout`` (a compiled step's): the step
    loop packs with it instead of deriving and comparing a layout every step. A tree of another structure,
    leaf shape or dtype raises ValueError."""
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    if treedef != layout.treedef or len(leaves) != len(layout.slots):
        raise ValueError(f"tree structure {treedef} does not match the layout's {layout.treedef}")
    parts: list[list[np.ndarray]] = [[] for _ in layout.dtypes]
    for index, (leaf, (b, _, shape)) in enumerate(zip(leaves, layout.slots)):
        leaf = np.asarray(leaf)
        if leaf.shape != shape or leaf.dtype.str != layout.dtypes[b]:
            raise ValueError(f"leaf {index} is {leaf.dtype.str}{list(leaf.shape)}, the layout has "
                             f"{layout.dtypes[b]}{list(shape)}")
        parts[b].append(leaf.reshape(-1))
    return tuple(np.concatenate(p) if len(p) > 1 else p[0] for p in parts)


def buffer_shapes(layout: Layout) -> list:
    """(shape, dtype) of each buffer ``pack`` gives for a tree of ``layout``."""
    sizes = [0] * len(layout.dtypes)
    for b, offset, shape in layout.slots:
        sizes[b] = max(sizes[b], offset + int(np.prod(shape, dtype=np.int64)))
    return [((size,), np.dtype(dtype)) for size, dtype in zip(sizes, layout.dtypes)]


def unpack(layout: Layout, buffers):
    leaves = []
    for b, offset, shape in layout.slots:
        size = int(np.prod(shape, dtype=np.int64))
        leaves.append(buffers[b][offset:offset + size].reshape(shape))
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)
