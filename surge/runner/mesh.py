"""The device mesh every array is placed on: axes (`dp`, `tp`), even on one device.

In: the engine config's data/tensor parallel sizes. Out: a jax.sharding.Mesh, and
the NamedSharding of each parameter (a rule per weight kind: column-parallel for
projections that fan out, row-parallel for those that fan in, mixture-of-experts stacks
split by expert (expert parallel), replicated else). These rules place what XLA's partitioner
splits: mixture-of-experts models and draft models. A dense model under tp > 1 is instead cut into
per-device shard models and run in shard_map (surge.parallel.tensor_parallel).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from surge.config import EngineConfig


def make_mesh(engine: EngineConfig) -> Mesh:
    needed = engine.data_parallel_size * engine.tensor_parallel_size
    devices = jax.devices()
    if needed > len(devices):
        raise ValueError(f"engine.data_parallel_size x engine.tensor_parallel_size = {needed} devices, "
                         f"but only {len(devices)} are visible ({devices[0].platform})")
    grid = np.array(devices[:needed]).reshape(engine.data_parallel_size, engine.tensor_parallel_size)
    return Mesh(grid, ("dp", "tp"))


# Substrings of a parameter's path -> which axis of the 2-D weight is split over tp.
_COLUMN_PARALLEL = ("qkv", "q_proj", "k_proj", "v_proj", "gate_up", "gate_proj", "up_proj", "lm_head")
_ROW_PARALLEL = ("o_proj", "down_proj", "out_proj")


# Mixture-of-experts stacks [E, in, out] (or packed [E, in * out]): split by expert over tp (expert parallel).
_EXPERT_STACKS = ("experts_gate_up", "experts_down")


def param_sharding(path: str, shape: tuple, mesh: Mesh) -> NamedSharding:
    tp = mesh.shape["tp"]
    spec = [None] * len(shape)
    if tp > 1 and any(k in path for k in _EXPERT_STACKS):
        if shape[0] % tp == 0:
            spec[0] = "tp"
    elif len(shape) == 2 and tp > 1:
        lowered = path.lower()
        if any(k in lowered for k in _COLUMN_PARALLEL) and shape[1] % tp == 0:
            spec[1] = "tp"
        elif any(k in lowered for k in _ROW_PARALLEL) and shape[0] % tp == 0:
            spec[0] = "tp"
    return NamedSharding(mesh, PartitionSpec(*spec))


def shard_state(state, mesh: Mesh):
    """device_put every leaf of an nnx State with its NamedSharding."""
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    treedef = jax.tree_util.tree_structure(state)
    leaves = []
    for path, leaf in flat:
        name = jax.tree_util.keystr(path)
        leaves.append(jax.device_put(leaf, param_sharding(name, np.shape(leaf), mesh)))
    return jax.tree_util.tree_unflatten(treedef, leaves)
