"""Engine gauges and counters in the Prometheus format, read from `engine.stats()` at scrape time.

In: a `stats_fn` (an engine's `stats`) and the model name every series is labelled with. Out: a
prometheus_client `Collector` that the server's registry and `start_monitoring`'s exporter both register.
"""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Optional

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger("surge")


class EngineStatsCollector(Collector):
    """Engine gauges and counters, read from `stats_fn()` at scrape time (nothing when it returns None)."""

    def __init__(self, stats_fn: Callable[[], Optional[dict]], model_name: str) -> None:
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
        total = stats.get("num_total_pages", 0)
        used = stats.get("num_used_pages", 0)
        yield gauge("surge:num_requests_running", "Sequences in the running batch.", stats.get("num_running", 0))
        yield gauge("surge:num_requests_waiting", "Sequences waiting to be scheduled.", stats.get("num_waiting", 0))
        yield gauge("surge:kv_cache_usage_perc", "Fraction of KV-cache pages held by live requests (0 to 1).",
                    used / total if total else 0.0)
        yield gauge("surge:num_used_pages", "KV-cache pages held by live requests.", used)
        yield gauge("surge:num_total_pages", "Usable KV-cache pages (the null page excluded).", total)
        yield gauge("surge:num_cached_pages", "Free pages that still hold a reusable cached prefix.",
                    stats.get("num_cached_pages", 0))
        yield gauge("surge:prefix_cache_hit_rate", "Prompt tokens served from the prefix cache / tokens looked up.",
                    stats.get("prefix_cache_hit_rate", 0.0))
        yield counter("surge:prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                      stats.get("prefix_cache_queried_tokens", 0))
        yield counter("surge:prefix_cache_hits", "Prompt tokens found in the prefix cache.",
                      stats.get("prefix_cache_hit_tokens", 0))
        yield counter("surge:num_preemptions", "Sequences preempted (pages taken back, recomputed later).",
                      stats.get("num_preemptions", 0))
        yield counter("surge:num_compiles", "XLA compilations since start-up (should stop growing after warm-up).",
                      stats.get("num_compiles", 0))
        yield counter("surge:engine_steps", "Engine steps run.", stats.get("num_steps", 0))
        # The engine loop (surge.engine.loop_clock): rate(host) / rate(engine_steps) is host ms per step.
        yield counter("surge:engine_step_host_seconds", "Host time inside engine steps, not counting waits on "
                      "the device (scheduling, inputs, reconciling, detokenizing, outputs).",
                      stats.get("step_host_seconds", 0.0))
        yield counter("surge:engine_step_device_wait_seconds", "Time engine steps spent blocked on the device's "
                      "results.", stats.get("step_device_wait_seconds", 0.0))
        yield counter("surge:engine_device_idle_seconds", "Device idle between consecutive steps of a busy "
                      "engine (an upper bound: 0 while the next step is queued).",
                      stats.get("device_idle_seconds", 0.0))
