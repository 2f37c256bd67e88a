"""Sizing and allocating the paged KV cache, once, at start-up.

In: the cache config (page_size, hbm_utilization or num_pages, cpu_memory_gb),
the model's KV shape (layers, KV heads, head dim), the backend's page layout and
the bytes the weights already took, max_num_seqs and max_model_len. Out: a
KVCachePlan (GiB, pages, tokens, largest context, why it has that size and the
keys that change it; logged in plain words) and the per-layer (K, V) page
arrays, placed on the mesh with the KV-head axis sharded over `tp`. On the CPU
RAM budget the pool is capped at what max_num_seqs full-length requests need.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from surge.config import CacheConfig

logger = logging.getLogger("surge")
GiB = 1024**3


class KVCacheTooSmall(ValueError):
    """The KV page pool cannot hold even one request of max_model_len tokens."""


@dataclass(frozen=True)
class KVCachePlan:
    num_pages: int  # including the reserved null page 0
    page_size: int
    bytes_per_page: int  # K and V of every layer
    budget_bytes: int  # what the pool could take (a share of the free memory, or num_pages' worth)
    # Why the pool has this size, in words that name the keys to change it.
    sized_by: str = ""

    @property
    def num_usable_pages(self) -> int:
        return self.num_pages - 1

    @property
    def num_tokens(self) -> int:
        return self.num_usable_pages * self.page_size

    @property
    def num_bytes(self) -> int:
        return self.num_pages * self.bytes_per_page

    def describe(self, max_model_len: int) -> str:
        text = (f"KV cache: {_size(self.num_bytes)} = {self.num_usable_pages} pages x {self.page_size} tokens "
                f"= {self.num_tokens} tokens ({self.bytes_per_page / 1024:.0f} KiB per page); "
                f"largest context {min(self.num_tokens, max_model_len)} tokens, "
                f"~{self.num_tokens // max(max_model_len, 1)} full-length requests at once")
        return text + (f"; {self.sized_by}" if self.sized_by else "")


def _size(num_bytes: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 2**20)):
        if num_bytes >= scale:
            return f"{num_bytes / scale:.2f} {unit}"
    return f"{num_bytes / 1024:.0f} KiB"


@dataclass(frozen=True)
class MemoryBudget:
    num_bytes: int
    # How the figure was reached, e.g. "0.9 x (4.0 GiB cache.cpu_memory_gb - 0.61 GiB weights)".
    reason: str
    # True when the figure is the CPU RAM budget (cache.cpu_memory_gb), not memory a device reported.
    on_cpu_budget: bool


def device_memory_budget(cache: CacheConfig, weights_bytes: int) -> MemoryBudget:
    """Bytes available for KV: a share of what the device (or the CPU budget) has left after the weights."""
    device = jax.devices()[0]
    stats = None
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
        except Exception:  # some runtimes do not report memory
            stats = None
    share = f"cache.hbm_utilization={cache.hbm_utilization:g}"
    if stats and "bytes_limit" in stats:
        free = stats["bytes_limit"] - stats.get("bytes_in_use", weights_bytes)
        reason = f"{share} of the {max(free, 0) / GiB:.2f} GiB {device.platform} memory free after the weights"
        on_cpu = False
    else:
        free = int(cache.cpu_memory_gb * GiB) - weights_bytes
        reason = (f"{share} x (cache.cpu_memory_gb={cache.cpu_memory_gb:g} GiB - {weights_bytes / GiB:.2f} GiB "
                  "weights)")
        on_cpu = True
    return MemoryBudget(int(max(free, 0) * cache.hbm_utilization), reason, on_cpu)


def plan_kv_cache(cache: CacheConfig, *, num_layers: int, page_shape: tuple, dtype, weights_bytes: int,
                  max_model_len: int, max_num_seqs: int) -> KVCachePlan:
    """Size the pool: cache.num_pages when given; else the memory budget, which on the CPU RAM budget
    is capped at what max_num_seqs requests of max_model_len tokens can ever hold at once."""
    page_elems = int(np.prod(page_shape))
    bytes_per_page = 2 * num_layers * page_elems * jnp.dtype(dtype).itemsize
    pages_per_seq = math.ceil(max_model_len / cache.page_size)
    if cache.num_pages is not None:
        num_pages, budget = cache.num_pages, cache.num_pages * bytes_per_page
        sized_by = f"set by cache.num_pages={cache.num_pages}"
    else:
        memory = device_memory_budget(cache, weights_bytes)
        budget = memory.num_bytes
        num_pages = budget // bytes_per_page
        sized_by = f"sized by {memory.reason} = {budget / GiB:.2f} GiB"
        demand = max_num_seqs * pages_per_seq + 1  # + the null page
        if memory.on_cpu_budget and demand < num_pages:
            num_pages = demand
            sized_by = (f"what engine.max_num_seqs={max_num_seqs} x engine.max_model_len={max_model_len} tokens "
                        f"can hold, below the {budget / GiB:.2f} GiB budget ({memory.reason})")
    sized_by += ("; change it with cache.num_pages, cache.cpu_memory_gb, cache.hbm_utilization, "
                 "engine.max_num_seqs, engine.max_model_len or cache.dtype")
    plan = KVCachePlan(int(num_pages), cache.page_size, bytes_per_page, int(budget), sized_by)
    if plan.num_usable_pages < pages_per_seq:
        knob = ("raise cache.num_pages" if cache.num_pages is not None else
                "raise cache.hbm_utilization" + (" or cache.cpu_memory_gb" if jax.devices()[0].platform == "cpu" else ""))
        raise KVCacheTooSmall(
            f"the KV cache holds {plan.num_usable_pages} pages ({plan.num_tokens} tokens) but one request of "
            f"engine.max_model_len={max_model_len} tokens needs {pages_per_seq} pages of {cache.page_size}: "
            f"{knob}, or lower engine.max_model_len")
    return plan


def allocate_kv_cache(plan: KVCachePlan, *, num_layers: int, backend, num_kv_heads: int, head_dim: int, dtype,
                      mesh: jax.sharding.Mesh, spec: Optional[jax.sharding.PartitionSpec] = None
                      ) -> list[tuple[jax.Array, jax.Array]]:
    """`spec`: the page arrays' PartitionSpec (tensor parallel names it); default: kv_sharding's rule."""
    shape = backend.kv_cache_shape(plan.num_pages, plan.page_size, num_kv_heads, head_dim)
    sharding = kv_sharding(shape, num_kv_heads, mesh) if spec is None else jax.sharding.NamedSharding(mesh, spec)
    make = jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=sharding)
    return [(make(), make()) for _ in range(num_layers)]


def kv_sharding(shape: tuple, num_kv_heads: int, mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """Shard the KV-head axis of a page array over `tp` (the first axis of that size after the page axis)."""
    spec = [None] * len(shape)
    tp = mesh.shape["tp"]
    for axis in range(1, len(shape)):
        if shape[axis] == num_kv_heads and num_kv_heads % tp == 0:
            spec[axis] = "tp"
            break
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))
