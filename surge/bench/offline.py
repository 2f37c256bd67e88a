"""Offline throughput: a fixed batch of prompts through Engine.generate.

In: a SurgeConfig (engine/cache/backend knobs + bench workload). Out: a result
dict — requests/s, input and output tokens/s (output tokens = generated tokens
only, over the whole run's wall time, prompt processing included), TTFT / TPOT /
E2E percentiles — measured after a warm-up that is run first and excluded (and
said so in the result). One job is one workload: bench.num_prompts requests
(engine.max_num_seqs unless set) submitted together, in model.dtype; a table over
concurrency and dtype is a sweep (`surge-bench -m engine.max_num_seqs=1,8,32,128
model.dtype=float32,bfloat16`) whose summary pivots it. With
bench.compare=transformers the same prompts then run through transformers `generate`
(batched, same weights, float32) and the ratio is reported.
"""

from __future__ import annotations

import time

from surge.bench.stats import percentiles, request_latencies
from surge.bench.workload import load_prompts
from surge.config import SurgeConfig
from surge.engine.stats import EngineStats


def run_offline(cfg: SurgeConfig, engine=None) -> dict:
    from surge.engine.engine import Engine
    from surge.sampling.params import SamplingParams

    bench = cfg.bench
    engine = engine or Engine(cfg)
    prompts = load_prompts(bench, engine.arch.vocab_size)
    params = SamplingParams(max_tokens=bench.output_len, temperature=0.0, ignore_eos=True)
    warmup = prompts[: max(bench.num_warmup, 0)]
    if warmup:
        _generate(engine, warmup, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), progress=False)
        # The warm-up prompts are the run's own first prompts: their cached pages must not flatter the run.
        engine.reset_prefix_cache()
    before = engine.stats()

    started = time.perf_counter()
    outputs = _generate(engine, prompts, params, progress=True)
    elapsed = time.perf_counter() - started
    after = engine.stats()

    num_input = sum(len(o.prompt_token_ids) for o in outputs)
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    ttft, tpot, e2e = request_latencies(outputs)
    result = {
        "mode": "offline",
        "backend": engine.backend_name,
        "dtype": engine.dtype,
        "num_prompts": len(prompts),
        "input_len": bench.input_len,
        "output_len": bench.output_len,
        "elapsed_s": elapsed,
        "requests_per_s": len(prompts) / elapsed,
        "input_tokens_per_s": num_input / elapsed,
        "output_tokens_per_s": num_output / elapsed,
        "num_output_tokens": num_output,
        "ttft_ms": percentiles(ttft),
        "tpot_ms": percentiles(tpot),
        "e2e_ms": percentiles(e2e),
        "num_compiles_during_run": after.num_compiles - before.num_compiles,
        "num_preemptions": after.num_preemptions,
        "warmup": f"{len(warmup)} request(s) x 4 tokens run before timing, excluded; compile time excluded",
        "measures": "tok/s = generated tokens only / wall time of the whole run (prompt processing included); "
                    "greedy, ignore_eos",
        **_loop_figures(cfg, before, after, elapsed),
    }
    if after.spec_decode is not None:  # speculative decoding: acceptance over the warm-up and the run
        result.update((k, v) for k, v in after.to_dict().items() if k.startswith("spec_decode_"))
    if bench.compare == "transformers":
        from surge.bench.transformers_baseline import run_transformers

        source = cfg.model.path or _resolved_source(cfg)
        baseline = run_transformers(source, prompts, bench.output_len)
        result["transformers_output_tokens_per_s"] = baseline["output_tokens_per_s"]
        result["speedup_vs_transformers"] = result["output_tokens_per_s"] / baseline["output_tokens_per_s"]
    return result


def _loop_figures(cfg: SurgeConfig, before: EngineStats, after: EngineStats, elapsed: float) -> dict:
    """Per engine step over the run: wall ms, host ms (step() less waits on the device), the device's idle gap."""
    num_steps = after.num_steps - before.num_steps
    host, wait, idle = (after.step_host_seconds - before.step_host_seconds,
                        after.step_device_wait_seconds - before.step_device_wait_seconds,
                        after.device_idle_seconds - before.device_idle_seconds)
    per_step = (lambda seconds: 1000 * seconds / num_steps) if num_steps else (lambda seconds: None)
    return {
        "async_scheduling": cfg.engine.async_scheduling,
        "num_steps": num_steps,
        "step_ms": 1000 * elapsed / num_steps if num_steps else None,
        "host_ms_per_step": per_step(host),
        "device_wait_ms_per_step": per_step(wait),
        "device_idle_ms_per_step": per_step(idle),
        "device_idle_share": idle / elapsed,
    }


def _generate(engine, prompts, params, progress: bool):
    token_prompts = [p for p in prompts if not isinstance(p, str)]
    if len(token_prompts) == len(prompts):
        return engine.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=progress)
    return engine.generate(prompts, params, use_tqdm=progress)


def _resolved_source(cfg: SurgeConfig) -> str:
    from surge.models.catalogue import resolve_model

    return resolve_model(cfg.model.name)


def format_offline(result: dict) -> str:
    lines = [
        f"requests: {result['num_prompts']} x ({result['input_len']} in, {result['output_len']} out), "
        f"backend {result['backend']}, dtype {result['dtype']}",
        f"elapsed: {result['elapsed_s']:.2f} s   ({result['warmup']})",
        f"({result['measures']})",
        f"throughput: {result['output_tokens_per_s']:.1f} generated tok/s, {result['requests_per_s']:.2f} req/s, "
        f"{result['input_tokens_per_s']:.1f} prompt tok/s",
        f"TTFT ms p50/p90/p99: {_p(result['ttft_ms'])}   TPOT ms: {_p(result['tpot_ms'])}",
        f"compiles during run: {result['num_compiles_during_run']}   preemptions: {result['num_preemptions']}",
    ]
    if result.get("num_steps"):
        lines.append(f"loop (async_scheduling={str(result['async_scheduling']).lower()}): {result['num_steps']} steps, "
                     f"{result['step_ms']:.2f} ms/step wall, {result['host_ms_per_step']:.2f} ms host, "
                     f"{result['device_wait_ms_per_step']:.2f} ms waiting on the device, device idle "
                     f"{result['device_idle_ms_per_step']:.3f} ms/step ({100 * result['device_idle_share']:.1f}% of "
                     f"the run, an upper bound)")
    if "spec_decode_method" in result:
        lines.append(f"speculative {result['spec_decode_method']}: {result['spec_decode_num_accepted_tokens']} of "
                     f"{result['spec_decode_num_draft_tokens']} draft tokens accepted "
                     f"({100 * result['spec_decode_acceptance_rate']:.1f}%), "
                     f"{result['spec_decode_mean_acceptance_length']:.2f} tokens per verification, "
                     f"accepted-length histogram {result['spec_decode_acceptance_lengths']}")
    if "speedup_vs_transformers" in result:
        lines.append(f"transformers: {result['transformers_output_tokens_per_s']:.1f} tok/s   "
                     f"surge/transformers: {result['speedup_vs_transformers']:.2f}x")
    return "\n".join(lines)


def _p(stats: dict) -> str:
    if stats["p50"] is None:
        return "-"
    return f"{stats['p50']:.1f}/{stats['p90']:.1f}/{stats['p99']:.1f}"
