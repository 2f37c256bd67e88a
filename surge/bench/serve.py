"""Serving benchmark: load an OpenAI-compatible server and measure what clients see.

In: a SurgeConfig. `bench.url` names the server to load; empty starts
`surge-serve` with this very config on a free loopback port (and stops it at
the end). The workload is `bench.num_prompts` prompts (random token ids, or
`bench.dataset` text) of `bench.output_len` generated tokens each, sent as
Poisson arrivals at `bench.request_rate` per second (0 = all at once), at most
`bench.max_concurrency` in flight (0 = no bound).

Out: a result dict — TTFT, TPOT, ITL, E2E (mean/p50/p90/p99 ms), request,
output and total token throughput, goodput against the SLOs of
`serve_metrics` — and the prompt/generation token counts the server's
`/metrics` counted during the run beside the ones the client counted.
`bench.num_warmup` short requests go first and are excluded.

`bench.structured_output=json_schema` constrains every request with a JSON
schema (via `response_format`) that cannot close before `output_len` tokens,
so both variants generate the same number of tokens; `compare` runs the
unconstrained and the constrained workload alternately, `bench.rounds` times
each, on the same server, and reports each variant's median output tok/s and
their ratio (the top-level figures are the unconstrained variant's last run).
"""

from __future__ import annotations

import asyncio
import logging
import statistics

from surge.bench.load_generator import run_load
from surge.bench.prometheus import GENERATION_TOKENS, PROMPT_TOKENS, scrape_counters
from surge.bench.serve_metrics import summarize_streams
from surge.bench.workload import load_prompts
from surge.config import SurgeConfig
from surge.server.process import ServerProcess


def run_serve(cfg: SurgeConfig) -> dict:
    # httpx logs every request at INFO, which Hydra's job logging would print once per request.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    if cfg.bench.url:
        return _measure(cfg, cfg.bench.url.rstrip("/"), started_here=False)
    # Start-up compiles every bucket: on a CPU that can take many minutes.
    with ServerProcess.from_config(cfg, startup_timeout_s=1800.0) as server:
        return _measure(cfg, server.url, started_here=True)


def _measure(cfg: SurgeConfig, url: str, started_here: bool) -> dict:
    import httpx

    bench = cfg.bench
    headers = {"Authorization": f"Bearer {cfg.server.api_keys[0]}"} if cfg.server.api_keys else None
    model = httpx.get(url + "/v1/models", headers=headers, timeout=30.0).json()["data"][0]["id"]
    # Random token ids are drawn from cfg.model's vocabulary (for an external server: name its model).
    prompts = load_prompts(bench, 0 if bench.dataset else model_vocab_size(cfg))
    if bench.num_warmup > 0:
        asyncio.run(run_load(url, prompts[: bench.num_warmup], model=model, output_len=4, headers=headers,
                             progress=False))

    variants = {"none": ["none"], "json_schema": ["json_schema"],
                "compare": ["none", "json_schema"]}[bench.structured_output]
    if bench.num_warmup > 0 and "json_schema" in variants:  # compiles the schema once, outside the timing
        asyncio.run(run_load(url, prompts[: bench.num_warmup], model=model, output_len=4, headers=headers,
                             progress=False, extra_body=structured_body(bench.output_len)))

    counters = (PROMPT_TOKENS, GENERATION_TOKENS)
    before = scrape_counters(url, counters, headers)
    runs: dict[str, list[float]] = {variant: [] for variant in variants}
    for _ in range(bench.rounds):
        for variant in variants:
            records, duration = asyncio.run(run_load(
                url, prompts, model=model, output_len=bench.output_len, request_rate=bench.request_rate,
                max_concurrency=bench.max_concurrency, seed=bench.seed, headers=headers,
                extra_body=structured_body(bench.output_len) if variant == "json_schema" else None))
            summary = summarize_streams(records, duration)
            runs[variant].append(summary["output_tokens_per_s"])
            if variant == variants[0]:
                shown, shown_records = summary, records
    after = scrape_counters(url, counters, headers)
    records = shown_records

    result = {
        "mode": "serve",
        "url": url,
        "server": "started by the benchmark" if started_here else "external",
        "model": model,
        "num_prompts": len(prompts),
        "input_len": bench.input_len if not bench.dataset else None,
        "output_len": bench.output_len,
        "request_rate": bench.request_rate,
        "max_concurrency": bench.max_concurrency,
        **shown,
        "structured_output": bench.structured_output,
        "rounds": bench.rounds,
        "output_tokens_per_s_by_variant": {v: {"runs": r, "median": statistics.median(r)} for v, r in runs.items()},
        "server_prompt_tokens": _delta(before[PROMPT_TOKENS], after[PROMPT_TOKENS]),
        "server_generation_tokens": _delta(before[GENERATION_TOKENS], after[GENERATION_TOKENS]),
        "errors": sorted({r.error for r in records if r.error})[:5],
        "warmup": f"{min(bench.num_warmup, len(prompts))} request(s) x 4 tokens sent first, excluded",
    }
    return result


