"""Offline throughput of surge against transformers `generate`, same prompts, same weights.

In: command-line options (below). Out: one table on stdout — generated tokens/s of
surge (Engine.generate over every prompt at once, continuous batching) and of
transformers (one batched greedy `generate` of every prompt, PyTorch, float32, the
same GGUF dequantized by transformers), and their ratio. Every request gets
`--input-len` random token ids (seeded) and generates exactly `--output-len` tokens
(greedy, EOS ignored). Warm-up runs and compilation are excluded from both timings.

Run: python benchmarks/offline_throughput.py [--backend cpu] [--dtype float32] ...
"""

from __future__ import annotations

import argparse

from surge.bench.offline import format_offline, run_offline
from surge.config import make_config


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="catalogue name, Hugging Face directory or .gguf file (default: %(default)s)")
    parser.add_argument("--dtype", default="float32", choices=["auto", "float32", "bfloat16"],
                        help="surge's parameter dtype; transformers always runs float32 (default: %(default)s)")
    parser.add_argument("--backend", default="auto", choices=["auto", "reference", "cpu", "triton", "pallas"],
                        help="surge's attention backend (default: %(default)s)")
    parser.add_argument("--num-prompts", type=int, default=32, help="requests (default: %(default)s)")
    parser.add_argument("--input-len", type=int, default=32, help="prompt tokens (default: %(default)s)")
    parser.add_argument("--output-len", type=int, default=128, help="generated tokens (default: %(default)s)")
    parser.add_argument("--max-num-seqs", type=int, default=32,
                        help="surge's decode batch size (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random prompts (default: %(default)s)")
    parser.add_argument("--no-transformers", action="store_true", help="time surge only")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    cfg = make_config(
        args.model, dtype=args.dtype, backend=args.backend, max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=max(512, args.max_num_seqs),
        max_model_len=max(2048, args.input_len + args.output_len + 1),
        **{"bench.num_prompts": args.num_prompts, "bench.input_len": args.input_len,
           "bench.output_len": args.output_len, "bench.seed": args.seed,
           "bench.compare": "" if args.no_transformers else "transformers"})
    result = run_offline(cfg)
    print(format_offline(result))
    print()
    print(f"| {'engine':<12} | {'generated tok/s':>15} |")
    print(f"|{'-' * 14}|{'-' * 17}|")
    print(f"| {'surge':<12} | {result['output_tokens_per_s']:>15.1f} |")
    if "speedup_vs_transformers" in result:
        print(f"| {'transformers':<12} | {result['transformers_output_tokens_per_s']:>15.1f} |")
        print(f"\nsurge / transformers: {result['speedup_vs_transformers']:.2f}x "
              f"(surge backend {result['backend']}, dtype {result['dtype']})")


if __name__ == "__main__":
    main()
