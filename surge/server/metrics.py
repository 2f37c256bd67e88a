"""Prometheus metrics with vLLM's meanings under the `surge:` prefix.

In: `engine.stats()` (an `EngineStats`) read at scrape time (a custom collector: requests
running / waiting, KV-cache pages, prefix-cache hits, preemptions), and, from
the server, each request's outputs as they stream (`RequestTimer`), its final
`RequestOutput` and the API-key label it bills to. Out: a `CollectorRegistry`
of its own (never the process-global one, so several servers can live in one
process) rendered in the Prometheus text format by `render()`.

Latencies (time to first token, inter-token, end-to-end) are measured on the
server's monotonic clock, from the moment the request was accepted to the
moments its outputs reached the server: what a client sees, minus the network.
Queue time (arrival to first scheduling) comes from the engine's own metrics.
Every series carries `model_name`, as vLLM's do, so vLLM dashboards work with
`vllm:` replaced by `surge:`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest

from surge.engine.outputs import FinishReason
from surge.engine.stats import EngineStats
from surge.monitoring.engine_stats import EngineStatsCollector

logger = logging.getLogger("surge")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# `*_created` timestamp series double every counter's output and no vLLM dashboard reads them.
disable_created_metrics()

TTFT_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
                80.0, 160.0)
TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
                         0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
REQUEST_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                           60.0, 120.0, 240.0, 480.0, 960.0, 1920.0)


def token_count_buckets(max_model_len: int) -> tuple[float, ...]:
    """1, 2, 5, 10, 20, 50, ... up to max_model_len (vLLM's shape)."""
    buckets, scale = [], 1
    while True:
        for step in (1, 2, 5):
            value = step * scale
            if value > max_model_len:
                return tuple(buckets) or (1.0,)
            buckets.append(float(value))
        scale *= 10


class RequestTimer:
    """Per-request latencies on the server clock, fed with each output as it arrives."""

    def __init__(self, metrics: "ServerMetrics") -> None:
        self._metrics = metrics
        self.start = time.monotonic()
        self.first_token: Optional[float] = None
        self._last_time: Optional[float] = None
        self._last_count = 0

    def on_output(self, output) -> None:
        count = sum(len(c.token_ids) for c in output.outputs)
        if count <= self._last_count:
            return
        now = time.monotonic()
        new_tokens = count - self._last_count
        if self.first_token is None:
            self.first_token = now
            self._metrics.time_to_first_token.labels(self._metrics.model_name).observe(now - self.start)
            new_tokens -= 1  # the first token's latency is the TTFT, not an inter-token gap
        elif self._last_time is not None:
            gap = (now - self._last_time) / new_tokens
            itl = self._metrics.inter_token_latency.labels(self._metrics.model_name)
            for _ in range(new_tokens):
                itl.observe(gap)
        self._last_time = now
        self._last_count = count


class ServerMetrics:
    """The server's registry: engine collector, request histograms, token and per-key counters."""

    def __init__(self, model_name: str, stats_fn: Callable[[], Optional[EngineStats]],
                 max_model_len: int = 8192, replica_stats_fn: Optional[Callable[[], tuple]] = None) -> None:
        """`replica_stats_fn`: each data-parallel replica's EngineStats (a `replica` label when more than one)."""
        self.model_name = model_name
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(EngineStatsCollector(stats_fn, model_name, replica_stats_fn))
        self._lock = threading.Lock()
        self._totals = {"prompt_tokens": 0, "generation_tokens": 0, "requests": 0}
        m = ["model_name"]
        r = self.registry
        self.prompt_tokens = Counter("surge:prompt_tokens", "Prompt tokens processed.", m, registry=r)
        self.generation_tokens = Counter("surge:generation_tokens", "Tokens generated.", m, registry=r)
        self.request_success = Counter("surge:request_success", "Finished requests by finish reason.",
                                       m + ["finished_reason"], registry=r)
        self.requests_rejected = Counter("surge:request_rejected", "Requests turned away before reaching the "
                                         "engine, by reason (overloaded, draining, not_ready).",
                                         m + ["reason"], registry=r)
        self.time_to_first_token = Histogram("surge:time_to_first_token_seconds",
                                             "From accepting the request to its first generated token.", m,
                                             buckets=TTFT_BUCKETS, registry=r)
        self.inter_token_latency = Histogram("surge:inter_token_latency_seconds",
                                             "Time between successive generated tokens of a request.", m,
                                             buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.time_per_output_token = Histogram("surge:time_per_output_token_seconds",
                                               "Per request: (last token time - first token time) / "
                                               "(generated tokens - 1).", m, buckets=TOKEN_LATENCY_BUCKETS,
                                               registry=r)
        self.e2e_latency = Histogram("surge:e2e_request_latency_seconds", "From accepting a request to its end.",
                                     m, buckets=REQUEST_LATENCY_BUCKETS, registry=r)
        self.queue_time = Histogram("surge:request_queue_time_seconds",
                                    "From a request's arrival in the engine to its first scheduling.", m,
                                    buckets=REQUEST_LATENCY_BUCKETS, registry=r)
        counts = token_count_buckets(max_model_len)
        self.request_prompt_tokens = Histogram("surge:request_prompt_tokens", "Prompt tokens per request.", m,
                                               buckets=counts, registry=r)
        self.request_generation_tokens = Histogram("surge:request_generation_tokens",
                                                   "Generated tokens per request (all its completions).", m,
                                                   buckets=counts, registry=r)
        self.key_prompt_tokens = Counter("surge:api_key_prompt_tokens", "Prompt tokens billed to each API key.",
                                         m + ["label"], registry=r)
        self.key_completion_tokens = Counter("surge:api_key_completion_tokens",
                                             "Completion tokens billed to each API key.", m + ["label"], registry=r)
        self.key_requests = Counter("surge:api_key_requests", "Finished requests of each API key.",
                                    m + ["label"], registry=r)
        # Series exist (at 0) from the start, so dashboards and rate() see them before the first request.
        for metric in (self.prompt_tokens, self.generation_tokens, self.time_to_first_token,
                       self.inter_token_latency, self.time_per_output_token, self.e2e_latency, self.queue_time,
                       self.request_prompt_tokens, self.request_generation_tokens):
            metric.labels(model_name)
        for reason in FinishReason:
            self.request_success.labels(model_name, reason)

    def timer(self) -> RequestTimer:
        return RequestTimer(self)

    def reject(self, reason: str) -> None:
        self.requests_rejected.labels(self.model_name, reason).inc()

    def observe_finished(self, output, timer: RequestTimer, key_label: Optional[str]) -> None:
        """Record a request that ended (finished, stopped or aborted) with its last `RequestOutput`."""
        name = self.model_name
        now = time.monotonic()
        prompt_tokens = len(output.prompt_token_ids)
        generated = sum(len(c.token_ids) for c in output.outputs)
        self.prompt_tokens.labels(name).inc(prompt_tokens)
        self.generation_tokens.labels(name).inc(generated)
        self.request_prompt_tokens.labels(name).observe(prompt_tokens)
        self.request_generation_tokens.labels(name).observe(generated)
        for completion in output.outputs:
            self.request_success.labels(name, completion.finish_reason or FinishReason.ABORT).inc()
        self.e2e_latency.labels(name).observe(now - timer.start)
        if timer.first_token is not None and generated > 1:
            self.time_per_output_token.labels(name).observe((now - timer.first_token) / (generated - 1))
        metrics = output.metrics
        if metrics is not None and metrics.first_scheduled_time is not None:
            self.queue_time.labels(name).observe(max(0.0, metrics.first_scheduled_time - metrics.arrival_time))
        if key_label is not None:
            self.key_prompt_tokens.labels(name, key_label).inc(prompt_tokens)
            self.key_completion_tokens.labels(name, key_label).inc(generated)
            self.key_requests.labels(name, key_label).inc()
        with self._lock:
            self._totals["prompt_tokens"] += prompt_tokens
            self._totals["generation_tokens"] += generated
            self._totals["requests"] += 1

    def register_key_label(self, label: str) -> None:
        """Show a key's counters (at 0) before its first request."""
        for counter in (self.key_prompt_tokens, self.key_completion_tokens, self.key_requests):
            counter.labels(self.model_name, label)

    def totals(self) -> dict:
        """Cumulative prompt tokens, generated tokens and finished requests (for the console monitor)."""
        with self._lock:
            return dict(self._totals)

    def render(self) -> bytes:
        return generate_latest(self.registry)
