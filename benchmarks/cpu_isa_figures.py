"""Indicative CPU figures by kernel variant: matmul microseconds and end-to-end decode tok/s.

Usage: python benchmarks/cpu_isa_figures.py [--tokens 48]
Switches surge._C's instruction-set variant in-process (surge.kernels.cpu.set_isa) on one
engine per model dtype (float32 and quantized = the file's Q4_1/Q8_0), so each variant runs
the very same compiled steps. Prints a Markdown table. Timing on a shared machine is
indicative only.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import surge
from surge import SamplingParams
from surge.kernels import cpu, cpu_matmul


def _time(fn, *args, reps=30):
    jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn(*args))
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1e6


def matmul_rows():
    from surge.models.gguf_checkpoint import GGUFCheckpoint
    from surge.models.catalogue import resolve_model

    ckpt = GGUFCheckpoint(resolve_model("smollm2-135m-instruct"))
    q = jnp.asarray(np.concatenate([ckpt.get_quantized(f"model.layers.0.mlp.{n}_proj.weight") for n in ("gate", "up")]))
    dense = jnp.asarray(np.concatenate([ckpt.get(f"model.layers.0.mlp.{n}_proj.weight") for n in ("gate", "up")]).T)
    packed = cpu_matmul.pack(dense)
    packed16 = cpu_matmul.pack(dense.astype(jnp.bfloat16))
    f = jax.jit(cpu_matmul.matmul)
    rows = []
    for isa in cpu.supported_isas():
        cpu.set_isa(isa)
        for m in (1, 32):
            x = jnp.asarray(np.random.default_rng(m).standard_normal((m, 576)), jnp.float32)
            rows.append((isa, m, _time(f, x, packed), _time(f, x, packed16), _time(f, x, q)))
    return rows


def decode_rows(tokens):
    kw = dict(max_num_seqs=8, max_model_len=256, max_num_batched_tokens=256, token_buckets=[1, 8, 256],
              num_pages=200, progress=False, backend="cpu")
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    out = {}
    for dtype in ("float32", "quantized"):
        engine = surge.Engine.from_pretrained("smollm2-135m-instruct", dtype=dtype, **kw)
        engine.generate(["warm up"], SamplingParams(max_tokens=4, temperature=0.0))
        for isa in cpu.supported_isas():
            cpu.set_isa(isa)
            for seqs in (1, 8):
                prompts = [f"Story number {i}: once upon a time" for i in range(seqs)]
                t = time.perf_counter()
                engine.generate(prompts, params)
                out[(isa, dtype, seqs)] = seqs * tokens / (time.perf_counter() - t)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    print("| isa | M | f32 panels us | bf16 panels us | Q4_1 us |  (gate_up of SmolLM2: K 576, N 3072)")
    print("|---|---|---|---|---|")
    for isa, m, a, b, c in matmul_rows():
        print(f"| {isa} | {m} | {a:.0f} | {b:.0f} | {c:.0f} |")
    decode = decode_rows(args.tokens)
    print(f"\n| isa | f32 1 seq | f32 8 seqs | quantized 1 seq | quantized 8 seqs |  (tok/s, {args.tokens} tokens each)")
    print("|---|---|---|---|---|")
    for isa in cpu.supported_isas():
        cells = [f"{decode[(isa, d, s)]:.1f}" for d in ("float32", "quantized") for s in (1, 8)]
        print(f"| {isa} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
