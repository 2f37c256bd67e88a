"""Data-parallel replicas: each mesh row is one engine replica with its own page pool, scheduler and runner.

In: the engine's (dp, tp) mesh. Out: one (1, tp) sub-mesh per replica (row r of the grid: replica r's tp
devices), and `Replica`, the parts one replica steps with: its BlockManager (the page pool and prefix cache),
its Scheduler, its ModelRunner (weights and KV cache on its own devices), its LoopClock and the step it has
dispatched and not reconciled yet. The engine holds the replicas in order and steps them all in one
iteration: every replica's step is dispatched before it blocks on any (JAX dispatch is asynchronous), so
replicas on separate devices compute at the same time. Which replica a request joins is
surge.parallel.placement's decision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from jax.sharding import Mesh


def replica_meshes(mesh: Mesh) -> list[Mesh]:
    """Row r of the (dp, tp) grid as a (1, tp) mesh with the same axis names, for r in 0 .. dp - 1."""
    return [Mesh(mesh.devices[row:row + 1], mesh.axis_names) for row in range(mesh.devices.shape[0])]


@dataclass
class Replica:
    index: int
    mesh: Mesh
    kv_plan: Any  # surge.cache.kv_cache.KVCachePlan: this replica's pool (every replica's is the same size)
    block_manager: Any  # surge.cache.block_manager.BlockManager
    scheduler: Any  # surge.scheduler.scheduler.Scheduler
    runner: Any  # surge.runner.model_runner.ModelRunner
    loop_clock: Any  # surge.engine.loop_clock.LoopClock
    # The step dispatched and not reconciled yet (async scheduling): (SchedulerOutput, PendingStep).
    in_flight: Optional[tuple] = None

    @property
    def num_seqs(self) -> int:
        """Sequences this replica holds: running plus waiting (its load, for placement)."""
        return self.scheduler.num_running + self.scheduler.num_waiting


__all__ = ["Replica", "replica_meshes"]
