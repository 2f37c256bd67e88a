"""Generated tokens/s of SmolLM2 at 1, 8, 32 and 128 concurrent sequences, in one engine.

In: the dtype as the first argument (float32 | bfloat16). Out: one line per batch size:
32 random prompt tokens per request, 128 new tokens each (greedy, ignore_eos), counting
generated tokens only; a 2-request warm-up runs first and start-up compilation is excluded.
Usage: python benchmarks/offline_scaling.py float32
"""

from __future__ import annotations

import sys
import time

import numpy as np

import surge


def main(dtype: str) -> None:
    engine = surge.Engine.from_pretrained("smollm2-135m-instruct", dtype=dtype, max_num_seqs=128, max_model_len=512,
                                          max_num_batched_tokens=512, token_buckets=[1, 8, 32, 128, 512],
                                          num_pages=2400, progress=False)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(100, 40000, 32).tolist() for _ in range(128)]
    params = surge.SamplingParams(max_tokens=128, temperature=0, ignore_eos=True)
    engine.generate(prompt_token_ids=prompts[:2], sampling_params=surge.SamplingParams(max_tokens=4, temperature=0),
                    use_tqdm=False)
    for num_seqs in (1, 8, 32, 128):
        engine.reset_prefix_cache()
        started = time.perf_counter()
        outs = engine.generate(prompt_token_ids=prompts[:num_seqs], sampling_params=params, use_tqdm=False)
        elapsed = time.perf_counter() - started
        generated = sum(len(o.outputs[0].token_ids) for o in outs)
        print(f"dtype={dtype} seqs={num_seqs}: {generated / elapsed:.1f} generated tok/s ({elapsed:.2f} s, "
              f"compiles after warm-up: {engine.stats()['num_compiles_since_warmup']})", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "float32")
