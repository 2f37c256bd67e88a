"""surge-bench: latency math, Poisson arrivals, the SSE load generator, sweeps and their summaries.

The end-to-end tests use the tiny random Llama: a two-job `surge-bench -m` sweep (result.json per
job, summary.csv / .md / .png in the sweep dir) and a serving run against a surge-serve subprocess
the benchmark starts itself (client and server token counts agree).
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from omegaconf import OmegaConf

from surge.bench.load_generator import arrival_offsets, run_load
from surge.bench.prometheus import parse_counters
from surge.bench.serve_metrics import SLO_TPOT_S, SLO_TTFT_S, StreamRecord, meets_slo, summarize_streams
from surge.bench.summary import collect, write_summary
from surge.bench.sweep_progress import count_jobs
from surge.config import make_config, to_config
from surge.server.process import config_yaml as server_yaml

REPO = Path(__file__).resolve().parents[1]

TINY_ENGINE = dict(backend="reference", max_model_len=256, token_buckets=[16, 64], num_pages=128)


# ---- latency math ------------------------------------------------------------------------------

def test_stream_record_latencies_follow_vllm_definitions():
    record = StreamRecord(sent=10.0, chunk_times=[10.5, 10.6, 10.8, 11.0], ended=11.1, prompt_tokens=7,
                          output_tokens=4)
    assert record.ttft == pytest.approx(0.5)
    assert record.e2e == pytest.approx(1.1)
    assert record.tpot == pytest.approx((1.1 - 0.5) / 3)  # the first token excluded
    assert record.itl == pytest.approx([0.1, 0.2, 0.2])


def test_single_token_request_has_no_tpot_and_is_judged_on_ttft():
    fast = StreamRecord(sent=0.0, chunk_times=[0.2], ended=0.2, output_tokens=1)
    slow = StreamRecord(sent=0.0, chunk_times=[SLO_TTFT_S + 0.1], ended=SLO_TTFT_S + 0.1, output_tokens=1)
    assert fast.tpot is None and meets_slo(fast)
    assert not meets_slo(slow)


def test_summary_counts_goodput_percentiles_and_failures():
    good = StreamRecord(sent=0.0, chunk_times=[0.1, 0.15, 0.2], ended=0.2, prompt_tokens=10, output_tokens=3)
    # TPOT = (2.0 - 0.1) / 2 = 0.95 s: misses the TPOT objective.
    slow = StreamRecord(sent=0.0, chunk_times=[0.1, 1.0, 2.0], ended=2.0, prompt_tokens=10, output_tokens=3)
    failed = StreamRecord(sent=0.0, error="HTTP 500: boom")
    summary = summarize_streams([good, slow, failed], duration_s=2.0)
    assert summary["num_completed"] == 2 and summary["num_failed"] == 1
    assert summary["num_within_slo"] == 1
    assert summary["goodput_requests_per_s"] == pytest.approx(0.5)
    assert summary["requests_per_s"] == pytest.approx(1.0)
    assert summary["output_tokens_per_s"] == pytest.approx(3.0)
    assert summary["total_tokens_per_s"] == pytest.approx(13.0)
    assert summary["ttft_ms"]["p50"] == pytest.approx(100.0)
    assert summary["tpot_ms"]["mean"] == pytest.approx((50.0 + 950.0) / 2)
    assert summary["itl_ms"]["mean"] == pytest.approx(np.mean([50, 50, 900, 1000]))
    assert summary["e2e_ms"]["p50"] == pytest.approx(1100.0)
    assert summary["slo"] == {"ttft_ms": SLO_TTFT_S * 1000, "tpot_ms": SLO_TPOT_S * 1000}


# ---- Poisson arrivals ---------------------------------------------------------------------------

def test_poisson_arrivals_are_seeded_with_mean_gap_one_over_rate():
    offsets = arrival_offsets(20_000, request_rate=4.0, seed=7)
    assert offsets == arrival_offsets(20_000, request_rate=4.0, seed=7)
    assert offsets != arrival_offsets(20_000, request_rate=4.0, seed=8)
    gaps = np.diff(offsets)
    assert offsets[0] == 0.0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(0.25, rel=0.05)
    # Exponential gaps: the standard deviation equals the mean.
    assert gaps.std() == pytest.approx(0.25, rel=0.05)


@pytest.mark.parametrize("rate", [0.0, float("inf")])
def test_rate_zero_or_infinite_sends_everything_at_once(rate):
    assert arrival_offsets(5, rate) == [0.0] * 5


# ---- the load generator against a scripted server ------------------------------------------------

def _sse_transport(fail_every: int = 0):
    """An httpx transport answering /v1/completions with a scripted stream of 3 chunks plus usage."""
    calls = {"n": 0}

    def handler(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if fail_every and calls["n"] % fail_every == 0:
            return httpx.Response(503, json={"error": {"message": "queue full"}})
        body = json.loads(request.content)
        assert body["stream"] and body["stream_options"] == {"include_usage": True} and body["ignore_eos"]
        events = [{"choices": [{"index": 0, "text": t, "finish_reason": None}]} for t in ("a", "b", "c")]
        events.append({"choices": [], "usage": {"prompt_tokens": len(body["prompt"]), "completion_tokens": 3,
                                                "total_tokens": len(body["prompt"]) + 3}})
        text = "".join(f"data: {json.dumps(e)}\n\n" for e in events) + "data: [DONE]\n\n"
        return httpx.Response(200, content=text.encode(), headers={"content-type": "text/event-stream"})

    return httpx.MockTransport(handler)


def test_load_generator_reads_chunks_usage_and_errors():
    prompts = [[5, 6, 7], [8, 9], [1, 2, 3, 4]]
    records, duration = asyncio.run(run_load("http://bench.test", prompts, model="m", output_len=3,
                                             max_concurrency=2, progress=False, transport=_sse_transport(3)))
    assert duration > 0
    assert [r.ok for r in records] == [True, True, False]
    assert [len(r.chunk_times) for r in records[:2]] == [3, 3]
    assert [r.prompt_tokens for r in records[:2]] == [3, 2]
    assert all(r.output_tokens == 3 for r in records[:2])
    assert records[2].error.startswith("HTTP 503")


def test_prometheus_counters_are_summed_over_labels():
    text = ('# TYPE surge:prompt_tokens counter\n'
            'surge:prompt_tokens_total{model_name="a"} 10.0\n'
            'surge:prompt_tokens_total{model_name="b"} 5.0\n')
    counters = parse_counters(text, ["surge:prompt_tokens_total", "surge:generation_tokens_total"])
    assert counters == {"surge:prompt_tokens_total": 15.0, "surge:generation_tokens_total": None}


def test_server_config_is_the_bench_config_on_a_free_loopback_port():
    cfg = make_config("some/model.gguf", backend="cpu", page_size=32, token_buckets=[16, 64],
                      **{"server.port": 9000, "server.host": "0.0.0.0"})
    loaded = OmegaConf.create(server_yaml(cfg))
    assert "surge_schema" in loaded.defaults
    del loaded["defaults"], loaded["hydra"]
    served = to_config(loaded)
    assert served.server.port == 0 and served.server.host == "127.0.0.1"
    assert served.cache == cfg.cache and served.backend == cfg.backend and served.engine == cfg.engine
    assert served.model == cfg.model


# ---- sweep bookkeeping ---------------------------------------------------------------------------

def test_count_jobs_multiplies_the_sweeps():
    assert count_jobs(["backend=reference,cpu", "engine.max_num_seqs=8,32", "cache.page_size=16,32",
                       "bench.num_prompts=4"]) == 8
    assert count_jobs(["bench.num_prompts=4"]) == 1


def test_summary_lists_failed_jobs_and_plots_the_rest(tmp_path):
    for num, (seqs, tps) in enumerate([(8, 100.0), (32, 250.0)]):
        job = tmp_path / str(num)
        job.mkdir()
        result = {"mode": "offline", "output_tokens_per_s": tps, "requests_per_s": 1.0, "num_prompts": 4,
                  "input_len": 8, "output_len": 4, "ttft_ms": {"p50": 12.0, "p90": 20.0}}
        (job / "result.json").write_text(json.dumps({"result": result,
                                                     "overrides": [f"engine.max_num_seqs={seqs}", "x=1"]}))
    failed = tmp_path / "2" / ".hydra"
    failed.mkdir(parents=True)
    (failed / "overrides.yaml").write_text("- engine.max_num_seqs=64\n- x=1\n")

    swept, rows, mode = collect(tmp_path)
    assert swept == ["engine.max_num_seqs"] and mode == "offline"
    assert [r["status"] for r in rows] == ["ok", "ok", "failed"]
    written = write_summary(tmp_path)
    assert [p.name for p in written] == ["summary.csv", "summary.md", "summary.png"]
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[0].startswith("| job | engine.max_num_seqs | status | output_tokens_per_s")
    assert len(table) == 2 + 3 and "| failed |" in table[-1]
    assert (tmp_path / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"



def test_cpu_vs_llamacpp_table_reads_surge_bench_records(tmp_path):
    """benchmarks/cpu_vs_llamacpp_table.py on a run folder: llama.cpp's JSONL rates beside surge-bench's records."""
    (tmp_path / "cpu.txt").write_text("Model name: Test CPU\nCPU(s): 2\nThread(s) per core: 1\nFlags: avx2 fma\n")
    for r, (t1, t32, ours1, ours32) in enumerate([(2.0, 20.0, 80.0, 300.0), (4.0, 40.0, 60.0, 250.0)], start=1):
        rows = [{"n_kv_max": 5120, "pp": 32, "tg": 128, "pl": n, "t": t} for n, t in ((1, t1), (32, t32))]
        (tmp_path / f"llama-q4_1-r{r}.log").write_text("load ...\n" + "\n".join(json.dumps(x) for x in rows) + "\n")
        for n, tps in ((1, ours1), (32, ours32)):
            job = tmp_path / f"surge-q4_1-auto-{n}-r{r}"
            job.mkdir()
            (job / "result.json").write_text(json.dumps({"result": {"output_tokens_per_s": tps}, "overrides": []}))
    script = REPO / "benchmarks" / "cpu_vs_llamacpp_table.py"
    table = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, check=True).stdout
    assert "| q4_1 | llama.cpp | 1 | 64.0 | 204.8 |" in table  # 1 x 128 / 2 s and 32 x 128 / 20 s
    assert "| q4_1 | surge | 2 | 60.0 | 250.0 |" in table
    # medians over the two rounds: surge 70 / 275, llama.cpp 48 / 153.6
    assert "| q4_1 | surge | 1.46x | 1.79x |" in table
    assert "CPU: Test CPU, 2 CPUs (1 thread(s) per core)" in table

# ---- end to end on the tiny model ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.mark.slow
def test_two_job_sweep_writes_results_and_summaries(tiny, tmp_path):
    # The tiny model enters the sweep as an option of the `model` config group.
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text(f"name: tiny-llama\npath: {tiny.path}\n")
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "surge.cli.bench", "-m", "--config-dir", str(tmp_path / "conf"),
               "model=tiny", "backend=reference", "engine.max_num_seqs=2,4", "engine.max_model_len=256",
               "engine.token_buckets=[16,64]", "cache.num_pages=128", "bench.num_prompts=4", "bench.input_len=8",
               "bench.output_len=4", f"hydra.sweep.dir={sweep_dir}"]  # no inner loop: one workload per job
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[sweep 2/2]" in done.stderr

    for num, seqs in enumerate([2, 4]):
        record = json.loads((sweep_dir / str(num) / "result.json").read_text())
        assert f"engine.max_num_seqs={seqs}" in record["overrides"]
        assert record["result"]["mode"] == "offline"
        assert record["result"]["num_output_tokens"] == 4 * 4  # the 4 prompts once, not once per concurrency
        assert record["config"]["engine"]["max_num_seqs"] == seqs
    with (sweep_dir / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["engine.max_num_seqs"] for r in rows] == ["2", "4"]
    assert all(r["status"] == "ok" and float(r["output_tokens_per_s"]) > 0 for r in rows)
    table = (sweep_dir / "summary.md").read_text().splitlines()
    assert len(table) == 4 and "engine.max_num_seqs" in table[0]
    assert (sweep_dir / "summary.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_serve_benchmark_against_its_own_server(tiny):
    from surge.bench.serve import format_serve, run_serve

    cfg = make_config(tiny.path, max_num_seqs=4, **TINY_ENGINE,
                      **{"bench.mode": "serve", "bench.num_prompts": 6, "bench.input_len": 8, "bench.output_len": 5,
                         "bench.request_rate": 50.0, "bench.max_concurrency": 4,
                         "bench.structured_output": "compare"})
    result = run_serve(cfg)
    assert result["num_completed"] == 6 and result["num_failed"] == 0, result["errors"]
    assert result["num_output_tokens"] == 6 * 5 and result["num_input_tokens"] == 6 * 8
    # The server counted both variants: the json_schema run generated as many tokens (its schema cannot close).
    assert result["server_generation_tokens"] == 2 * result["num_output_tokens"]
    assert result["server_prompt_tokens"] == 2 * result["num_input_tokens"]
    assert result["ttft_ms"]["p50"] > 0 and result["tpot_ms"]["p50"] > 0
    by_variant = result["output_tokens_per_s_by_variant"]
    assert sorted(by_variant) == ["json_schema", "none"] and all(v["median"] > 0 for v in by_variant.values())
    assert "TTFT" in format_serve(result) and "json_schema / none" in format_serve(result)


@pytest.mark.slow
def test_a_dtype_by_concurrency_sweep_is_four_jobs_and_one_pivot(tiny, tmp_path):
    # What bench.concurrency x bench.dtypes did inside one job is a Hydra sweep: one workload per job,
    # engine.max_num_seqs requests at once (bench.num_prompts follows it), one engine per dtype.
    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "tiny.yaml").write_text(f"name: tiny-llama\npath: {tiny.path}\n")
    sweep_dir = tmp_path / "sweep"
    command = [sys.executable, "-m", "surge.cli.bench", "-m", "--config-dir", str(tmp_path / "conf"),
               "model=tiny", "backend=reference", "model.dtype=float32,bfloat16", "engine.max_num_seqs=1,3",
               "engine.max_model_len=256", "engine.token_buckets=[16,64]", "cache.num_pages=128",
               "bench.input_len=8", "bench.output_len=4", f"hydra.sweep.dir={sweep_dir}"]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[sweep 4/4]" in done.stderr
    runs = [json.loads((sweep_dir / str(n) / "result.json").read_text())["result"] for n in range(4)]
    assert [(r["dtype"], r["num_prompts"]) for r in runs] == [
        ("float32", 1), ("float32", 3), ("bfloat16", 1), ("bfloat16", 3)]
    assert [r["num_output_tokens"] for r in runs] == [4, 12, 4, 12]
    assert all(r["num_compiles_during_run"] == 0 for r in runs)
    # The loop figures: 4 generated tokens per request take at least 4 steps; host and wait time are measured.
    assert all(r["num_steps"] >= 4 and r["host_ms_per_step"] > 0 and r["device_wait_ms_per_step"] > 0
               and 0 <= r["device_idle_ms_per_step"] <= r["step_ms"] and r["async_scheduling"] for r in runs)
    from surge.bench.offline import format_offline

    assert "ms host" in format_offline(runs[0]) and "device idle" in format_offline(runs[0])
    table = (sweep_dir / "summary.md").read_text().splitlines()
    pivot = table[table.index("output_tokens_per_s by engine.max_num_seqs:") + 2:]
    assert pivot[0] == "| model.dtype | engine.max_num_seqs=1 | engine.max_num_seqs=3 |"
    assert pivot[2].startswith("| float32 | ") and pivot[3].startswith("| bfloat16 | ") and len(pivot) == 4
    assert "generated tokens only" in format_offline(runs[0]) and "excluded" in runs[0]["warmup"]


def test_the_inner_sweep_keys_are_gone_and_refused_by_name():
    with pytest.raises(ValueError, match="bench.concurrency"):
        make_config("x", **{"bench.concurrency": [0]})
    with pytest.raises(ValueError, match="bench.dtypes"):
        make_config("x", **{"bench.dtypes": ["float16"]})


def test_copy_workload_repeats_a_piece_and_is_validated():
    from surge.bench.workload import load_prompts

    cfg = make_config("x", **{"bench.workload": "copy", "bench.num_prompts": 3, "bench.input_len": 256})
    prompts = load_prompts(cfg.bench, 49152)
    assert len(prompts) == 3 and all(len(p) == 256 for p in prompts)
    for prompt in prompts:
        piece = prompt[:102]  # 2/5 of 256
        assert prompt == (piece * 3)[:256] and len(set(piece)) > 90  # random ids, repeated
        assert all(100 <= t < 49152 - 100 for t in prompt)
    assert prompts[0] != prompts[1]
    assert load_prompts(cfg.bench, 49152) == prompts  # seeded
    random = load_prompts(make_config("x", **{"bench.num_prompts": 3, "bench.input_len": 256}).bench, 49152)
    assert random[0][:102] != random[0][102:204]
    with pytest.raises(ValueError, match="bench.workload"):
        make_config("x", **{"bench.workload": "loop"})
    with pytest.raises(ValueError, match="bench.workload"):
        make_config("x", **{"bench.workload": "copy", "bench.mode": "prefix"})


def test_offline_copy_workload_with_suffix_decoding_reports_acceptance(tiny):
    from surge.bench.offline import format_offline, run_offline

    cfg = make_config(tiny.path, max_num_seqs=2, **TINY_ENGINE,
                      **{"bench.num_prompts": 2, "bench.input_len": 40, "bench.output_len": 16,
                         "bench.workload": "copy", "engine.speculative.method": "suffix",
                         # Proposals independent of step timings, so that drafts are certain to be made.
                         "engine.speculative.cost_model": "none"})
    result = run_offline(cfg)
    assert result["num_output_tokens"] == 32 and result["input_len"] == 40
    assert result["spec_decode_method"] == "suffix" and result["spec_decode_num_draft_tokens"] > 0
    assert "speculative suffix: " in format_offline(result)


def test_num_prompts_follows_max_num_seqs_unless_set():
    assert make_config("x").bench.num_prompts == 32
    assert make_config("x", max_num_seqs=8).bench.num_prompts == 8
    assert make_config("x", max_num_seqs=8, **{"bench.num_prompts": 3}).bench.num_prompts == 3
    with pytest.raises(ValueError, match="bench.num_prompts"):
        make_config("x", **{"bench.num_prompts": 0})


def test_pivot_puts_the_numeric_key_across_and_the_others_down(tmp_path):
    figures = {("float32", 1): 40.0, ("float32", 8): 170.0, ("bfloat16", 1): 60.0, ("bfloat16", 8): 180.5}
    for num, ((dtype, seqs), tps) in enumerate(figures.items()):
        job = tmp_path / str(num)
        job.mkdir()
        result = {"mode": "offline", "output_tokens_per_s": tps, "num_prompts": seqs}
        (job / "result.json").write_text(json.dumps({"result": result, "overrides": [
            f"model.dtype={dtype}", f"engine.max_num_seqs={seqs}"]}))
    write_summary(tmp_path)
    table = (tmp_path / "summary.md").read_text().splitlines()
    assert table[len(figures) + 2:] == [
        "", "output_tokens_per_s by engine.max_num_seqs:", "",
        "| model.dtype | engine.max_num_seqs=1 | engine.max_num_seqs=8 |", "|---|---|---|",
        "| float32 | 40.00 | 170.00 |", "| bfloat16 | 60.00 | 180.50 |"]
