"""GFLOP/s of surge's CPU matmul against XLA's jitted dot, on SmolLM2-135M's decode shapes.

In: nothing (SmolLM2-135M: hidden 576, intermediate 1536, q 576 + k 192 + v 192 = 960,
vocab 49152). Out: a markdown table on stdout, one row per (weight dtype, shape, M):
microseconds per matmul and GFLOP/s of
- ``xla``: ``jnp.dot(x, w, preferred_element_type=float32)`` — for bfloat16 weights that
  is what surge would run without the kernel;
- ``surge``: ``surge.kernels.cpu_matmul.matmul(x, w)``;
and surge / xla. Each timed call is one jitted program that chains ``--chain`` matmuls,
each on its own copy of the weight (x_{i+1} = x_i + 1e-6 y_i[:, :1], so they run in
order), as the layers of a decode step do: the time per matmul excludes Python's
dispatch of a jitted call (tens of microseconds, more than a one-row matmul takes).
Both contenders run in the same process, call by call in turn, so the load of a shared
machine hits both alike; the median call is reported. Rows with M = 1 also give the
weight bytes streamed per second (GB/s). Outputs are checked to agree before timing.

The lm_head appears twice: ``lm_head`` with w stored [576, 49152] (a transposed copy of
the tied embedding), and ``lm_head^T`` reading the [49152, 576] embedding table in place
(``transpose_w=True``; XLA's contender is the einsum surge's decoder uses).
With 8 copies the smaller weights mostly stay in the 32 MiB L3; ``--cold`` chains enough
copies (> 64 MiB in all) that each comes from DRAM, as in a real decode step (30 layers
do not fit in L3). The lm_head (113 MB in float32) chains 2 copies either way.
``--decode-step`` instead times the matmuls of a whole SmolLM2 decode step in one jitted
call (30 layers of qkv, o_proj, gate_up, down with a cheap stand-in for the rest, then
the tied lm_head), every weight distinct, as surge's model runs them: surge's side with
its weights packed into panels (cpu_matmul.pack) as the cpu backend holds them. Its
GFLOP/s at M = 128 is the machine's matmul rate quoted for issue 9.

Run: python benchmarks/matmul_cpu.py [--ms 1,8,32,128] [--dtypes float32,bfloat16]
     [--shapes qkv,o_proj,gate_up,down,lm_head,lm_head^T] [--chain 8] [--cold]
     [--repeats N | --seconds S] [--threads N] [--decode-step]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from surge.kernels import cpu_matmul, native

# name -> (K, N, transpose_w)
SHAPES = {
    "qkv": (576, 960, False),
    "o_proj": (576, 576, False),
    "gate_up": (576, 3072, False),
    "down": (1536, 576, False),
    "lm_head": (576, 49152, False),
    "lm_head^T": (576, 49152, True),
}
COLD_BYTES = 64 << 20


def xla_dot(x, w, transpose_w):
    if transpose_w:
        return jnp.einsum("sd,vd->sv", x, w, preferred_element_type=jnp.float32)
    return jnp.dot(x, w, preferred_element_type=jnp.float32)


def surge_dot(x, w, transpose_w):
    if w.ndim == 1:  # packed (cpu_matmul.pack), as the engine holds its weights
        return cpu_matmul.matmul(x, w)
    return cpu_matmul.matmul(x, w, transpose_w=transpose_w)


def chained(dot, transpose_w):
    """A jitted fn(x, weights) running dot once per weight, each call waiting on the last."""
    def run(x, weights):
        ys = []
        for w in weights:
            y = dot(x, w, transpose_w)
            ys.append(y)  # every y is an output, so no compiler can drop columns of a dot
            x = x + 1e-6 * y[:, :1]
        return x, ys
    return jax.jit(run)


def time_in_turn(fns, args, repeats: int) -> list:
    """Median seconds per call of each fn; the fns take turns call by call."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for j, fn in enumerate(fns):
            start = time.perf_counter()
            jax.block_until_ready(fn(*args))
            times[j].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def decode_step(dot):
    """A jitted fn(x, layers, embed) running SmolLM2's 30 layers of projections, then the
    tied lm_head. The weights are arguments, as surge passes its parameters: closed over,
    XLA would fold a bfloat16 weight's conversion to float32 into a constant."""
    def run(x, layers, embed):
        for qkv, o, gate_up, down in layers:
            h = dot(x, qkv, False)[:, :576]
            x = x + dot(jnp.tanh(h), o, False)
            g = dot(x, gate_up, False)
            x = x + dot(jax.nn.silu(g[:, :1536]) * g[:, 1536:], down, False)
        return dot(x, embed, True)
    return jax.jit(run)


