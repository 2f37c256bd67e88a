"""Engine gauges and counters in the Prometheus format, read from `engine.stats()` at scrape time.

In: a `stats_fn` (an engine's `stats`, returning an `EngineStats` of surge.engine.stats, read by attribute;
None before the engine is ready) and the model name every series is labelled with. Out: a
prometheus_client `Collector` that the server's registry and `start_monitoring`'s exporter both register.
With speculative decoding on, vLLM's spec_decode series too (labelled by method).
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger("surge")


class EngineStatsCollector(Collector):
    """Engine gauges and counters, read from `stats_fn()` at scrape time (nothing when it returns None)."""

    def __init__(self, stats_fn: Callable[[], object], model_name: str) -> None:
        self._stats_fn = stats_fn
        self._model_name = model_name

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
        total, used = stats.pages.num_total_pages, stats.pages.num_used_pages
        yield gauge("surge:num_requests_running", "Sequences in the running batch.", stats.num_running)
        yield gauge("surge:num_requests_waiting", "Sequences waiting to be scheduled.", stats.num_waiting)
        yield gauge("surge:kv_cache_usage_perc", "Fraction of KV-cache pages held by live requests (0 to 1).",
                    used / total if total else 0.0)
        yield gauge("surge:num_used_pages", "KV-cache pages held by live requests.", used)
        yield gauge("surge:num_total_pages", "Usable KV-cache pages (the null page excluded).", total)
        yield gauge("surge:num_cached_pages", "Free pages that still hold a reusable cached prefix.",
                    stats.pages.num_cached_pages)
        yield gauge("surge:prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / tokens looked up.",
                    stats.prefix_cache_hit_rate)
        yield counter("surge:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      stats.prefix_cache_queried_tokens)
        yield counter("surge:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                      stats.prefix_cache_hit_tokens)
        yield counter("surge:num_preemptions", "Sequences preempted (pages taken back, recomputed later).",
                      stats.num_preemptions)
        yield counter("surge:num_compiles", "XLA compilations since start-up (should stop growing after warm-up).",
                      stats.num_compiles)
        yield counter("surge:engine_steps", "Engine steps run.", stats.num_steps)
        # The engine loop (surge.engine.loop_clock): rate(host) / rate(engine_steps) is host ms per step.
        yield counter("surge:engine_step_host_seconds", "Host time inside engine steps, not counting waits on "
                      "the device (scheduling, inputs, reconciling, detokenizing, outputs).",
                      stats.step_host_seconds)
        yield counter("surge:engine_step_device_wait_seconds", "Time engine steps spent blocked on the device's "
                      "results.", stats.step_device_wait_seconds)
        yield counter("surge:engine_device_idle_seconds", "Device idle between consecutive steps of a busy "
                      "engine (an upper bound: 0 while the next step is queued).",
                      stats.device_idle_seconds)
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
