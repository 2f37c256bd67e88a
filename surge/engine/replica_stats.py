"""One data-parallel replica's counters, and the engine-wide totals built from every replica's.

In: a replica (surge.parallel.data_parallel.Replica: its block manager, scheduler, runner, loop clock) and
the router's placement counters for it. Out: `replica_stats` — that replica's dict (pages, queues, prefix
cache, preemptions, tokens, its device's waits and idle gaps, placements), with `replica` = its index — and
`aggregate_replica_stats`, the totals over a list of them: counts and seconds summed, lists (histograms)
summed entry by entry, ratios (prefix-cache hit rate, draft acceptance) recomputed from the summed
counts, text (the speculative method) taken from the first. `Engine.stats()` reports the totals at its top level and the
per-replica dicts, in replica order, under `replicas`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence


def replica_stats(replica, placement) -> dict:
    scheduler = replica.scheduler
    queried = scheduler.num_prefix_queried_tokens
    return {
        "replica": replica.index,
        **replica.block_manager.stats(),
        "num_running": scheduler.num_running,
        "num_waiting": scheduler.num_waiting,
        "num_preemptions": scheduler.num_preemptions,
        "num_prompt_tokens": scheduler.num_prompt_tokens,
        "num_generation_tokens": scheduler.num_generation_tokens,
        "num_finished_requests": scheduler.num_finished_requests,
        "num_compiled_buckets": replica.runner.num_compiled_buckets,
        "num_device_fed_tokens": replica.runner.num_device_fed_tokens,
        "num_dropped_tokens": scheduler.num_dropped_tokens,
        "prefix_cache_queried_tokens": queried,
        "prefix_cache_hit_tokens": scheduler.num_prefix_hit_tokens,
        "prefix_cache_hit_rate": scheduler.num_prefix_hit_tokens / queried if queried else 0.0,
        # This replica's device: time the loop blocked on its results, and its idle gaps between its steps.
        "step_device_wait_seconds": replica.loop_clock.wait_seconds,
        "device_idle_seconds": replica.loop_clock.idle_seconds,
        **{f"{field.name}": getattr(placement, field.name) for field in dataclasses.fields(placement)},
        **(scheduler.speculator.stats() if scheduler.speculator is not None else {}),
    }


def aggregate_replica_stats(per_replica: Sequence[dict]) -> dict:
    """The totals over every replica's dict (see the module docstring); `replica` itself is dropped."""
    totals: dict = {}
    for stats in per_replica:
        for key, value in stats.items():
            if key == "replica":
                continue
            if key not in totals:
                totals[key] = list(value) if isinstance(value, (list, tuple)) else value
            elif isinstance(value, bool) or isinstance(value, str):
                continue
            elif isinstance(value, (list, tuple)):
                merged = totals[key] + [0] * (len(value) - len(totals[key]))
                totals[key] = [a + b for a, b in zip(merged, list(value) + [0] * (len(merged) - len(value)))]
            elif isinstance(value, (int, float)):
                totals[key] += value
    # Ratios are recomputed from the summed counts, never summed.
    queried = totals.get("prefix_cache_queried_tokens", 0)
    totals["prefix_cache_hit_rate"] = totals.get("prefix_cache_hit_tokens", 0) / queried if queried else 0.0
    if "spec_decode_method" in totals:
        drafted, drafts = totals["spec_decode_num_draft_tokens"], totals["spec_decode_num_drafts"]
        accepted = totals["spec_decode_num_accepted_tokens"]
        totals["spec_decode_acceptance_rate"] = accepted / drafted if drafted else 0.0
        totals["spec_decode_mean_acceptance_length"] = 1 + accepted / drafts if drafts else 0.0
    return totals


__all__ = ["aggregate_replica_stats", "replica_stats"]
