"""Prometheus metrics and the monitor: names, values and buckets, without an engine.

Engine stats are `EngineStats` built from flat values (tests/engine_stats_cases.py); finished requests are real
`RequestOutput` objects.
"""

from __future__ import annotations

import io
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from surge.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from surge.server.metrics import ServerMetrics, token_count_buckets
from surge.monitoring.monitor import build_table, start_monitoring
from tests.engine_stats_cases import make_stats

FLAT = {"num_total_pages": 200, "num_used_pages": 50, "num_cached_pages": 7, "num_running": 3, "num_waiting": 2,
        "num_preemptions": 4, "num_compiles": 6, "num_steps": 1000, "prefix_cache_hit_rate": 0.25,
        "prefix_cache_queried_tokens": 400, "prefix_cache_hit_tokens": 100}
STATS = make_stats(**FLAT)


def samples(text: str) -> dict[tuple, float]:
    """{(sample name, sorted labels): value} of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels) -> float:
    labels.setdefault("model_name", "m")
    return samples(text)[(name, tuple(sorted(labels.items())))]


def finished_output(prompt_len=5, tokens=(3, 4, 5), reason="stop", n=1) -> RequestOutput:
    now = time.monotonic()
    metrics = RequestMetrics(arrival_time=now - 1.0, first_scheduled_time=now - 0.75, first_token_time=now - 0.5,
                             finished_time=now, num_prompt_tokens=prompt_len,
                             num_generation_tokens=len(tokens) * n)
    outputs = [CompletionOutput(index=i, text="abc", token_ids=list(tokens), finish_reason=reason) for i in range(n)]
    return RequestOutput("r", "p", list(range(prompt_len)), outputs, True, metrics)


def test_engine_gauges_are_read_at_scrape_time():
    stats = {"now": STATS}
    m = ServerMetrics("m", lambda: stats["now"])
    text = m.render().decode()
    assert value(text, "surge:engine_ready") == 1.0
    assert value(text, "surge:num_requests_running") == 3
    assert value(text, "surge:num_requests_waiting") == 2
    assert value(text, "surge:kv_cache_usage_perc") == pytest.approx(0.25)
    assert value(text, "surge:num_used_pages") == 50
    assert value(text, "surge:num_total_pages") == 200
    assert value(text, "surge:prefix_cache_hit_rate") == pytest.approx(0.25)
    assert value(text, "surge:prefix_cache_queries_total") == 400
    assert value(text, "surge:prefix_cache_hits_total") == 100
    assert value(text, "surge:num_preemptions_total") == 4
    stats["now"] = make_stats(**dict(FLAT, num_used_pages=0, num_running=0))
    text = m.render().decode()
    assert value(text, "surge:kv_cache_usage_perc") == 0.0
    assert value(text, "surge:num_requests_running") == 0


def test_engine_not_ready_or_failing_stats_still_render():
    assert value(ServerMetrics("m", lambda: None).render().decode(), "surge:engine_ready") == 0.0

    def broken():
        raise RuntimeError("engine gone")

    text = ServerMetrics("m", broken).render().decode()
    assert value(text, "surge:engine_ready") == 0.0
    assert "surge:num_requests_running" not in text


def test_finished_request_counts_tokens_reasons_and_key_usage():
    m = ServerMetrics("m", lambda: STATS, max_model_len=512)
    timer = m.timer()
    m.observe_finished(finished_output(prompt_len=5, tokens=(1, 2, 3), reason="stop", n=2), timer, "team-a")
    m.observe_finished(finished_output(prompt_len=7, tokens=(1,), reason="length"), m.timer(), None)
    text = m.render().decode()
    assert value(text, "surge:prompt_tokens_total") == 12
    assert value(text, "surge:generation_tokens_total") == 7
    assert value(text, "surge:request_success_total", finished_reason="stop") == 2
    assert value(text, "surge:request_success_total", finished_reason="length") == 1
    assert value(text, "surge:api_key_prompt_tokens_total", label="team-a") == 5
    assert value(text, "surge:api_key_completion_tokens_total", label="team-a") == 6
    assert value(text, "surge:api_key_requests_total", label="team-a") == 1
    assert value(text, "surge:e2e_request_latency_seconds_count") == 2
    assert value(text, "surge:request_queue_time_seconds_count") == 2
    assert value(text, "surge:request_queue_time_seconds_sum") == pytest.approx(0.5)
    assert value(text, "surge:request_prompt_tokens_bucket", le="5.0") == 1
    assert value(text, "surge:request_prompt_tokens_bucket", le="10.0") == 2
    assert m.totals() == {"prompt_tokens": 12, "generation_tokens": 7, "requests": 2}


def test_timer_measures_first_token_and_inter_token_gaps():
    m = ServerMetrics("m", lambda: STATS)
    timer = m.timer()
    partial = finished_output(tokens=(1,))
    timer.on_output(partial)  # first token: a TTFT sample, no gap
    time.sleep(0.02)
    timer.on_output(finished_output(tokens=(1, 2, 3)))  # two more tokens: two gaps
    timer.on_output(finished_output(tokens=(1, 2, 3)))  # nothing new: nothing recorded
    text = m.render().decode()
    assert value(text, "surge:time_to_first_token_seconds_count") == 1
    assert value(text, "surge:inter_token_latency_seconds_count") == 2
    gap_sum = value(text, "surge:inter_token_latency_seconds_sum")
    assert 0.02 <= gap_sum < 1.0


def test_registered_key_labels_show_before_use_and_servers_do_not_share_registries():
    first, second = ServerMetrics("m", lambda: STATS), ServerMetrics("m", lambda: STATS)
    first.register_key_label("ui")
    assert value(first.render().decode(), "surge:api_key_prompt_tokens_total", label="ui") == 0
    assert "label=\"ui\"" not in second.render().decode()


def test_histogram_buckets_are_sensible():
    m = ServerMetrics("m", lambda: STATS, max_model_len=2048)
    text = m.render().decode()
    names = {name for name, _ in samples(text)}
    for histogram in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                      "time_per_output_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"):
        assert f"surge:{histogram}_bucket" in names
    assert token_count_buckets(2048) == (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
    ttft = sorted(float(dict(labels)["le"]) for name, labels in samples(text)
                  if name == "surge:time_to_first_token_seconds_bucket")
    assert ttft[0] <= 0.01 and 60 <= ttft[-2] and ttft[-1] == float("inf")


class _FakeEngine:
    model_name = "m"

    def __init__(self):
        self.values = dict(FLAT)

    def stats(self):
        self.values["num_steps"] += 10
        return make_stats(**self.values)


def test_start_monitoring_exports_and_draws_the_console_table():
    from rich.console import Console

    screen = io.StringIO()
    handle = start_monitoring(_FakeEngine(), prometheus_port=0, enable_console=True, refresh_interval=0.05,
                              console=Console(file=screen, width=100, force_terminal=True))
    try:
        assert handle.port and handle.url == f"http://127.0.0.1:{handle.port}/metrics"
        text = httpx.get(handle.url, timeout=5).text
        assert value(text, "surge:num_requests_waiting") == 2
        assert value(text, "surge:kv_cache_usage_perc") == pytest.approx(0.25)
        time.sleep(0.3)
    finally:
        handle.stop()
    drawn = screen.getvalue()
    assert "memory (KV cache)" in drawn and "25.0%" in drawn and "(50/200 pages)" in drawn
    assert "active requests" in drawn and "cache hit rate" in drawn
    with pytest.raises(httpx.HTTPError):
        httpx.get(handle.url, timeout=1)


def test_console_table_shows_throughput_from_counter_rates():
    from rich.console import Console

    table = build_table(STATS, {"generation_tokens": 123.4, "steps": 10.0})
    screen = io.StringIO()
    Console(file=screen, width=100).print(table)
    text = screen.getvalue()
    assert "123.4 tok/s" in text and "10.0 steps/s" in text and "25.0%" in text


def test_console_that_is_not_a_terminal_gets_summary_lines(monitoring_log_interval):
    from rich.console import Console

    screen = io.StringIO()
    handle = start_monitoring(_FakeEngine(), prometheus_port=None, enable_console=True, refresh_interval=0.01,
                              console=Console(file=screen, width=200, force_terminal=False))
    time.sleep(0.3)
    handle.stop()
    assert handle.url is None
    lines = [line for line in screen.getvalue().splitlines() if line]
    assert lines and all(line.startswith("surge: running 3, waiting 2, KV cache 25.0% (50/200 pages)")
                         for line in lines)


@pytest.fixture
def monitoring_log_interval(monkeypatch):
    import surge.monitoring.monitor as monitoring

    monkeypatch.setattr(monitoring, "LOG_INTERVAL_S", 0.05)


def test_spec_decode_series_have_vllm_names_labelled_by_method():
    assert "spec_decode" not in ServerMetrics("m", lambda: STATS).render().decode()  # method=none: no series
    stats = make_stats(**FLAT, spec_decode_method="ngram", spec_decode_num_drafts=6, spec_decode_num_draft_tokens=15,
                       spec_decode_num_accepted_tokens=9, spec_decode_acceptance_lengths=[2, 1, 1, 2])
    text = ServerMetrics("m", lambda: stats).render().decode()
    assert value(text, "surge:spec_decode_num_drafts_total", method="ngram") == 6
    assert value(text, "surge:spec_decode_num_draft_tokens_total", method="ngram") == 15
    assert value(text, "surge:spec_decode_num_accepted_tokens_total", method="ngram") == 9
    # Verifications that accepted more than p drafts: 4, 3, 2; they sum to the accepted tokens.
    per_pos = [value(text, "surge:spec_decode_num_accepted_tokens_per_pos_total", method="ngram", position=str(p))
               for p in range(3)]
    assert per_pos == [4, 3, 2] and sum(per_pos) == 9
    buckets = [value(text, "surge:spec_decode_acceptance_length_bucket", method="ngram", le=le)
               for le in ("1.0", "2.0", "3.0", "4.0", "+Inf")]
    assert buckets == [2, 3, 4, 6, 6]
    assert value(text, "surge:spec_decode_acceptance_length_count", method="ngram") == 6
    assert value(text, "surge:spec_decode_acceptance_length_sum", method="ngram") == 6 + 9


def test_engine_loop_counters_are_exposed():
    stats = make_stats(**FLAT, step_host_seconds=2.5, step_device_wait_seconds=9.0, device_idle_seconds=0.125)
    text = ServerMetrics("m", lambda: stats).render().decode()
    assert value(text, "surge:engine_steps_total") == 1000
    assert value(text, "surge:engine_step_host_seconds_total") == 2.5
    assert value(text, "surge:engine_step_device_wait_seconds_total") == 9.0
    assert value(text, "surge:engine_device_idle_seconds_total") == 0.125
