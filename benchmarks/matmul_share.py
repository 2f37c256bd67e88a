"""How much of the machine's matmul rate surge turns into model FLOPs at 128 sequences.

In: the dtype (default bfloat16) and rounds. Out: per round, (a) generated tok/s of
SmolLM2 at 128 concurrent sequences (32 prompt tokens, 128 generated, greedy,
ignore_eos, whole run, warm-up excluded) and its model FLOP rate, 2 x parameters x
tok/s; (b) the GFLOP/s of exactly the matmuls a 128-row decode step runs, on the
engine's own packed weights (30 layers of qkv, o_proj, gate_up, down, then the
lm_head), timed right after in the same process; and (a) / (b). Rounds alternate the
two so a shift in machine load hits both.

Run: python benchmarks/matmul_share.py [bfloat16|float32] [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import surge
from surge.kernels import cpu_matmul
from surge.models.decoder import num_params

ROWS = 128


def matmul_chain(engine):
    model = nnx.merge(engine.runner.graphdef, engine.runner.state)  # the weights as the cpu backend packed them
    model_weights = [(layer.qkv_proj[...], layer.o_proj[...], layer.gate_up_proj[...], layer.down_proj[...])
                     for layer in model.layers]
    lm_head = model.lm_head[...]
    arch = engine.arch
    shapes = [(arch.hidden_size, arch.qkv_size), (arch.num_heads * arch.head_dim, arch.hidden_size),
              (arch.hidden_size, 2 * arch.intermediate_size), (arch.intermediate_size, arch.hidden_size)]
    flops = 2.0 * ROWS * (len(model_weights) * sum(k * n for k, n in shapes) + arch.hidden_size * arch.vocab_size)

    @jax.jit
    def run(xs, layers, head):
        out = []
        for (qkv, o, gate_up, down) in layers:
            out.append(cpu_matmul.matmul(xs[0], qkv, n=shapes[0][1]))
            out.append(cpu_matmul.matmul(xs[1], o, n=shapes[1][1]))
            out.append(cpu_matmul.matmul(xs[0], gate_up, n=shapes[2][1]))
            out.append(cpu_matmul.matmul(xs[2], down, n=shapes[3][1]))
        out.append(cpu_matmul.matmul(xs[0], head, n=arch.vocab_size))
        return out

    rng = np.random.default_rng(0)
    xs = [jnp.asarray(rng.standard_normal((ROWS, k)), jnp.float32) for k in
          (arch.hidden_size, arch.num_heads * arch.head_dim, arch.intermediate_size)]
    return (lambda: jax.block_until_ready(run(xs, model_weights, lm_head))), flops


def main(dtype: str, rounds: int) -> None:
    engine = surge.Engine.from_pretrained("smollm2-135m-instruct", dtype=dtype, max_num_seqs=ROWS, max_model_len=512,
                                          max_num_batched_tokens=512, num_pages=2400, progress=False)
    timed, flops = matmul_chain(engine)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 40000, 32).tolist() for _ in range(ROWS)]
    params = surge.SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    engine.generate(prompt_token_ids=prompts[:2], sampling_params=surge.SamplingParams(max_tokens=4), use_tqdm=False)
    timed()
    model_flops_per_token = 2.0 * num_params(engine.arch)
    for r in range(rounds):
        engine.reset_prefix_cache()
        started = time.perf_counter()
        engine.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
        tok_s = ROWS * 128 / (time.perf_counter() - started)
        times = []
        for _ in range(5):
            started = time.perf_counter()
            timed()
            times.append(time.perf_counter() - started)
        rate = flops / statistics.median(times) / 1e9
        model = model_flops_per_token * tok_s / 1e9
        print(f"round {r + 1} {dtype}: {tok_s:.1f} tok/s at {ROWS} seqs = {model:.1f} GFLOP/s of model FLOPs; "
              f"the step's matmuls alone at {ROWS} rows: {rate:.1f} GFLOP/s; share {model / rate:.0%}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "bfloat16", int(sys.argv[2]) if len(sys.argv) > 2 else 3)
