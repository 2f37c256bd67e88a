"""Attention-kernel benchmark: each backend's `__call__`, timed on decode- and prefill-heavy batches.

In: a SurgeConfig. `backend.name=auto` times every backend of the registry that
can run here (the others are reported as skipped, with the reason); a named
backend times only that one. The page size is `cache.page_size`, the dtype the
model's (`model.dtype`, auto = float32 on CPU, bfloat16 elsewhere; the KV cache
follows `cache.dtype`).

The shapes are SmolLM2-135M's attention (9 query heads, 3 KV heads, head dim 64):
- decode: 32 sequences, one new token each, 512 tokens of context;
- prefill: 1 and 4 sequences of 512 new tokens each (no earlier context).

Each case runs under `jax.jit` with the KV cache donated, as the engine runs it:
two warm-up calls, then the median of up to 10 timed samples (fewer when a call is
slow); a sample is one call, or, for calls under 10 ms, as many back-to-back calls
as fill 10 ms, divided by their number. Out: a result dict with, per backend and case, the median time, achieved
bytes/s for decode (K and V read, q read, output written, new K/V written) and
FLOP/s for prefill (QK^T and PV over the causal pairs), each next to this
machine's measured ceiling (`ceilings.py`) and, on a GPU, the datasheet HBM
bandwidth.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from typing import Optional

import numpy as np

from surge.bench.ceilings import matmul_flops, memory_bandwidth, nominal_hbm_bandwidth
from surge.config import SurgeConfig

NUM_HEADS, NUM_KV_HEADS, HEAD_DIM = 9, 3, 64  # SmolLM2-135M
DECODE_SEQS, DECODE_CONTEXT = 32, 512
PREFILL_SEQS, PREFILL_TOKENS = (1, 4), 512
# Timed calls per case: at most MAX_REPEATS, fewer once TIME_BUDGET_S is spent (never under MIN_REPEATS).
MAX_REPEATS, MIN_REPEATS, TIME_BUDGET_S = 10, 3, 5.0
# A sample lasts at least MIN_SAMPLE_S: short calls are repeated back to back (at most MAX_CALLS_PER_SAMPLE).
MIN_SAMPLE_S, MAX_CALLS_PER_SAMPLE = 0.01, 200


@dataclasses.dataclass(frozen=True)
class Case:
    name: str
    num_seqs: int
    # New tokens per sequence, and the sequence's length once they are written.
    q_len: int
    kv_len: int

    @property
    def num_tokens(self) -> int:
        return self.num_seqs * self.q_len

    @property
    def num_pairs(self) -> int:
        """(query, key) pairs attended: each new token sees every earlier key and itself."""
        first = self.kv_len - self.q_len + 1
        return self.num_seqs * sum(range(first, self.kv_len + 1))

    def flops(self) -> float:
        # QK^T and PV: one multiply-add (2 FLOPs) per head dim element, per pair and query head, each.
        return 4.0 * NUM_HEADS * HEAD_DIM * self.num_pairs

    def bytes_moved(self, q_itemsize: int, kv_itemsize: int) -> float:
        kv_read = 2 * self.num_seqs * self.kv_len * NUM_KV_HEADS * HEAD_DIM * kv_itemsize
        kv_written = 2 * self.num_tokens * NUM_KV_HEADS * HEAD_DIM * kv_itemsize
        q_and_out = 2 * self.num_tokens * NUM_HEADS * HEAD_DIM * q_itemsize
        return kv_read + kv_written + q_and_out


CASES = (Case(f"decode {DECODE_SEQS}x{DECODE_CONTEXT}", DECODE_SEQS, 1, DECODE_CONTEXT),
         *(Case(f"prefill {n}x{PREFILL_TOKENS}", n, PREFILL_TOKENS, PREFILL_TOKENS) for n in PREFILL_SEQS))


def run_attention(cfg: SurgeConfig) -> dict:
    import jax
    from tqdm.auto import tqdm

    from surge.kernels import registry

    dtype, kv_dtype = _dtypes(cfg)
    names = registry.names() if cfg.backend.name == "auto" else [cfg.backend.name]
    device = jax.devices()[0]
    bandwidth = memory_bandwidth()
    flops_ceiling = {"float32": matmul_flops("float32")}
    if dtype != "float32":
        flops_ceiling[dtype] = matmul_flops(dtype)
    nominal = nominal_hbm_bandwidth(device.device_kind) if device.platform == "gpu" else None

    backends: dict = {}
    with tqdm(total=len(names) * len(CASES), desc="attention cases", unit="case") as bar:
        for name in names:
            backend = None
            try:  # under auto every backend gets the given options; one without such a key is skipped, saying so
                reason = registry.unavailable_reason(name, registry.make_options(name, cfg.backend.options))
                if reason is None:
                    backend = registry.get_backend(name, cfg.backend.options)
            except Exception as exc:
                reason = f"{type(exc).__name__}: {exc}"
            if backend is None:
                backends[name] = {"status": "skipped", "reason": reason}
                bar.update(len(CASES))
                continue
            cases = {}
            for case in CASES:
                try:
                    seconds = time_case(backend, case, cfg.cache.page_size, dtype, kv_dtype)
                    cases[case.name] = _figures(case, seconds, dtype, kv_dtype, bandwidth["ceiling"],
                                                flops_ceiling[dtype], nominal)
                except Exception as exc:  # a kernel under construction must not sink the others' figures
                    cases[case.name] = {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:500]}
                bar.update(1)
            backends[name] = {"status": "ran", "cases": cases}

    decode = {n: b["cases"][CASES[0].name].get("gb_per_s") for n, b in backends.items() if b["status"] == "ran"}
    decode = {n: v for n, v in decode.items() if v is not None}
    best = max(decode, key=decode.get) if decode else None
    return {
        "mode": "attention",
        "platform": device.platform,
        "device_kind": device.device_kind,
        "dtype": dtype,
        "kv_dtype": kv_dtype,
        "page_size": cfg.cache.page_size,
        "shape": {"num_heads": NUM_HEADS, "num_kv_heads": NUM_KV_HEADS, "head_dim": HEAD_DIM},
        "memory_bandwidth_gb_per_s": {k: v / 1e9 for k, v in bandwidth.items()},
        "matmul_gflop_per_s": {k: v / 1e9 for k, v in flops_ceiling.items()},
        "nominal_hbm_gb_per_s": nominal / 1e9 if nominal else None,
        "backends": backends,
        # The sweep summary's main metric: the best decode bandwidth among the backends that ran.
        "decode_gb_per_s": decode.get(best) if best else None,
        "best_decode_backend": best,
    }


def _dtypes(cfg: SurgeConfig) -> tuple[str, str]:
    from surge.models.loader import platform_dtype

    if cfg.model.dtype == "quantized":
        raise ValueError("bench=attention times attention on float q/k/v: give model.dtype auto, float32 or bfloat16")
    # No weights here: auto is the platform's float dtype.
    dtype = platform_dtype() if cfg.model.dtype == "auto" else cfg.model.dtype
    return dtype, dtype if cfg.cache.dtype == "auto" else cfg.cache.dtype


def _figures(case: Case, seconds: float, dtype: str, kv_dtype: str, bandwidth_ceiling: float,
             flops_ceiling: float, nominal_hbm: Optional[float]) -> dict:
    moved = case.bytes_moved(_itemsize(dtype), _itemsize(kv_dtype))
    flops = case.flops()
    figures = {
        "status": "ok",
        "median_ms": seconds * 1000,
        "tokens_per_s": case.num_tokens / seconds,
        "gb_per_s": moved / seconds / 1e9,
        "gflop_per_s": flops / seconds / 1e9,
        "fraction_of_measured_bandwidth": moved / seconds / bandwidth_ceiling,
        "fraction_of_matmul_flops": flops / seconds / flops_ceiling,
    }
    if nominal_hbm:
        figures["fraction_of_hbm_bandwidth"] = moved / seconds / nominal_hbm
    return figures


def _itemsize(dtype: str) -> int:
    import jax.numpy as jnp

    return jnp.dtype(dtype).itemsize


def build_case(backend, case: Case, page_size: int, dtype: str, kv_dtype: str, seed: int = 0):
    """Random q, k, v, a one-layer cache in the backend's layout and the metadata of `case`."""
    import jax.numpy as jnp

    from surge.kernels.metadata import AttentionMetadata

    rng = np.random.default_rng(seed)
    pages_per_seq = -(-case.kv_len // page_size)
    num_pages = 1 + case.num_seqs * pages_per_seq  # page 0 is the null page
    page_table = (1 + np.arange(case.num_seqs * pages_per_seq, dtype=np.int32)).reshape(case.num_seqs, pages_per_seq)
    positions = np.tile(np.arange(case.kv_len - case.q_len, case.kv_len, dtype=np.int32), case.num_seqs)
    token_seq_ids = np.repeat(np.arange(case.num_seqs, dtype=np.int32), case.q_len)
    slots = page_table[token_seq_ids, positions // page_size] * page_size + positions % page_size
    md = AttentionMetadata(
        positions=jnp.asarray(positions), slot_mapping=jnp.asarray(slots.astype(np.int32)),
        token_seq_ids=jnp.asarray(token_seq_ids), page_table=jnp.asarray(page_table),
        cu_q_lens=jnp.asarray(np.arange(case.num_seqs + 1, dtype=np.int32) * case.q_len),
        kv_lens=jnp.full((case.num_seqs,), case.kv_len, jnp.int32), num_seqs=jnp.int32(case.num_seqs))

    def normal(*shape, dt):
        return jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dt)

    shape = backend.kv_cache_shape(num_pages, page_size, NUM_KV_HEADS, HEAD_DIM)
    cache = (normal(*shape, dt=kv_dtype), normal(*shape, dt=kv_dtype))
    q = normal(case.num_tokens, NUM_HEADS, HEAD_DIM, dt=dtype)
    k = normal(case.num_tokens, NUM_KV_HEADS, HEAD_DIM, dt=dtype)
    v = normal(case.num_tokens, NUM_KV_HEADS, HEAD_DIM, dt=dtype)
    return q, k, v, cache, md


def time_case(backend, case: Case, page_size: int, dtype: str, kv_dtype: str) -> float:
    """Median seconds of one jitted, cache-donating backend call on `case`."""
    import jax

    q, k, v, cache, md = build_case(backend, case, page_size, dtype, kv_dtype)
    from surge.kernels.base import AttentionSpec

    spec = AttentionSpec(scale=HEAD_DIM ** -0.5)
    step = jax.jit(lambda q, k, v, cache, md: backend.attention(q, k, v, cache, md, spec), donate_argnums=(3,))

    def calls(count: int) -> float:
        """Seconds per call of `count` calls issued back to back (the cache threaded through), then waited for."""
        nonlocal cache
        started = time.perf_counter()
        for _ in range(count):
            out, cache = step(q, k, v, cache, md)
        jax.block_until_ready((out, cache))
        return (time.perf_counter() - started) / count

    calls(1)
    # Calls of a few microseconds (a GPU) are batched per sample so that dispatch does not dominate.
    per_sample = max(1, min(MAX_CALLS_PER_SAMPLE, int(MIN_SAMPLE_S / calls(1))))
    samples: list[float] = []
    budget_end = time.perf_counter() + TIME_BUDGET_S
    while len(samples) < MAX_REPEATS and (len(samples) < MIN_REPEATS or time.perf_counter() < budget_end):
        samples.append(calls(per_sample))
    return statistics.median(samples)


def format_attention(result: dict) -> str:
    bw = result["memory_bandwidth_gb_per_s"]
    ceiling_note = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in bw.items() if k != "ceiling")
    lines = [
        f"device: {result['platform']} ({result['device_kind']}), q/out {result['dtype']}, KV {result['kv_dtype']}, "
        f"page {result['page_size']}, H={NUM_HEADS} KV={NUM_KV_HEADS} hd={HEAD_DIM}",
        f"ceilings: memory {bw['ceiling']:.1f} GB/s ({ceiling_note}); matmul "
        + ", ".join(f"{k} {v:.1f} GFLOP/s" for k, v in result["matmul_gflop_per_s"].items()),
    ]
    if result["nominal_hbm_gb_per_s"]:
        lines.append(f"datasheet HBM bandwidth: {result['nominal_hbm_gb_per_s']:.0f} GB/s")
    hbm = bool(result["nominal_hbm_gb_per_s"])
    header = f"{'backend':<10}{'case':<16}{'median ms':>10}{'tok/s':>12}{'GB/s':>9}{'% mem':>7}"
    header += f"{'% HBM':>7}" if hbm else ""
    header += f"{'GFLOP/s':>10}{'% mm':>7}"
    lines += ["", header]
    for name, entry in result["backends"].items():
        if entry["status"] != "ran":
            lines.append(f"{name:<10}skipped: {entry['reason']}")
            continue
        for case_name, fig in entry["cases"].items():
            if fig["status"] != "ok":
                lines.append(f"{name:<10}{case_name:<16}failed: {fig['reason']}")
                continue
            row = (f"{name:<10}{case_name:<16}{fig['median_ms']:>10.2f}{fig['tokens_per_s']:>12.0f}"
                   f"{fig['gb_per_s']:>9.2f}{100 * fig['fraction_of_measured_bandwidth']:>6.1f}%")
            if hbm:
                row += f"{100 * fig['fraction_of_hbm_bandwidth']:>6.1f}%"
            row += f"{fig['gflop_per_s']:>10.2f}{100 * fig['fraction_of_matmul_flops']:>6.1f}%"
            lines.append(row)
    lines.append("decode rows are read against the memory ceiling (% mem), prefill rows against the matmul "
                 "ceiling (% mm)")
    return "\n".join(lines)
