"""Prefix-caching benchmark: throughput and TTFT as more of every prompt is shared.

In: a SurgeConfig. For each share in `bench.prefix_shares`, `bench.num_prompts`
prompts of `bench.input_len` random token ids (seeded) whose first
`share * input_len` ids are the same in every prompt, each generating
`bench.output_len` tokens (greedy, ignore_eos), all submitted at once through
`Engine.generate`. The prefix cache is reset before each share.

Out: per share, request and token throughput, TTFT p50/p90 and the prefix-cache
hit rate of that share's prompts (hit tokens / looked-up tokens, from the
counters behind `engine.stats().prefix_cache_hit_rate`); and a cold-vs-warm
figure: the TTFT of one request whose prompt starts with a 1,000-token prefix,
first with an empty cache, then again (different tail, same prefix) with the
prefix cached, and their ratio. `engine.max_model_len` is raised when the
workload needs it. `bench.num_warmup` short requests run first, excluded.
"""

from __future__ import annotations

import dataclasses
import time

from surge.bench.stats import percentiles
from surge.bench.workload import random_token_prompts
from surge.config import SurgeConfig
from surge.engine.stats import prefix_cache_hit_rate

# The cold-vs-warm request: a prefix of this many tokens, then a distinct tail, then a few generated tokens.
COLD_WARM_PREFIX_LEN = 1000
COLD_WARM_TAIL_LEN = 16
COLD_WARM_OUTPUT_LEN = 2


def workload_config(cfg: SurgeConfig) -> SurgeConfig:
    """cfg with engine.max_model_len raised to fit the longest prompt this benchmark sends."""
    bench = cfg.bench
    needed = max(bench.input_len + bench.output_len,
                 COLD_WARM_PREFIX_LEN + COLD_WARM_TAIL_LEN + COLD_WARM_OUTPUT_LEN) + 1
    if cfg.engine.max_model_len == 0 or cfg.engine.max_model_len >= needed:
        return cfg
    return dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, max_model_len=needed))


def run_prefix(cfg: SurgeConfig, engine=None) -> dict:
    from surge.engine.engine import Engine
    from surge.sampling.params import SamplingParams

    cfg = workload_config(cfg)
    bench = cfg.bench
    engine = engine or Engine(cfg)
    vocab = engine.arch.vocab_size
    if bench.num_warmup > 0:
        warmup = random_token_prompts(bench.num_warmup, min(bench.input_len, 16), vocab, bench.seed + 1)
        engine.generate(prompt_token_ids=warmup, sampling_params=_greedy(SamplingParams, 4), use_tqdm=False)

    shares = []
    for share in bench.prefix_shares:
        shared_len = int(share * bench.input_len)
        prompts = random_token_prompts(bench.num_prompts, bench.input_len, vocab, bench.seed,
                                       shared_prefix_len=shared_len)
        shares.append({"share": share, "shared_len": shared_len,
                       **_run_share(engine, prompts, _greedy(SamplingParams, bench.output_len))})

    cold_warm = _cold_vs_warm(engine, vocab, bench.seed, _greedy(SamplingParams, COLD_WARM_OUTPUT_LEN))
    return {
        "mode": "prefix",
        "num_prompts": bench.num_prompts,
        "input_len": bench.input_len,
        "output_len": bench.output_len,
        "enable_prefix_caching": cfg.cache.enable_prefix_caching,
        "max_model_len": engine.max_model_len,
        "shares": shares,
        # The sweep summary's columns: the figures of the largest share.
        "output_tokens_per_s": shares[-1]["output_tokens_per_s"] if shares else None,
        "prefix_cache_hit_rate": shares[-1]["prefix_cache_hit_rate"] if shares else None,
        "cold_warm": cold_warm,
        "warmup": f"{bench.num_warmup} request(s) x 4 tokens run first, excluded; compile time excluded",
    }


def _greedy(params_cls, max_tokens: int):
    return params_cls(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)


def _counters(engine) -> tuple[int, int]:
    stats = engine.stats()
    return stats.prefix_cache_queried_tokens, stats.prefix_cache_hit_tokens


