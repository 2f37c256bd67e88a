"""Tensor parallelism (surge.parallel.tensor_parallel): the split model gives the one-device answers.

Each case runs tests/tensor_parallel_worker.py in a subprocess with 8 host devices
(XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before jax starts, so not in this
process) and compares tp = 2 and tp = 4 against tp = 1: prefill logits within 1e-4 relative, 16 greedy
tokens identical, on the reference and cpu backends, for tiny random Llama (4 heads, 2 KV heads: tp = 4
replicates each KV head twice) and Qwen3 (8 heads, 4 KV heads, head_dim 24) models; the weights each
device holds at tp = 4 (from the arrays' shardings) are at most 30 % of tp = 1's. The embedded SmolLM2
(9 heads, 3 KV heads) at tp = 3 in float32 on the cpu backend gives tp = 1's greedy tokens for 16 prompts x
32 tokens. The Pallas TPU kernel, in interpret mode, runs inside shard_map on each device's heads at tp = 2.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from surge.parallel.tensor_parallel import plan_shards

REPO = pathlib.Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "tensor_parallel_worker.py"
PROMPTS = [[1, 17, 250, 33, 98, 41, 7, 300, 12, 64, 5, 88], [1, 200, 9, 45, 120, 76, 3], [1, 64, 64, 2, 150]]
FAMILIES = {"llama": {}, "qwen3": dict(num_attention_heads=8, num_key_value_heads=4)}


def run_worker(path: str, backend: str, sizes, prompts, max_tokens: int, dtype: str = "float32") -> dict:
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, str(WORKER), path, backend, dtype, str(max_tokens), *map(str, sizes), "--",
                          json.dumps(prompts)], env=env, capture_output=True, text=True, timeout=900, cwd=REPO)
    assert run.returncode == 0, run.stderr[-4000:]
    results = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {r["tp"]: r for r in results}


# (family, backend, tensor-parallel sizes): the Pallas TPU kernel runs in interpret mode (slow on CPU: tp = 2 only).
CASES = [(f, b, (1, 2, 4)) for f in FAMILIES for b in ("reference", "cpu")] + [
    pytest.param((f, "pallas:interpret=true", (1, 2)), marks=pytest.mark.slow) for f in FAMILIES]


@pytest.fixture(scope="module", params=CASES,
                ids=lambda p: f"{p[0]}-{p[1].split(':')[0]}")
def tp_runs(request, tiny_checkpoint):
    family, backend, sizes = request.param
    ckpt = tiny_checkpoint(family, **FAMILIES[family])
    return run_worker(ckpt.path, backend, sizes, PROMPTS, max_tokens=16)


def test_logits_and_greedy_tokens_match_one_device(tp_runs):
    whole = tp_runs[1]
    assert not whole["sharded"]
    reference = np.asarray(whole["logits"])
    assert reference.shape == (len(PROMPTS[0]), 320) and np.isfinite(reference).all()
    assert len(tp_runs) > 1
    for tp in sorted(tp_runs)[1:]:
        run = tp_runs[tp]
        assert run["sharded"]
        np.testing.assert_allclose(np.asarray(run["logits"]), reference, rtol=1e-4,
                                   atol=1e-4 * np.abs(reference).max(), err_msg=f"tp={tp}")
        assert run["tokens"] == whole["tokens"], f"tp={tp}"
        assert all(len(t) == 16 for t in run["tokens"])


def test_weights_per_device_at_tp4_are_at_most_30_percent_of_one_device(tp_runs):
    for tp in tp_runs:
        assert tp_runs[tp]["num_weight_devices"] == tp
        (line,) = tp_runs[tp]["placement"]  # one start-up line names the mesh, bytes per device and pages
        assert line.startswith(f"mesh dp x tp = 1 x {tp} (")
        assert "1 process(es), 8 cpu device(s) per process; per device: weights " in line
        assert " MiB, KV cache " in line and line.endswith(" MiB; 79 pages per replica")
    if 4 in tp_runs:
        assert tp_runs[4]["max_weight_bytes"] <= 0.30 * tp_runs[1]["max_weight_bytes"]
    assert tp_runs[2]["max_weight_bytes"] <= 0.55 * tp_runs[1]["max_weight_bytes"]


SMOLLM2_PROMPTS = [
    "The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
    "List three primary colors:", "The speed of light is", "import numpy as np\n", "My favourite food is",
    "Water boils at", "The first president of the United States was", "To make a cup of tea,",
    "SELECT name FROM users WHERE", "The largest planet in the solar system is", "Dear hiring manager,",
    "In 1969, astronauts", "The recipe calls for two cups of", "Photosynthesis is the process by which",
]
# A tp = 3 token may differ from tp = 1's only where tp = 1's two best tokens were this close (a near-tie that
# float32 summation order can flip); the margin is printed.
NEAR_TIE_LOGPROB_MARGIN = 1e-3


@pytest.mark.slow
def test_smollm2_at_tp3_gives_the_one_device_greedy_tokens(smollm2_gguf):
    runs = run_worker(smollm2_gguf, "cpu", (1, 3), SMOLLM2_PROMPTS, max_tokens=32)
    assert runs[3]["sharded"] and runs[3]["num_weight_devices"] == 3
    assert len(runs[1]["tokens"]) == len(runs[3]["tokens"]) == 16
    for i, (one, three) in enumerate(zip(runs[1]["tokens"], runs[3]["tokens"])):
        assert len(one) == len(three) == 32
        first_diff = next((j for j, (a, b) in enumerate(zip(one, three)) if a != b), None)
        if first_diff is None:
            continue
        margin = float(-np.diff(runs[1]["top"][i][first_diff])[0])
        print(f"prompt {i}: tp=3 differs from step {first_diff}, tp=1 top-2 logprob margin {margin:.2e}")
        assert margin < NEAR_TIE_LOGPROB_MARGIN, f"prompt {i}: tokens differ from step {first_diff} (margin {margin})"
    reference = np.asarray(runs[1]["logits"])
    np.testing.assert_allclose(np.asarray(runs[3]["logits"]), reference, rtol=1e-4,
                               atol=1e-4 * np.abs(reference).max())


def _arch(heads, kv_heads, inter=128, vocab=320):
    return SimpleNamespace(num_heads=heads, num_kv_heads=kv_heads, head_dim=16, intermediate_size=inter,
                           vocab_size=vocab)


def test_kv_heads_split_or_replicate_and_vocabulary_pads():
    split = plan_shards(_arch(8, 4), 2)
    assert (split.heads_per_shard, split.kv_heads_per_shard, split.cache_kv_heads) == (4, 2, 4)
    assert [split.kv_heads_of(s) for s in range(2)] == [[0, 1], [2, 3]]
    replicated = plan_shards(_arch(4, 2), 4)
    assert (replicated.heads_per_shard, replicated.kv_heads_per_shard, replicated.cache_kv_heads) == (1, 1, 4)
    assert [replicated.kv_heads_of(s) for s in range(4)] == [[0], [0], [1], [1]]
    assert plan_shards(_arch(9, 3, inter=1536, vocab=49153), 3).vocab_per_shard == 16385


@pytest.mark.parametrize("heads, kv_heads, inter, tp, message", [
    (4, 2, 128, 3, "tensor_parallel_size=3 does not divide the model's 4 attention heads"),
    (6, 4, 128, 3, "tensor_parallel_size=3 neither divides the model's 4 KV heads nor is a multiple of them"),
    (12, 8, 128, 6, "tensor_parallel_size=6 neither divides the model's 8 KV heads"),
    (4, 4, 30, 4, "tensor_parallel_size=4 does not divide the model's intermediate_size=30"),
])
def test_a_model_that_does_not_split_fails_naming_both_numbers(heads, kv_heads, inter, tp, message):
    with pytest.raises(ValueError, match=message):
        plan_shards(_arch(heads, kv_heads, inter), tp)
