"""One data-parallel replica's EngineStats, and the engine's built from every replica's.

In: a replica (surge.parallel.data_parallel.Replica: its block manager, scheduler, runner, loop clock) and
the engine-wide values (grammar, compiles, steps, host seconds, backend, max_model_len). Out: `replica_stats`
— that replica's EngineStats (its pages, queues, prefix cache, preemptions, tokens, its device's waits and
idle gaps; the engine-wide fields are the engine's) — and `engine_stats`, the engine's: every per-replica
count and second summed over the replicas (the pool's and speculative decoding's field by field, histograms
entry by entry) and the engine-wide values as given. Ratios are EngineStats/SpecDecodeStats properties, so
they come from the summed counts. `Engine.stats()` is the engine's, `Engine.replica_stats()` the replicas'
(in replica order); the router's placements per replica are `engine.router.counters`.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from surge.engine.stats import EngineStats
from surge.spec_decode.stats import SpecDecodeStats

# The EngineStats fields that are one replica's (summed for the engine); the rest are engine-wide.
PER_REPLICA_FIELDS = (
    "num_running", "num_waiting", "num_preemptions", "num_prompt_tokens", "num_generation_tokens",
    "num_finished_requests", "num_compiled_buckets", "step_device_wait_seconds", "device_idle_seconds",
    "num_device_fed_tokens", "num_dropped_tokens", "prefix_cache_queried_tokens", "prefix_cache_hit_tokens")


def replica_stats(replica, engine_wide: dict) -> EngineStats:
    scheduler = replica.scheduler
    return EngineStats(
        pages=replica.block_manager.stats(),
        num_running=scheduler.num_running,
        num_waiting=scheduler.num_waiting,
        num_preemptions=scheduler.num_preemptions,
        num_prompt_tokens=scheduler.num_prompt_tokens,
        num_generation_tokens=scheduler.num_generation_tokens,
        num_finished_requests=scheduler.num_finished_requests,
        num_compiled_buckets=replica.runner.num_compiled_buckets,
        # This replica's device: time the loop blocked on its results, and its idle gaps between its steps.
        step_device_wait_seconds=replica.loop_clock.wait_seconds,
        device_idle_seconds=replica.loop_clock.idle_seconds,
        num_device_fed_tokens=replica.runner.num_device_fed_tokens,
        num_dropped_tokens=scheduler.num_dropped_tokens,
        prefix_cache_queried_tokens=scheduler.num_prefix_queried_tokens,
        prefix_cache_hit_tokens=scheduler.num_prefix_hit_tokens,
        spec_decode=scheduler.speculator.stats() if scheduler.speculator is not None else None,
        **engine_wide,
    )


def engine_stats(per_replica: Sequence[EngineStats], engine_wide: dict, *,
                 step_device_wait_seconds: float) -> EngineStats:
    """The engine's EngineStats from its replicas' (see the module docstring). The engine adds the requests
    waiting for a grammar (not placed yet) to the waiting ones, and its own clock's device waits (the
    loop's, which with one replica are that replica's)."""
    summed = {name: sum(getattr(r, name) for r in per_replica) for name in PER_REPLICA_FIELDS}
    summed["num_waiting"] += engine_wide["num_waiting_for_grammar"]
    summed["step_device_wait_seconds"] = step_device_wait_seconds
    return EngineStats(pages=_sum_parts([r.pages for r in per_replica]),
                       spec_decode=_sum_spec_decode([r.spec_decode for r in per_replica]),
                       **summed, **engine_wide)


def _sum_spec_decode(parts: Sequence[Optional[SpecDecodeStats]]) -> Optional[SpecDecodeStats]:
    if parts[0] is None:
        return None
    return _sum_parts(parts)


def _sum_parts(parts: Sequence):
    """One frozen dataclass whose numbers are the parts' summed (tuples entry by entry, nested parts
    likewise, a part that is None stays None), text taken from the first."""
    first = parts[0]
    values = {}
    for f in dataclasses.fields(first):
        items = [getattr(p, f.name) for p in parts]
        if items[0] is None:
            values[f.name] = None
        elif dataclasses.is_dataclass(items[0]):
            values[f.name] = _sum_parts(items)
        elif isinstance(items[0], tuple):
            width = max(len(t) for t in items)
            values[f.name] = tuple(sum(t[i] for t in items if i < len(t)) for i in range(width))
        elif isinstance(items[0], str):
            values[f.name] = items[0]
        else:
            values[f.name] = sum(items)
    return type(first)(**values)


__all__ = ["PER_REPLICA_FIELDS", "engine_stats", "replica_stats"]
