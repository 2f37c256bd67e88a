"""Run by tests/test_tensor_parallel.py in a subprocess with 8 host devices (XLA_FLAGS must be set before jax
starts): builds one engine per tensor-parallel size for a model and prints one JSON line per size with what the
test compares: the logits of a prefill, greedy tokens, the weight bytes each device holds (from the arrays'
shardings) and the start-up placement log line.

Usage: python tests/tensor_parallel_worker.py MODEL_PATH BACKEND DTYPE MAX_TOKENS TP [TP ...] -- PROMPT_JSON
(BACKEND: a backend name, optionally with its options, e.g. ``pallas:interpret=true``; PROMPT_JSON: a list of
token-id lists, or of strings).
"""

from __future__ import annotations

import json
import logging
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import surge  # noqa: E402
from surge.kernels.metadata import AttentionMetadata  # noqa: E402

_NUM_TOKENS, _NUM_SEQS, _PAGE_SIZE = 16, 4, 4


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def prefill_logits(engine, prompt) -> np.ndarray:
    """float32 [len(prompt), vocab]: the logits of every prompt position, one prefill in pages 1.. of the cache."""
    runner = engine.runner
    n = len(prompt)
    ids = np.zeros(_NUM_TOKENS, np.int32)
    ids[:n] = prompt
    positions = np.zeros(_NUM_TOKENS, np.int32)
    positions[:n] = np.arange(n)
    pages = np.arange(1, runner.pages_per_seq + 1, dtype=np.int32)
    slots = np.zeros(_NUM_TOKENS, np.int32)
    slots[:n] = pages[positions[:n] // _PAGE_SIZE] * _PAGE_SIZE + positions[:n] % _PAGE_SIZE
    seq_ids = np.full(_NUM_TOKENS, _NUM_SEQS, np.int32)
    seq_ids[:n] = 0
    page_table = np.zeros((_NUM_SEQS, runner.pages_per_seq), np.int32)
    page_table[0] = pages
    cu = np.array([0] + [n] * _NUM_SEQS, np.int32)
    kv_lens = np.zeros(_NUM_SEQS, np.int32)
    kv_lens[0] = n
    md = AttentionMetadata(positions, slots, seq_ids, page_table, cu, kv_lens, np.int32(1))

    def run(weights, kv_caches, ids, md, position_inputs):
        hidden, _ = runner.placed.hidden_states(weights, kv_caches, ids, md, position_inputs, runner.backend)
        return runner.placed.logits(weights, hidden, runner.backend)

    logits = jax.jit(run)(runner._weights, runner.kv_caches, jnp.asarray(ids), md, runner._position_inputs(positions))
    return np.asarray(logits)[:n]


def backend_overrides(spec: str) -> dict:
    """``name[:key=value,...]`` as engine overrides: backend=name and backend.key=value (true/false as bools)."""
    name, _, options = spec.partition(":")
    overrides = {"backend": name}
    for pair in filter(None, options.split(",")):
        key, value = pair.split("=")
        overrides[f"backend.{key}"] = {"true": True, "false": False}.get(value, value)
    return overrides


def main() -> None:
    split = sys.argv.index("--")
    path, backend, dtype, max_tokens, *sizes = sys.argv[1:split]
    prompts = json.loads(sys.argv[split + 1])
    lines = _Lines()
    logging.getLogger("surge").addHandler(lines)
    for tp in map(int, sizes):
        lines.lines.clear()
        engine = surge.Engine.from_pretrained(
            path, dtype=dtype, max_num_seqs=_NUM_SEQS, max_model_len=64,
            max_num_batched_tokens=_NUM_TOKENS, token_buckets=[_NUM_TOKENS], seq_buckets=[_NUM_SEQS], num_pages=80,
            page_size=_PAGE_SIZE, progress=False, **backend_overrides(backend), **{"engine.tensor_parallel_size": tp})
        params = surge.SamplingParams(max_tokens=int(max_tokens), temperature=0.0, ignore_eos=True, logprobs=2)
        if isinstance(prompts[0], str):
            outs = engine.generate(prompts, params)
        else:
            outs = engine.generate(prompt_token_ids=prompts, sampling_params=params)
        tokens = [list(o.outputs[0].token_ids) for o in outs]
        # Per token: the two best logprobs, so a test can show the margin of a near-tie.
        top = [[sorted((lp.logprob for lp in step.values()), reverse=True)[:2] for step in o.outputs[0].logprobs]
               for o in outs]
        first = outs[0].prompt_token_ids
        weights = engine.runner.placed.weight_bytes_per_device()
        print(json.dumps({
            "tp": tp, "tokens": tokens, "top": top,
            "logits": prefill_logits(engine, first[:_NUM_TOKENS]).tolist(),
            "max_weight_bytes": max(weights.values()), "num_weight_devices": len(weights),
            "placement": [line for line in lines.lines if line.startswith("mesh ")],
            "sharded": engine.runner.placed.sharded,
        }), flush=True)
        del engine


if __name__ == "__main__":
    main()
