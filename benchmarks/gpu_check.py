"""GPU check of the triton attention backend: parity first, then bandwidth.

Usage (from the repository root, on a CUDA machine with jax, jax_triton and triton):
    python benchmarks/gpu_check.py parity   # triton backend vs the reference backend on ragged NaN-padded batches
    python benchmarks/gpu_check.py bench    # decode-heavy and prefill-heavy timings, a table last

In: nothing but the command. Out: ``PARITY <case> ok|FAIL ...`` lines, then
``BENCH`` rows as each case finishes and a final table with per-layer time,
achieved GB/s (the bytes a layer must move at least: every visible K/V page once,
q, the output and the new K/V) and the fraction of the H100's 3.35 TB/s.
Exit status 0 when every parity case passed (parity) or every case ran (bench).
Every case is guarded: a failure prints its traceback and the next case runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from surge.kernels.base import AttentionSpec  # noqa: E402
from surge.kernels.metadata import AttentionMetadata  # noqa: E402

H100_HBM_BYTES_PER_S = 3.35e12


def log(*parts) -> None:
    print(*parts, flush=True)


# ----------------------------------------------------------------------------- batches

@dataclass
class Ragged:
    """Host metadata of one ragged batch: sequence s has q_lens[s] new tokens ending at kv_lens[s]."""
    md: AttentionMetadata
    q_lens: np.ndarray
    kv_lens: np.ndarray
    num_pages: int


def ragged_batch(rng, q_lens: Sequence[int], kv_lens: Sequence[int], page_size: int, *, spare_pages: int = 0,
                 num_padding_tokens: int = 0) -> Ragged:
    """Pages handed out in shuffled order; one padding sequence; padding tokens write the null slot 0."""
    q_lens, kv_lens = np.asarray(q_lens), np.asarray(kv_lens)
    pages_needed = -(-kv_lens // page_size)
    max_seqs = len(q_lens) + 1
    pages_per_seq = int(pages_needed.max()) + 1
    num_pages = 1 + int(pages_needed.sum()) + spare_pages
    free = rng.permutation(np.arange(1, num_pages)).tolist()
    page_table = np.zeros((max_seqs, pages_per_seq), np.int32)
    positions, slots, seq_ids = [], [], []
    for s, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens)):
        pages = [free.pop() for _ in range(pages_needed[s])]
        page_table[s, :len(pages)] = pages
        pos = np.arange(kv_len - q_len, kv_len)
        positions.append(pos)
        slots.append(np.asarray(pages)[pos // page_size] * page_size + pos % page_size)
        seq_ids.append(np.full(q_len, s))
    pad = np.zeros(num_padding_tokens, np.int64)
    md = AttentionMetadata(
        positions=np.concatenate(positions + [pad]).astype(np.int32),
        slot_mapping=np.concatenate(slots + [pad]).astype(np.int32),
        token_seq_ids=np.concatenate(seq_ids + [pad + max_seqs]).astype(np.int32),
        page_table=page_table,
        cu_q_lens=np.concatenate([[0], np.cumsum(q_lens), [q_lens.sum()]]).astype(np.int32),
        kv_lens=np.concatenate([kv_lens, [0]]).astype(np.int32),
        num_seqs=np.int32(len(q_lens)))
    return Ragged(md, q_lens, kv_lens, num_pages)


# ----------------------------------------------------------------------------- parity

PARITY_CASES = [
    # name, kv_heads, group, head_dim, page_size, window, soft cap, dtype
    ("gqa1-hd64-ps16-f32", 2, 1, 64, 16, None, None, "float32"),
    ("gqa4-hd128-ps16-bf16", 2, 4, 128, 16, None, None, "bfloat16"),
    ("gqa8-hd128-ps32-win48-bf16", 1, 8, 128, 32, 48, None, "bfloat16"),
    ("gqa3-hd64-ps32-cap5-f32", 2, 3, 64, 32, None, 5.0, "float32"),
    ("gqa8-hd64-ps16-win20-cap2-bf16", 4, 8, 64, 16, 20, 2.0, "bfloat16"),
]
# decodes, a prefill chunk over cached tokens, a fresh prefill, a long chunk spanning many blocks
PARITY_SEQS = [(1, 38), (1, 71), (19, 39), (23, 23), (130, 200), (1, 5)]


def numpy_attention(q, k_pages, v_pages, md, scale, window, cap):
    """Float64 oracle over the reference layout [num_pages, page_size, KV, hd]."""
    page_size, num_kv_heads, head_dim = k_pages.shape[1:]
    num_real = int(md.cu_q_lens[int(md.num_seqs)])
    out = np.zeros((num_real,) + q.shape[1:])
    for t in range(num_real):
        s, pos = md.token_seq_ids[t], md.positions[t]
        seen = np.arange(md.kv_lens[s])
        seen = seen[(seen <= pos) & ((seen > pos - window) if window else True)]
        pages, offsets = md.page_table[s, seen // page_size], seen % page_size
        keys, values = k_pages[pages, offsets].astype(np.float64), v_pages[pages, offsets].astype(np.float64)
        q_t = q[t].astype(np.float64).reshape(num_kv_heads, -1, head_dim)
        scores = np.einsum("kgd,nkd->kgn", q_t, keys) * scale
        if cap:
            scores = cap * np.tanh(scores / cap)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[t] = np.einsum("kgn,nkd->kgd", weights, values).reshape(q.shape[1:])
    return out


def oracle():
    """surge's reference backend when present (the project's oracle), else the NumPy loop above."""
    try:
        from surge.kernels.reference import ReferenceBackend
    except ImportError as exc:
        log(f"reference backend unavailable ({exc}); comparing against NumPy")
        return "numpy", None
    return "reference", ReferenceBackend()


def parity_case(seed, backend, oracle_name, reference, name, num_kv_heads, group, head_dim, page_size, window,
                cap, dtype) -> bool:
    rng = np.random.default_rng(seed)
    q_lens, kv_lens = zip(*PARITY_SEQS)
    batch = ragged_batch(rng, q_lens, kv_lens, page_size, spare_pages=3, num_padding_tokens=5)
    md, num_real = batch.md, int(sum(q_lens))
    num_tokens = md.positions.shape[0]
    jdtype = jnp.dtype(dtype)

    def rounded(*shape):
        return np.array(jnp.asarray(rng.standard_normal(shape), jdtype).astype(jnp.float32))

    # Logical cache [pages, page_size, KV, hd]: NaN everywhere but the cached tokens of each sequence.
    ref_k = np.full((batch.num_pages, page_size, num_kv_heads, head_dim), np.nan, np.float32)
    ref_v = ref_k.copy()
    for s, (q_len, kv_len) in enumerate(PARITY_SEQS):
        for pos in range(kv_len - q_len):
            page = md.page_table[s, pos // page_size]
            ref_k[page, pos % page_size] = rounded(num_kv_heads, head_dim)
            ref_v[page, pos % page_size] = rounded(num_kv_heads, head_dim)
    q = rounded(num_tokens, num_kv_heads * group, head_dim)
    k = rounded(num_tokens, num_kv_heads, head_dim)
    v = rounded(num_tokens, num_kv_heads, head_dim)
    q[num_real:] = k[num_real:] = v[num_real:] = np.nan
    scale = 2.0 / np.sqrt(head_dim)

    def to_triton_layout(pages):
        return jnp.asarray(pages.transpose(0, 2, 1, 3), jdtype)

    step = jax.jit(lambda q, k, v, cache, md: backend.attention(
        q, k, v, cache, md, AttentionSpec(scale, sliding_window=window, logit_soft_cap=cap)))
    out, (new_k, new_v) = step(jnp.asarray(q, jdtype), jnp.asarray(k, jdtype), jnp.asarray(v, jdtype),
                               (to_triton_layout(ref_k), to_triton_layout(ref_v)), md)
    out = np.asarray(out.astype(jnp.float32))
    new_k = np.array(new_k.astype(jnp.float32)).transpose(0, 2, 1, 3)
    new_v = np.array(new_v.astype(jnp.float32)).transpose(0, 2, 1, 3)

    if reference is not None:
        ref_out, (want_k, want_v) = jax.jit(
            lambda q, k, v, cache, md: reference.attention(
                q, k, v, cache, md, AttentionSpec(scale, sliding_window=window, logit_soft_cap=cap)))(
            jnp.asarray(q, jdtype), jnp.asarray(k, jdtype), jnp.asarray(v, jdtype),
            (jnp.asarray(ref_k, jdtype), jnp.asarray(ref_v, jdtype)), md)
        expected = np.asarray(ref_out.astype(jnp.float32))[:num_real]
        want_k, want_v = np.array(want_k.astype(jnp.float32)), np.array(want_v.astype(jnp.float32))
    else:
        want_k, want_v = ref_k.copy(), ref_v.copy()
        for t in range(num_real):
            page, offset = divmod(int(md.slot_mapping[t]), page_size)
            want_k[page, offset], want_v[page, offset] = k[t], v[t]
        expected = numpy_attention(q, want_k, want_v, md, scale, window, cap)

    tolerance = 2e-4 if dtype == "float32" else 3e-2
    error = float(np.max(np.abs(out[:num_real] - expected)))
    # Slot 0 of the null page is the padding tokens' shared sink; any of their writes may land last.
    sink = (slice(0, 1), slice(0, 1))
    for got, want in ((new_k, want_k), (new_v, want_v)):
        got[sink] = want[sink] = 0
    cache_ok = np.array_equal(new_k, want_k, equal_nan=True) and np.array_equal(new_v, want_v, equal_nan=True)
    finite = bool(np.isfinite(out).all())
    ok = error <= tolerance and cache_ok and finite
    log(f"PARITY {name:34s} {'ok' if ok else 'FAIL'}  max|{backend.name}-{oracle_name}|={error:.2e} (tol {tolerance:g})"
        f"  cache_written_exactly={cache_ok}  output_finite={finite}")
    return ok


def parity_backend(name: str):
    """The backend under test; `pallas-interpret` shares the triton layout and dry-runs this harness on a CPU."""
    if name == "pallas-interpret":
        from types import SimpleNamespace

        from surge.kernels.pallas import PallasBackend
        return PallasBackend(SimpleNamespace(interpret=True))
    from surge.kernels.triton import TritonBackend

    reason = TritonBackend.unavailable_reason()
    if reason is not None:
        log(f"PARITY skipped: triton backend unavailable: {reason}")
        return None
    return TritonBackend()


def run_parity(backend_name: str) -> int:
    backend = parity_backend(backend_name)
    if backend is None:
        return 1
    # XLA's default float32 matmuls on GPU may use TF32; the oracle must not.
    jax.config.update("jax_default_matmul_precision", "highest")
    oracle_name, reference = oracle()
    failures = 0
    for seed, case in enumerate(PARITY_CASES):
        try:
            failures += not parity_case(seed, backend, oracle_name, reference, *case)
        except Exception:  # one broken case must not hide the others
            failures += 1
            log(f"PARITY {case[0]:34s} ERROR")
            traceback.print_exc()
    log(f"PARITY summary: {len(PARITY_CASES) - failures}/{len(PARITY_CASES)} cases passed")
    return int(failures > 0)


# ----------------------------------------------------------------------------- bench

@dataclass
class BenchCase:
    name: str
    q_lens: List[int]
    kv_lens: List[int]


def bench_cases() -> List[BenchCase]:
    return [
        BenchCase("decode 32 x 512", [1] * 32, [512] * 32),
        BenchCase("decode 128 x 2048", [1] * 128, [2048] * 128),
        BenchCase("prefill 4 x 2048 (fresh)", [2048] * 4, [2048] * 4),
        BenchCase("prefill 8 x 512 chunk @ 4096", [512] * 8, [4096] * 8),
        BenchCase("mixed 96 dec @ 2048 + 512 chunk", [1] * 96 + [512], [2048] * 96 + [1024]),
    ]


# Attention shape of a Llama-3-8B layer, bf16 cache, 16-token pages.
NUM_HEADS, NUM_KV_HEADS, HEAD_DIM, PAGE_SIZE = 32, 8, 128, 16
NUM_LAYERS = 8  # layers per timed call, each with its own cache, as in a model step


def min_bytes_and_flops(case: BenchCase, itemsize: int) -> Tuple[float, float]:
    q_lens, kv_lens = np.asarray(case.q_lens), np.asarray(case.kv_lens)
    tokens = q_lens.sum()
    kv_bytes = 2 * kv_lens.sum() * NUM_KV_HEADS * HEAD_DIM * itemsize  # every visible K and V row once
    qo_bytes = 2 * tokens * NUM_HEADS * HEAD_DIM * itemsize
    new_kv_bytes = 2 * tokens * NUM_KV_HEADS * HEAD_DIM * itemsize
    # causal: token i of a chunk ending at kv_len sees kv_len - q_len + i + 1 keys; 4 flops per key per dim
    visible = sum(int(q) * (kv - q) + q * (q + 1) // 2 for q, kv in zip(q_lens, kv_lens))
    flops = 4.0 * visible * NUM_HEADS * HEAD_DIM
    return float(kv_bytes + qo_bytes + new_kv_bytes), flops


def time_backend(backend, case: BenchCase, iters: int, dtype=jnp.bfloat16) -> float:
    """Seconds per layer: NUM_LAYERS layers per jitted call, caches donated, `iters` calls back to back."""
    rng = np.random.default_rng(0)
    batch = ragged_batch(rng, case.q_lens, case.kv_lens, PAGE_SIZE)
    md = jax.tree_util.tree_map(jnp.asarray, batch.md)
    num_tokens = md.positions.shape[0]
    shape = backend.kv_cache_shape(batch.num_pages, PAGE_SIZE, NUM_KV_HEADS, HEAD_DIM)
    key = jax.random.PRNGKey(0)
    caches = [(jax.random.normal(jax.random.fold_in(key, 2 * i), shape, dtype),
               jax.random.normal(jax.random.fold_in(key, 2 * i + 1), shape, dtype)) for i in range(NUM_LAYERS)]
    q = jax.random.normal(key, (num_tokens, NUM_HEADS, HEAD_DIM), dtype)
    k = jax.random.normal(key, (num_tokens, NUM_KV_HEADS, HEAD_DIM), dtype)

    def layers(q, k, caches, md):
        outs, new_caches = [], []
        for cache in caches:
            out, cache = backend.attention(q, k, k, cache, md, AttentionSpec(HEAD_DIM ** -0.5))
            outs.append(out)
            new_caches.append(cache)
        return outs, new_caches

    step = jax.jit(layers, donate_argnums=(2,))
    for _ in range(2):  # compile, then one warm call
        outs, caches = step(q, k, caches, md)
        jax.block_until_ready(outs)
    start = time.perf_counter()
    for _ in range(iters):
        outs, caches = step(q, k, caches, md)
    jax.block_until_ready((outs, caches))
    return (time.perf_counter() - start) / (iters * NUM_LAYERS)


def run_bench(with_reference: bool) -> int:
    from surge.kernels.triton import TritonBackend

    reason = TritonBackend.unavailable_reason()
    if reason is not None:
        log(f"BENCH skipped: triton backend unavailable: {reason}")
        return 1
    log(f"device: {jax.devices()[0].device_kind}; layer: H={NUM_HEADS} KV={NUM_KV_HEADS} hd={HEAD_DIM} "
        f"page={PAGE_SIZE} bf16; {NUM_LAYERS} layers per call")
    triton_backend = TritonBackend()
    rows: List[Tuple[str, str, Optional[float], float, float]] = []
    for case in bench_cases():
        nbytes, flops = min_bytes_and_flops(case, 2)
        backends = [("triton", triton_backend)]
        if with_reference and case.name.startswith("decode 32"):
            from surge.kernels.reference import ReferenceBackend
            backends.append(("reference", ReferenceBackend()))
        for backend_name, backend in backends:
            try:
                seconds = time_backend(backend, case, iters=20 if max(case.q_lens) == 1 else 5)
                log(f"BENCH {case.name:32s} {backend_name:9s} {seconds * 1e6:9.1f} us/layer  "
                    f"{nbytes / seconds / 1e9:7.1f} GB/s  {flops / seconds / 1e12:6.1f} TFLOP/s")
            except Exception:
                seconds = None
                log(f"BENCH {case.name:32s} {backend_name:9s} ERROR")
                traceback.print_exc()
            rows.append((case.name, backend_name, seconds, nbytes, flops))

    log("")
    log(f"{'case':34s} {'backend':9s} {'us/layer':>9s} {'GB/s':>8s} {'of 3.35TB/s':>11s} {'TFLOP/s':>8s}")
    for name, backend_name, seconds, nbytes, flops in rows:
        if seconds is None:
            log(f"{name:34s} {backend_name:9s} {'FAILED':>9s}")
            continue
        rate = nbytes / seconds
        log(f"{name:34s} {backend_name:9s} {seconds * 1e6:9.1f} {rate / 1e9:8.1f} "
            f"{rate / H100_HBM_BYTES_PER_S:10.1%} {flops / seconds / 1e12:8.1f}")
    return int(any(row[2] is None for row in rows))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["parity", "bench"])
    parser.add_argument("--no-reference", action="store_true", help="bench: skip timing the reference backend")
    parser.add_argument("--backend", choices=["triton", "pallas-interpret"], default="triton",
                        help="parity: backend under test (pallas-interpret dry-runs the harness on CPU)")
    args = parser.parse_args(argv)
    log(f"jax {jax.__version__} on {jax.default_backend()}: {jax.devices()}")
    if args.stage == "parity":
        return run_parity(args.backend)
    return run_bench(with_reference=not args.no_reference)


if __name__ == "__main__":
    sys.exit(main())
