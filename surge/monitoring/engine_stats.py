"""Engine gauges and counters in the Prometheus format, read from `engine.stats()` at scrape time.

In: a `stats_fn` (an engine's `stats`, returning an `EngineStats` of surge.engine.stats, read by attribute;
None before the engine is ready) and the model name every series is labelled with. Out: a
prometheus_client `Collector` that the server's registry and `start_monitoring`'s exporter both register.
With speculative decoding on, vLLM's spec_decode series too (labelled by method). With data-parallel
replicas (`replica_stats_fn`, an engine's `replica_stats`, returns more than one), the series that belong to one replica (queues, pages,
prefix cache, preemptions, its device's idle time) carry a `replica` label too, one sample per replica (sum
them for the engine's); with one replica they carry `model_name` only, as vLLM's do.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger("surge")


class EngineStatsCollector(Collector):
    """Engine gauges and counters, read from `stats_fn()` at scrape time (nothing when it returns None)."""

    def __init__(self, stats_fn: Callable[[], object], model_name: str,
                 replica_stats_fn: Optional[Callable[[], tuple]] = None) -> None:
        """`replica_stats_fn`: each replica's EngineStats (an engine's `replica_stats`); None: one replica."""
        self._stats_fn = stats_fn
        self._model_name = model_name
        self._replica_stats_fn = replica_stats_fn

    def collect(self) -> Iterable:
        try:
            stats = self._stats_fn()
        except Exception:  # a scrape must never fail because the engine is busy or gone
            logger.exception("engine.stats() failed during a metrics scrape")
            stats = None
        labels, values = ["model_name"], [self._model_name]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        yield gauge("surge:engine_ready", "1 once the engine is built and compiled, else 0.",
                    1.0 if stats is not None else 0.0)
        if stats is None:
            return
        replicas = self._replica_stats_fn() if self._replica_stats_fn is not None else ()
        if len(replicas) > 1:
            per_replica = [(labels + ["replica"], values + [str(i)], r) for i, r in enumerate(replicas)]
        else:
            per_replica = [(labels, values, stats)]

        def replica_family(kind, name: str, doc: str, value_of) -> object:
            family = kind(name, doc, labels=per_replica[0][0])
            for _, replica_values, replica in per_replica:
                family.add_metric(replica_values, value_of(replica))
            return family

        def usage(replica) -> float:
            total = replica.pages.num_total_pages
            return replica.pages.num_used_pages / total if total else 0.0

        for kind, name, doc, value_of in (
                (GaugeMetricFamily, "surge:num_requests_running", "Sequences in the running batch.",
                 lambda r: r.num_running),
                (GaugeMetricFamily, "surge:num_requests_waiting", "Sequences waiting to be scheduled.",
                 lambda r: r.num_waiting),
                (GaugeMetricFamily, "surge:kv_cache_usage_perc",
                 "Fraction of KV-cache pages held by live requests (0 to 1).", usage),
                (GaugeMetricFamily, "surge:num_used_pages", "KV-cache pages held by live requests.",
                 lambda r: r.pages.num_used_pages),
                (GaugeMetricFamily, "surge:num_total_pages", "Usable KV-cache pages (the null page excluded).",
                 lambda r: r.pages.num_total_pages),
                (GaugeMetricFamily, "surge:num_cached_pages", "Free pages that still hold a reusable cached prefix.",
                 lambda r: r.pages.num_cached_pages),
                (GaugeMetricFamily, "surge:prefix_cache_hit_rate",
                 "Prompt tokens served from the prefix cache / tokens looked up.",
                 lambda r: r.prefix_cache_hit_rate),
                (CounterMetricFamily, "surge:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                 lambda r: r.prefix_cache_queried_tokens),
                (CounterMetricFamily, "surge:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                 lambda r: r.prefix_cache_hit_tokens),
                (CounterMetricFamily, "surge:num_preemptions",
                 "Sequences preempted (pages taken back, recomputed later).", lambda r: r.num_preemptions)):
            yield replica_family(kind, name, doc, value_of)
        yield counter("surge:num_compiles", "XLA compilations since start-up (should stop growing after warm-up).",
                      stats.num_compiles)
        yield counter("surge:engine_steps", "Engine steps run.", stats.num_steps)
        # The engine loop (surge.engine.loop_clock): rate(host) / rate(engine_steps) is host ms per step.
        yield counter("surge:engine_step_host_seconds", "Host time inside engine steps, not counting waits on "
                      "the device (scheduling, inputs, reconciling, detokenizing, outputs).",
                      stats.step_host_seconds)
        yield counter("surge:engine_step_device_wait_seconds", "Time engine steps spent blocked on the device's "
                      "results.", stats.step_device_wait_seconds)
        yield replica_family(CounterMetricFamily, "surge:engine_device_idle_seconds",
                             "Device idle between consecutive steps of a busy engine (an upper bound: 0 while the "
                             "next step is queued).", lambda r: r.device_idle_seconds)
        if stats.spec_decode is not None:
            yield from _spec_decode_families(stats.spec_decode, self._model_name)


def _spec_decode_families(spec, model_name: str) -> Iterable:
    """vLLM's speculative-decoding series (a draft = one verification of a request's draft tokens), by method.

    From `acceptance_lengths` (entry a = verifications that accepted a drafts): the histogram of tokens
    emitted per verification (a + 1: the accepted drafts and the target's own token), and per draft
    position p the drafts accepted there (verifications that accepted more than p; acceptance is a prefix).
    """
    labels, values = ["model_name", "method"], [model_name, spec.method]
    for name, doc, count in (
            ("surge:spec_decode_num_drafts", "Verifications of draft tokens (request-steps that carried drafts).",
             spec.num_drafts),
            ("surge:spec_decode_num_draft_tokens", "Draft tokens proposed and verified.", spec.num_draft_tokens),
            ("surge:spec_decode_num_accepted_tokens", "Draft tokens the target accepted.", spec.num_accepted_tokens)):
        family = CounterMetricFamily(name, doc, labels=labels)
        family.add_metric(values, count)
        yield family
    lengths = list(spec.acceptance_lengths)
    per_position = CounterMetricFamily("surge:spec_decode_num_accepted_tokens_per_pos",
                                       "Drafts accepted at each draft position (0 = the first draft).",
                                       labels=labels + ["position"])
    for position in range(max(len(lengths) - 1, 0)):
        per_position.add_metric(values + [str(position)], sum(lengths[position + 1:]))
    yield per_position
    buckets, running = [], 0
    for accepted, count in enumerate(lengths):
        running += count
        buckets.append((str(float(accepted + 1)), running))
    buckets.append(("+Inf", running))
    emitted = sum((accepted + 1) * count for accepted, count in enumerate(lengths))
    histogram = HistogramMetricFamily("surge:spec_decode_acceptance_length",
                                      "Tokens emitted per verification: accepted drafts plus the target's own.",
                                      labels=labels)
    histogram.add_metric(values, buckets, emitted)
    yield histogram
