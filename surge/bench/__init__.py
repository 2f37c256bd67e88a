"""surge-bench modes: offline throughput, serving load, attention kernels, prefix caching."""

from __future__ import annotations

from surge.config import SurgeConfig


def run_benchmark(cfg: SurgeConfig) -> tuple[dict, str]:
    """Run the mode named by cfg.bench.mode; returns (result dict, human-readable summary)."""
    mode = cfg.bench.mode
    if mode == "offline":
        from surge.bench.offline import format_offline, run_offline

        result = run_offline(cfg)
        return result, format_offline(result)
    if mode == "serve":
        from surge.bench.serve import format_serve, run_serve

        result = run_serve(cfg)
        return result, format_serve(result)
    if mode == "attention":
        from surge.bench.attention import format_attention, run_attention

        result = run_attention(cfg)
        return result, format_attention(result)
    if mode == "prefix":
        from surge.bench.prefix import format_prefix, run_prefix

        result = run_prefix(cfg)
        return result, format_prefix(result)
    raise ValueError(f"unknown bench.mode {mode!r}")
