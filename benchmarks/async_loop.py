"""Decode tokens/s with engine.async_scheduling on vs off, interleaved, on one machine.

In: the model (default: the embedded SmolLM2-135M), the stream counts, rounds,
tokens per request and optional short-name engine overrides (backend=cpu
dtype=bfloat16 ...). Out: per (mode, streams) the median decode tokens/s over
the rounds and every round's figure. Both engines are built first; each round
runs every (streams, mode) pair in turn, so a load change on the machine hits
both modes alike.

Decode tokens/s = tokens generated after each request's first one, divided by
the span from the earliest first token to the last finish (prompt processing
excluded).

Run: python benchmarks/async_loop.py [--rounds 5] [--streams 1 8] [--tokens 64] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics

import surge
from surge import SamplingParams


def decode_tokens_per_s(outputs) -> float:
    first = min(o.metrics.first_token_time for o in outputs)
    last = max(o.metrics.finished_time for o in outputs)
    tokens = sum(len(o.outputs[0].token_ids) - 1 for o in outputs)
    return tokens / (last - first)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("overrides", nargs="*", help="engine overrides by short name, key=value")
    args = parser.parse_args()
    overrides = dict(max_num_seqs=max(args.streams), max_model_len=512, max_num_batched_tokens=128)
    for word in args.overrides:
        key, _, value = word.partition("=")
        overrides[key] = int(value) if value.isdigit() else value
    engines = {mode: surge.Engine.from_pretrained(args.model, async_scheduling=mode == "async", progress=False,
                                                  **overrides) for mode in ("serial", "async")}
    prompts = [f"Write a long story about the number {i}." for i in range(max(args.streams))]
    params = SamplingParams(max_tokens=args.tokens, temperature=0.0, ignore_eos=True)
    for engine in engines.values():  # warm-up
        engine.generate(prompts, SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True), use_tqdm=False)
    figures = {(mode, n): [] for mode in engines for n in args.streams}
    for _ in range(args.rounds):
        for n in args.streams:
            for mode, engine in engines.items():
                figures[mode, n].append(decode_tokens_per_s(engine.generate(prompts[:n], params, use_tqdm=False)))
    results = []
    for n in args.streams:
        row = {"streams": n}
        for mode in engines:
            row[mode] = statistics.median(figures[mode, n])
            row[f"{mode}_rounds"] = [round(x, 1) for x in figures[mode, n]]
        row["async_over_serial"] = row["async"] / row["serial"]
        results.append(row)
        print(f"{n:>3} streams: serial {row['serial']:7.1f} tok/s  async {row['async']:7.1f} tok/s  "
              f"(x{row['async_over_serial']:.3f})  rounds serial {row['serial_rounds']} async {row['async_rounds']}",
              flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"overrides": overrides, "tokens": args.tokens, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
