"""What `Engine.stats()` returns: one frozen snapshot of the engine's gauges and counters.

In: the page pool's `PoolStats`, the scheduler's and runner's counters, the loop clock's totals
(surge.engine.loop_clock) and, with speculative decoding on, the speculator's `SpecDecodeStats`. Out:
`EngineStats`, read by attribute by the server's /metrics, the console monitor, the benchmarks and the
tests. `to_dict()` is the one place that builds the flat string-keyed form (the keys `engine.stats()`
had when it returned a dict); the benchmarks' result rows take their `spec_decode_*` columns from it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Optional

from surge.cache.pool_stats import PoolStats
from surge.spec_decode.stats import SpecDecodeStats


def prefix_cache_hit_rate(hit_tokens: int, queried_tokens: int) -> float:
    """Prompt tokens served from the prefix cache / prompt tokens looked up (0.0 when none were)."""
    return hit_tokens / queried_tokens if queried_tokens else 0.0


@dataclass(frozen=True)
class EngineStats:
    # The KV page pool; to_dict() spells its keys unprefixed (num_total_pages, num_used_pages, ...).
    pages: PoolStats = field(metadata={"prefix": ""})
    # Requests in the running batch.
    num_running: int
    # Requests waiting to be scheduled, those waiting for their grammar to compile included.
    num_waiting: int
    # Of the waiting requests, those whose grammar is still compiling.
    num_waiting_for_grammar: int
    # Grammars compiled (structured output).
    num_grammar_compiles: int
    # Grammar requests served from the compiled-grammar cache.
    num_grammar_cache_hits: int
    # Requests preempted (pages taken back, recomputed later).
    num_preemptions: int
    # Prompt tokens of the requests admitted so far (each request counted once).
    num_prompt_tokens: int
    # Tokens generated so far.
    num_generation_tokens: int
    # Requests finished (stopped, length-capped or aborted).
    num_finished_requests: int
    # XLA compilations in this process since start-up.
    num_compiles: int
    # Of those, compilations after the warm-up (0 while serving: nothing recompiles).
    num_compiles_since_warmup: int
    # (tokens, seqs) buckets the runner compiled.
    num_compiled_buckets: int
    # Engine steps run.
    num_steps: int
    # Host time inside step() not spent blocked on the device (scheduling, inputs, outputs).
    step_host_seconds: float
    # Time step() spent blocked on a step's results.
    step_device_wait_seconds: float
    # The device's idle gap between consecutive steps of a busy engine (an upper bound).
    device_idle_seconds: float
    # Scheduled tokens whose ids came from the previous step on the device, not through the host.
    num_device_fed_tokens: int
    # Tokens sampled but dropped (their request finished or was aborted before they were reconciled).
    num_dropped_tokens: int
    # Prompt tokens looked up in the prefix cache (once per admitted request).
    prefix_cache_queried_tokens: int
    # Of those, prompt tokens served from cached pages.
    prefix_cache_hit_tokens: int
    # Speculative decoding's counters; None when engine.speculative.method is none.
    spec_decode: Optional[SpecDecodeStats]
    # The kernel backend in use (auto resolved).
    backend: str
    # The longest sequence (prompt + output) a request may reach.
    max_model_len: int

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Prompt tokens served from the prefix cache / prompt tokens looked up (the only hit rate)."""
        return prefix_cache_hit_rate(self.prefix_cache_hit_tokens, self.prefix_cache_queried_tokens)

    def to_dict(self) -> dict:
        """The flat string-keyed form: every field and property, a part's keys prefixed with its field name
        (`spec_decode_num_drafts`, `spec_decode_draft_num_calls`; the pool's unprefixed), a part that is off
        (None) left out, tuples as lists (so it dumps to JSON as it reads)."""
        return _flatten(self, "", {})


def _flatten(stats, prefix: str, out: dict) -> dict:
    for f in dataclasses.fields(stats):
        value = getattr(stats, f.name)
        if dataclasses.is_dataclass(value):
            _flatten(value, prefix + f.metadata.get("prefix", f.name + "_"), out)
        elif value is not None:
            out[prefix + f.name] = list(value) if isinstance(value, tuple) else value
    for name, attr in vars(type(stats)).items():
        if isinstance(attr, property):
            out[prefix + name] = getattr(stats, name)
    return out


__all__ = ["EngineStats", "prefix_cache_hit_rate"]