def _reset(engine) -> None:
    if not engine.reset_prefix_cache():
        raise RuntimeError("the prefix cache could not be reset: requests still hold pages")


def _run_share(engine, prompts: list[list[int]], params) -> dict:
    _reset(engine)
    queried_before, hits_before = _counters(engine)
    started = time.perf_counter()
    outputs = engine.generate(prompt_token_ids=prompts, sampling_params=params)
    elapsed = time.perf_counter() - started
    queried_after, hits_after = _counters(engine)
    queried, hits = queried_after - queried_before, hits_after - hits_before
    num_input = sum(len(o.prompt_token_ids) for o in outputs)
    num_output = sum(len(o.outputs[0].token_ids) for o in outputs)
    ttft = percentiles(o.metrics.time_to_first_token for o in outputs if o.metrics.first_token_time is not None)
    return {
        "elapsed_s": elapsed,
        "requests_per_s": len(outputs) / elapsed,
        "output_tokens_per_s": num_output / elapsed,
        "total_tokens_per_s": (num_input + num_output) / elapsed,
        "ttft_ms": {"p50": ttft["p50"], "p90": ttft["p90"]},
        "prefix_cache_hit_tokens": hits,
        "prefix_cache_hit_rate": prefix_cache_hit_rate(hits, queried),
    }


def _cold_vs_warm(engine, vocab: int, seed: int, params) -> dict:
    prefix_len = min(COLD_WARM_PREFIX_LEN, engine.max_model_len - COLD_WARM_TAIL_LEN - COLD_WARM_OUTPUT_LEN - 1)
    cold_prompt, warm_prompt = random_token_prompts(2, prefix_len + COLD_WARM_TAIL_LEN, vocab, seed + 2,
                                                    shared_prefix_len=prefix_len)
    _reset(engine)
    cold = engine.generate(prompt_token_ids=[cold_prompt], sampling_params=params, use_tqdm=False)[0]
    warm = engine.generate(prompt_token_ids=[warm_prompt], sampling_params=params, use_tqdm=False)[0]
    cold_ttft, warm_ttft = cold.metrics.time_to_first_token, warm.metrics.time_to_first_token
    return {
        "prefix_len": prefix_len,
        "prompt_len": len(cold_prompt),
        "cold_ttft_ms": cold_ttft * 1000,
        "warm_ttft_ms": warm_ttft * 1000,
        "warm_cached_tokens": warm.metrics.num_cached_tokens,
        "cold_over_warm": cold_ttft / warm_ttft if warm_ttft else None,
    }


def format_prefix(result: dict) -> str:
    lines = [
        f"requests: {result['num_prompts']} x ({result['input_len']} in, {result['output_len']} out) per share; "
        f"prefix caching {'on' if result['enable_prefix_caching'] else 'OFF'}   ({result['warmup']})",
        "",
        f"{'share':>6}{'shared':>8}{'req/s':>9}{'out tok/s':>11}{'total tok/s':>13}{'TTFT p50':>13}{'TTFT p90':>13}"
        f"{'hit rate':>10}",
    ]
    for s in result["shares"]:
        lines.append(f"{s['share']:>6.2f}{s['shared_len']:>8}{s['requests_per_s']:>9.2f}"
                     f"{s['output_tokens_per_s']:>11.1f}{s['total_tokens_per_s']:>13.1f}"
                     f"{_ms(s['ttft_ms']['p50']):>13}{_ms(s['ttft_ms']['p90']):>13}{s['prefix_cache_hit_rate']:>10.1%}")
    cw = result["cold_warm"]
    ratio = f"{cw['cold_over_warm']:.2f}x" if cw["cold_over_warm"] else "-"
    lines += [
        "",
        f"one request, {cw['prefix_len']}-token prefix + {cw['prompt_len'] - cw['prefix_len']} new tokens: "
        f"TTFT cold {cw['cold_ttft_ms']:.1f} ms, warm {cw['warm_ttft_ms']:.1f} ms ({cw['warm_cached_tokens']} "
        f"tokens from the cache), cold/warm {ratio}",
    ]
    return "\n".join(lines)


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f} ms"