def structured_body(output_len: int) -> dict:
    """A response_format whose schema needs more than `output_len` tokens, so no request ends early."""
    row = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                            "qty": {"type": "integer", "minimum": 0, "maximum": 999}},
           "required": ["name", "qty"], "additionalProperties": False}
    schema = {"type": "object", "properties": {"rows": {"type": "array", "items": row, "minItems": output_len}},
              "required": ["rows"], "additionalProperties": False}
    return {"response_format": {"type": "json_schema",
                                "json_schema": {"name": "bench_rows", "schema": schema, "strict": True}}}


def _delta(before, after):
    if before is None or after is None:
        return None
    return int(round(after - before))


def model_vocab_size(cfg: SurgeConfig) -> int:
    """The vocabulary size of cfg's model, read from its config (no weights are loaded)."""
    from surge.models.catalogue import resolve_model

    source = resolve_model(cfg.model.path or cfg.model.name)
    if source.endswith(".gguf"):
        from surge.models.gguf_checkpoint import GGUFCheckpoint

        return int(GGUFCheckpoint(source).hf_config()["vocab_size"])
    from surge.models.hf_checkpoint import read_hf_config

    return int(read_hf_config(source)["vocab_size"])


def format_serve(result: dict) -> str:
    rate = f"{result['request_rate']:g}/s" if result["request_rate"] > 0 else "all at once"
    lines = [
        f"server: {result['url']} ({result['server']}), model {result['model']}",
        f"requests: {result['num_completed']}/{result['num_prompts']} completed ({result['num_failed']} failed), "
        f"rate {rate}, max concurrency {result['max_concurrency'] or 'unbounded'}, {result['output_len']} out each",
        f"duration: {result['duration_s']:.2f} s   ({result['warmup']})",
        f"throughput: {result['requests_per_s']:.2f} req/s, {result['output_tokens_per_s']:.1f} output tok/s, "
        f"{result['total_tokens_per_s']:.1f} total tok/s",
        f"goodput: {result['goodput_requests_per_s']:.2f} req/s ({result['num_within_slo']} requests within "
        f"TTFT <= {result['slo']['ttft_ms']:.0f} ms and TPOT <= {result['slo']['tpot_ms']:.0f} ms)",
        "",
        f"{'ms':<6}{'mean':>10}{'p50':>10}{'p90':>10}{'p99':>10}",
    ]
    for name in ("ttft", "tpot", "itl", "e2e"):
        stats = result[f"{name}_ms"]
        cells = "".join(f"{'-' if stats[k] is None else f'{stats[k]:.1f}':>10}" for k in ("mean", "p50", "p90", "p99"))
        lines.append(f"{name.upper():<6}{cells}")
    lines += [
        "",
        f"{'tokens':<12}{'client':>10}{'server':>10}",
        f"{'prompt':<12}{result['num_input_tokens']:>10}{_or_dash(result['server_prompt_tokens']):>10}",
        f"{'generated':<12}{result['num_output_tokens']:>10}{_or_dash(result['server_generation_tokens']):>10}",
    ]
    by_variant = result["output_tokens_per_s_by_variant"]
    num_runs = sum(len(figures["runs"]) for figures in by_variant.values())
    if num_runs > 1:
        lines.append(f"(client: the run shown above; server: all {num_runs} runs)")
    if len(by_variant) > 1 or "json_schema" in by_variant:
        lines.append("")
        for variant, figures in by_variant.items():
            runs = ", ".join(f"{r:.1f}" for r in figures["runs"])
            lines.append(f"output tok/s, {variant:<12} median {figures['median']:.1f}  (runs: {runs})")
        if len(by_variant) > 1:
            ratio = by_variant["json_schema"]["median"] / by_variant["none"]["median"]
            lines.append(f"json_schema / none: {ratio:.3f}")
    if result["errors"]:
        lines.append("errors: " + "; ".join(result["errors"]))
    return "\n".join(lines)


def _or_dash(value) -> str:
    return "-" if value is None else str(value)