def run_decode_step(args, ms, rng) -> None:
    print("| w dtype | M | xla ms/step | surge ms/step | xla GFLOP/s | surge GFLOP/s | surge/xla |")
    print("|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        def weight(*shape):
            return jnp.asarray(rng.standard_normal(shape, np.float32) * 0.03, dtype)
        layers = [tuple(weight(*SHAPES[name][:2]) for name in ("qkv", "o_proj", "gate_up", "down"))
                  for _ in range(30)]
        embed = weight(49152, 576)
        packed_layers = [tuple(cpu_matmul.pack(w) for w in layer) for layer in layers]
        packed_embed = cpu_matmul.pack(embed, transpose_w=True)
        theirs, ours = decode_step(xla_dot), decode_step(surge_dot)
        for m in ms:
            x = jnp.asarray(rng.standard_normal((m, 576)), jnp.float32)
            expected = np.asarray(theirs(x, layers, embed))
            got = np.asarray(ours(x, packed_layers, packed_embed))
            np.testing.assert_allclose(got, expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())
            flops = 2.0 * m * (30 * sum(k * n for k, n, _ in list(SHAPES.values())[:4]) + 576 * 49152)
            t_xla, t_ours = time_in_turn([lambda: theirs(x, layers, embed),
                                          lambda: ours(x, packed_layers, packed_embed)], (), args.repeats or 7)
            print(f"| {dtype_name} | {m} | {t_xla * 1e3:.1f} | {t_ours * 1e3:.1f} | {flops / t_xla / 1e9:.1f} | "
                  f"{flops / t_ours / 1e9:.1f} | {t_xla / t_ours:.2f}x |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ms", default="1,8,32,128")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--shapes", default=",".join(SHAPES))
    parser.add_argument("--chain", type=int, default=8, help="matmuls (weight copies) per timed call")
    parser.add_argument("--cold", action="store_true", help="chain > 64 MiB of weight copies: weights from DRAM")
    parser.add_argument("--repeats", type=int, default=0, help="timed calls per contender (0: --seconds' worth)")
    parser.add_argument("--seconds", type=float, default=1.0, help="time per row when --repeats is 0")
    parser.add_argument("--threads", type=int, default=0, help="kernel threads (0: every core)")
    parser.add_argument("--decode-step", action="store_true", help="time whole decode steps instead of shapes")
    args = parser.parse_args()
    if not cpu_matmul.available():
        raise SystemExit(f"surge cpu matmul unavailable: {cpu_matmul.unavailable_reason()}")
    if args.threads:
        native.set_num_threads(args.threads)

    ms = [int(m) for m in args.ms.split(",")]
    rng = np.random.default_rng(0)
    if args.decode_step:
        run_decode_step(args, ms, rng)
        return
    print(f"jax {jax.__version__}; {args.chain} chained matmuls per call{', weights from DRAM' if args.cold else ''}")
    print("| w dtype | shape | M | xla us/matmul | surge us/matmul | xla GFLOP/s | surge GFLOP/s | surge/xla | surge GB/s (M=1) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype_name in args.dtypes.split(","):
        dtype = jnp.dtype(dtype_name)
        for name in args.shapes.split(","):
            k, n, transpose_w = SHAPES[name]
            w_shape = (n, k) if transpose_w else (k, n)
            weight_bytes = k * n * dtype.itemsize
            copies = args.chain
            if name.startswith("lm_head"):
                copies = 2
            elif args.cold:
                copies = max(copies, -(-COLD_BYTES // weight_bytes))
            weights = tuple(jnp.asarray(rng.standard_normal(w_shape, np.float32) * 0.05, dtype)
                            for _ in range(copies))
            theirs, ours = chained(xla_dot, transpose_w), chained(surge_dot, transpose_w)
            for m in ms:
                x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
                expected = np.asarray(xla_dot(x, weights[0], transpose_w))
                got = np.asarray(jax.jit(surge_dot, static_argnums=2)(x, weights[0], transpose_w))
                np.testing.assert_allclose(got, expected, rtol=2e-3, atol=2e-3 * np.abs(expected).max())
                flops = 2.0 * m * k * n
                jax.block_until_ready((theirs(x, weights), ours(x, weights)))  # compile
                start = time.perf_counter()
                jax.block_until_ready((theirs(x, weights), ours(x, weights)))
                repeats = args.repeats or int(np.clip(args.seconds / (time.perf_counter() - start), 7, 300))
                t_xla, t_ours = (t / copies for t in time_in_turn([theirs, ours], (x, weights), repeats))
                gbs = f"{weight_bytes / t_ours / 1e9:.1f}" if m == 1 else ""
                print(f"| {dtype_name} | {name} [{k}x{n}] | {m} | {t_xla * 1e6:.0f} | {t_ours * 1e6:.0f} | "
                      f"{flops / t_xla / 1e9:.1f} | {flops / t_ours / 1e9:.1f} | {t_xla / t_ours:.2f}x | {gbs} |",
                      flush=True)


if __name__ == "__main__":
    main()
