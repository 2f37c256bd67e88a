"""Tensor parallelism: a model split over the mesh's `tp` axis and run inside ``shard_map``.

In: a loaded CausalLM (unprepared: the backend has not packed its weights), the kernel backend and
the mesh. Out: a PlacedModel — the weights on the mesh as a flat list, the module structure to merge
them into, and ``hidden_states`` / ``logits`` that run the model's own methods on those weights (and
the KV cache), on every device at once.

With tp = T > 1 the model is cut into T shard models, one per device, by role (``_slice_leaf``):
- column-parallel: the fused q/k/v projection (and its bias) keeps each shard's query heads and its KV
  heads; the fused gate/up projection each shard's intermediate slice of gate and of up;
- row-parallel: o_proj and down_proj keep the matching input rows; each is followed by one psum
  (surge.parallel.collectives, called by the model where ``tp_axis`` is set);
- the embedding table and the lm_head are split by vocabulary (padded to a multiple of T with zero
  rows); the lookup is one psum, the logits one all-gather, so the sampler sees the full vocabulary;
- norms (and any other leaf) are copied whole.
KV heads: with T <= KV each shard holds KV / T of them (T must divide KV); with T > KV each holds one,
every KV head replicated T / KV times (KV must divide T), as vLLM does. The attention heads must split
evenly (T divides H). A model that cannot be split fails here, naming the numbers.

The backend prepares each shard model on its own (``prepare_model``: the cpu backend packs each
device's slice into its panels), and every leaf is stored stacked on a leading axis of size T,
sharded over `tp`: device s holds exactly shard s's arrays. Inside ``shard_map`` each device drops the
leading axis and merges its shard model, whose layers carry the shard's head counts, so the native
FFI kernels (which have no partitioning rule) run on whole local arrays. The KV cache is sharded over
`tp` on its KV-head axis (the backend's layout says which).

tp = 1, and models with mixture-of-experts layers (their expert stacks stay on the partitioner's
expert-parallel split, ``place_state``), keep the whole model and call its methods directly.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from surge.kernels import quantized

AXIS = "tp"


@dataclasses.dataclass(frozen=True)
class ShardPlan:
    """How a model's heads, MLP and vocabulary split over `tp` devices."""

    tp: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int

    @property
    def heads_per_shard(self) -> int:
        return self.num_heads // self.tp

    @property
    def kv_heads_per_shard(self) -> int:
        return max(1, self.num_kv_heads // self.tp)

    @property
    def cache_kv_heads(self) -> int:
        """KV heads of the whole (sharded) cache: the model's, or T when they are replicated."""
        return self.kv_heads_per_shard * self.tp

    @property
    def vocab_per_shard(self) -> int:
        return -(-self.vocab_size // self.tp)

    def kv_heads_of(self, shard: int) -> List[int]:
        """The model's KV heads that shard `shard` holds (one, shared with other shards, when replicated)."""
        if self.tp <= self.num_kv_heads:
            n = self.kv_heads_per_shard
            return list(range(shard * n, (shard + 1) * n))
        return [shard // (self.tp // self.num_kv_heads)]


def plan_shards(arch, tp: int) -> ShardPlan:
    """The split of `arch` over `tp` devices; ValueError naming the numbers when it does not split."""
    heads, kv, inter = arch.num_heads, arch.num_kv_heads, arch.intermediate_size
    key = f"engine.tensor_parallel_size={tp}"
    if heads % tp:
        raise ValueError(f"{key} does not divide the model's {heads} attention heads")
    if (tp <= kv and kv % tp) or (tp > kv and tp % kv):
        raise ValueError(f"{key} neither divides the model's {kv} KV heads nor is a multiple of them "
                         f"(KV heads are split when tp divides them, replicated when they divide tp)")
    if inter % tp:
        raise ValueError(f"{key} does not divide the model's intermediate_size={inter}")
    return ShardPlan(tp, heads, kv, arch.head_dim, inter, arch.vocab_size)


def shard_map(f: Callable, mesh: Mesh, in_specs, out_specs) -> Callable:
    """jax.shard_map (or jax.experimental's on older jax), replication unchecked (FFI calls carry no rule)."""
    if hasattr(jax, "shard_map"):
        return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    from jax.experimental.shard_map import shard_map as legacy

    return legacy(f, mesh, in_specs=in_specs, out_specs=out_specs, check_rep=False)


def kv_head_axis(backend) -> int:
    """Which axis of the backend's page array holds the KV heads."""
    return list(backend.kv_cache_shape(3, 5, 7, 11)).index(7)


@dataclasses.dataclass
class PlacedModel:
    graphdef: Any
    # The weights on the mesh, flattened (the runner passes them to every call as a list).
    weights: List[jax.Array]
    treedef: Any
    mesh: Mesh
    # Split over tp and run inside shard_map (every weight stacked [T, ...]); False = the whole model.
    sharded: bool
    # KV heads of the whole cache (the model's, or tp when replicated) and the cache's sharding.
    cache_kv_heads: int
    kv_spec: PartitionSpec

    @property
    def tp(self) -> int:
        return self.mesh.shape[AXIS]

    def module(self, weights: List[jax.Array]):
        """The model (this device's shard model inside shard_map) holding `weights`."""
        leaves = [w[0] for w in weights] if self.sharded else weights
        return nnx.merge(self.graphdef, jax.tree_util.tree_unflatten(self.treedef, leaves))

    def hidden_states(self, weights, kv_caches, input_ids, md, position_inputs, backend):
        """The model's ``hidden_states`` on every device: hidden [T, hidden] (replicated) and the caches."""
        def run(weights, kv_caches, input_ids, md, position_inputs):
            return self.module(weights).hidden_states(input_ids, md, kv_caches, backend,
                                                      position_inputs=position_inputs)

        if not self.sharded:
            return run(weights, kv_caches, input_ids, md, position_inputs)
        replicated = PartitionSpec()
        return shard_map(run, self.mesh, in_specs=(PartitionSpec(AXIS), self.kv_spec, replicated, replicated,
                                                    replicated),
                         out_specs=(replicated, self.kv_spec))(weights, kv_caches, input_ids, md, position_inputs)

    def logits(self, weights, hidden, backend) -> jax.Array:
        """float32 full-vocabulary logits [rows, vocab] of hidden rows (replicated)."""
        def run(weights, hidden):
            return self.module(weights).logits(hidden, backend)

        if not self.sharded:
            return run(weights, hidden)
        return shard_map(run, self.mesh, in_specs=(PartitionSpec(AXIS), PartitionSpec()),
                         out_specs=PartitionSpec())(weights, hidden)

    def weight_bytes_per_device(self) -> Dict[Any, int]:
        return bytes_per_device(self.weights)


def bytes_per_device(arrays) -> Dict[Any, int]:
    """Bytes each device holds of `arrays`, read from their shardings (what each device's slices span)."""
    held: Dict[Any, int] = {}
    for array in arrays:
        itemsize = jnp.dtype(array.dtype).itemsize
        for device, index in array.sharding.devices_indices_map(array.shape).items():
            count = math.prod(len(range(*s.indices(dim))) for s, dim in zip(index, array.shape))
            held[device] = held.get(device, 0) + count * itemsize
    return held


def place_model(model, backend, mesh: Mesh, place_state: Callable) -> PlacedModel:
    """The model prepared by `backend` and placed on `mesh`: split over `tp` (see the module docstring), or
    whole, its nnx State placed by `place_state` (the partitioner's rules)."""
    tp = mesh.shape[AXIS]
    arch = model.arch
    kv_spec = PartitionSpec(*([None] * kv_head_axis(backend)), AXIS)
    has_moe = any(getattr(layer, "moe", None) is not None for layer in model.layers)
    if tp == 1 or has_moe:
        backend.prepare_model(model)
        graphdef, state = nnx.split(model)
        weights, treedef = jax.tree_util.tree_flatten(place_state(state))
        whole_spec = kv_spec if arch.num_kv_heads % tp == 0 else PartitionSpec()
        return PlacedModel(graphdef, weights, treedef, mesh, False, arch.num_kv_heads, whole_spec)
    plan = plan_shards(arch, tp)
    graphdef, state = nnx.split(model)
    shard_leaves, shard_graphdef, treedef = [], None, None
    for shard in range(tp):
        local = nnx.merge(graphdef, jax.tree_util.tree_map_with_path(
            lambda path, leaf: _slice_leaf(_names(path), leaf, plan, shard), state))
        local.tp_axis = AXIS
        for layer in local.layers:
            layer.num_heads, layer.num_kv_heads, layer.tp_axis = plan.heads_per_shard, plan.kv_heads_per_shard, AXIS
        backend.prepare_model(local)
        shard_graphdef, local_state = nnx.split(local)
        leaves, treedef = jax.tree_util.tree_flatten(local_state)
        shard_leaves.append(leaves)
    sharding = NamedSharding(mesh, PartitionSpec(AXIS))
    weights = [_stack_on_devices([leaves[i] for leaves in shard_leaves], sharding)
               for i in range(len(shard_leaves[0]))]
    return PlacedModel(shard_graphdef, weights, treedef, mesh, True, plan.cache_kv_heads, kv_spec)


def _stack_on_devices(pieces: List[jax.Array], sharding: NamedSharding) -> jax.Array:
    """[T, *piece] with piece s on the devices of shard s, built from the pieces without a stacked copy."""
    shape = (len(pieces),) + tuple(pieces[0].shape)
    for s, piece in enumerate(pieces):
        if piece.shape != pieces[0].shape or piece.dtype != pieces[0].dtype:
            raise ValueError(f"tensor parallel: shard {s} holds {piece.shape} {piece.dtype}, shard 0 "
                             f"{pieces[0].shape} {pieces[0].dtype}")
    arrays = [jax.device_put(pieces[index[0].start or 0][None], device)
              for device, index in sharding.addressable_devices_indices_map(shape).items()]
    return jax.make_array_from_single_device_arrays(shape, sharding, arrays)


def _names(path) -> tuple:
    return tuple(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _column_indices(role: str, plan: ShardPlan, shard: int) -> Optional[np.ndarray]:
    """Output features of a column-parallel projection that shard `shard` keeps (None: not column-parallel)."""
    hd = plan.head_dim
    if role in ("qkv_proj", "qkv_bias"):
        q = np.arange(shard * plan.heads_per_shard * hd, (shard + 1) * plan.heads_per_shard * hd)
        kv = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in plan.kv_heads_of(shard)])
        q_size, kv_size = plan.num_heads * hd, plan.num_kv_heads * hd
        return np.concatenate([q, q_size + kv, q_size + kv_size + kv])
    if role == "gate_up_proj":
        part = plan.intermediate_size // plan.tp
        gate = np.arange(shard * part, (shard + 1) * part)
        return np.concatenate([gate, plan.intermediate_size + gate])
    return None


def _row_range(role: str, plan: ShardPlan, shard: int) -> Optional[range]:
    """Input features of a row-parallel projection that shard `shard` keeps (None: not row-parallel)."""
    if role == "o_proj":
        n = plan.heads_per_shard * plan.head_dim
    elif role == "down_proj":
        n = plan.intermediate_size // plan.tp
    else:
        return None
    return range(shard * n, (shard + 1) * n)


def _take_padded(w: jax.Array, indices: np.ndarray, axis: int, size: int) -> jax.Array:
    """w's entries `indices` along `axis`; indices past `size` (vocabulary padding) read as zeros."""
    taken = jnp.take(w, jnp.asarray(np.minimum(indices, size - 1)), axis=axis)
    if (indices < size).all():
        return taken
    keep = jnp.asarray(indices < size).reshape([-1 if a == axis else 1 for a in range(w.ndim)])
    return jnp.where(keep, taken, jnp.zeros((), w.dtype))


def _slice_leaf(names: tuple, w: jax.Array, plan: ShardPlan, shard: int) -> jax.Array:
    """Shard `shard`'s part of the leaf at `names` (the parameter's role is its attribute name)."""
    role = next((n for n in reversed(names) if not n.isdigit() and n != "value"), "")
    is_quantized = quantized.is_quantized(w)
    if role in ("embed_tokens", "lm_head"):
        vocab = np.arange(shard * plan.vocab_per_shard, (shard + 1) * plan.vocab_per_shard)
        axis = 0 if role == "embed_tokens" or is_quantized else w.ndim - 1
        return _take_padded(w, vocab, axis, plan.vocab_size)
    columns = _column_indices(role, plan, shard)
    if columns is not None:  # a quantized weight's rows are its outputs
        return jnp.take(w, jnp.asarray(columns), axis=0 if is_quantized else w.ndim - 1)
    rows = _row_range(role, plan, shard)
    if rows is None:
        return w
    if not is_quantized:
        return w[rows.start:rows.stop]
    width = quantized.block_weights(quantized.quant_type(w))
    if rows.start % width or rows.stop % width:
        raise ValueError(f"tensor parallel: the {quantized.quant_type(w)} {'.'.join(names)} splits its "
                         f"{quantized.in_features(w)} inputs at {rows.start}, not a multiple of its {width}-wide block")
    return w[:, rows.start // width:rows.stop // width]


def describe_placement(placed: PlacedModel, kv_caches, *, data_parallel_size: int, num_pages: int) -> str:
    """The start-up line of one replica: the engine's mesh (processes, devices per process, dp x tp), the bytes
    of weights and KV cache each device holds (read from the arrays' shardings) and the replica's pages."""
    weights = placed.weight_bytes_per_device()
    cache = bytes_per_device(jax.tree_util.tree_leaves(kv_caches))
    how = "split over tp in shard_map" if placed.sharded else "whole model" if placed.tp == 1 else \
        "mixture-of-experts: expert stacks split over tp by the partitioner"
    return (f"mesh dp x tp = {data_parallel_size} x {placed.tp} ({how}); {jax.process_count()} process(es), "
            f"{jax.local_device_count()} {placed.mesh.devices.flat[0].platform} device(s) per process; per device: "
            f"weights {max(weights.values()) / 2**20:.2f} MiB, KV cache {max(cache.values(), default=0) / 2**20:.2f} "
            f"MiB; {num_pages} pages per replica")
