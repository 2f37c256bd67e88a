"""Mixture-of-experts families (Mixtral, Qwen2-MoE, Qwen3-MoE) against transformers on tiny random checkpoints.

Each has 4 experts, top-2: Mixtral always renormalises the top-k weights (and gets a sliding window
shorter than the prompts), Qwen2-MoE does not and adds the sigmoid-gated shared expert, with one dense
layer among the MoE ones (mlp_only_layers); Qwen3-MoE renormalises (norm_topk_prob) and has q/k norms.
The routing itself is checked against a plain per-token loop over the experts.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import transformers
from flax import nnx

from family_oracle import check_engine_greedy, check_greedy, check_ragged_logits, make_checkpoint
from surge.kernels.reference import ReferenceBackend
from surge.models import load_model

MOE = dict(num_experts_per_tok=2, num_hidden_layers=3)
CONFIGS = {
    "mixtral": (transformers.MixtralConfig, dict(MOE, num_local_experts=4, sliding_window=5,
                                                rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "qwen2_moe": (transformers.Qwen2MoeConfig, dict(MOE, num_experts=4, moe_intermediate_size=48,
                                                    shared_expert_intermediate_size=96, norm_topk_prob=False,
                                                    mlp_only_layers=[1])),
    "qwen3_moe": (transformers.Qwen3MoeConfig, dict(MOE, num_experts=4, moe_intermediate_size=48, head_dim=24,
                                                    norm_topk_prob=True)),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def moe(request, tmp_path_factory):
    config_class, config = CONFIGS[request.param]
    return request.param, make_checkpoint(config_class, tmp_path_factory.mktemp(request.param), **config)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_ragged_chunked_logits_match_transformers(backend, moe):
    family, ckpt = moe
    arch = check_ragged_logits(ckpt, family, backend).arch
    assert (arch.moe.num_experts, arch.moe.top_k) == (4, 2)
    assert arch.moe.layers == ((True, False, True) if family == "qwen2_moe" else (True, True, True))
    assert arch.moe.normalize_top_k == (family != "qwen2_moe")
    assert bool(arch.moe.shared_intermediate_size) == (family == "qwen2_moe")


def test_greedy_tokens_match_transformers(moe):
    check_greedy(moe[1])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_engine_greedy_tokens_match_transformers(moe, backend):
    check_engine_greedy(moe[1], backend)


def test_grouped_routing_matches_a_per_token_loop(moe):
    family, ckpt = moe
    block = load_model(ckpt.path).model.layers[0].moe
    x = np.random.default_rng(1).normal(size=(13, 64)).astype(np.float32)
    backend = ReferenceBackend()
    got = np.asarray(block(jnp.asarray(x), backend))
    weights, experts = (np.asarray(a) for a in block.route(jnp.asarray(x), backend))
    gate_up, down = np.asarray(block.experts_gate_up[...]), np.asarray(block.experts_down[...])
    want = np.zeros_like(x)
    for t in range(len(x)):
        for w, e in zip(weights[t], experts[t]):
            gate, up = np.split(x[t] @ gate_up[e], 2)
            want[t] += w * ((gate / (1 + np.exp(-gate)) * up) @ down[e])
    if block.shared_gate_up is not None:
        gate, up = np.split(x @ np.asarray(block.shared_gate_up[...]), 2, axis=-1)
        shared = (gate / (1 + np.exp(-gate)) * up) @ np.asarray(block.shared_down[...])
        want += shared / (1 + np.exp(-(x @ np.asarray(block.shared_gate[...]))))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert len(np.unique(experts)) > 1, "every token chose the same experts; routing would go untested"


@pytest.mark.parametrize("num_rows,tile", [(13, 16), (64, 16), (200, 32)])
def test_cpu_grouped_matmul_matches_ragged_dot(num_rows, tile):
    from surge.kernels.grouped_matmul import grouped_matmul_loops

    rng = np.random.default_rng(num_rows)
    sizes = np.bincount(rng.integers(0, 6, num_rows), minlength=8)  # experts 6 and 7 get no rows
    sizes[2] = 0
    sizes[0] += num_rows - sizes.sum()
    x = rng.standard_normal((num_rows, 24)).astype(np.float32)
    w = rng.standard_normal((8, 24, 40)).astype(np.float32)
    want = np.concatenate([x[a:b] @ w[g] for g, (a, b) in enumerate(zip(np.cumsum(sizes) - sizes, np.cumsum(sizes)))])
    got = np.asarray(grouped_matmul_loops(jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes, jnp.int32), tile))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    ragged = np.asarray(ReferenceBackend().grouped_matmul(jnp.asarray(x), jnp.asarray(w), jnp.asarray(sizes, jnp.int32)))
    np.testing.assert_allclose(ragged, want, rtol=1e-5, atol=1e-4)


def _cpu_backend():
    from surge.kernels import registry

    reason = registry.available().get("cpu")
    if reason is not None:
        pytest.skip(reason)
    return registry.get_backend("cpu")


@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("num_rows", [13, 64, 200])
def test_cpu_backend_grouped_matmul_is_the_native_kernel(num_rows, dtype, packed):
    # The cpu backend's expert projection: one C++ matmul per expert over its own rows (experts 2, 6 and 7
    # get none), on [E, K, N] or the [E, K * N] panels prepare_model packs; rows past the groups are zeros.
    import jax

    from surge.kernels import cpu_matmul

    backend = _cpu_backend()
    rng = np.random.default_rng(num_rows)
    sizes = np.bincount(rng.integers(0, 6, num_rows - 3), minlength=8)
    sizes[0] += sizes[2]  # expert 2's rows go to expert 0
    sizes[2] = 0  # the last 3 rows belong to no group
    x = rng.standard_normal((num_rows, 24)).astype(np.float32)
    w = jnp.asarray(rng.standard_normal((8, 24, 48)).astype(np.float32), dtype)
    w64 = np.asarray(w.astype(jnp.float32), np.float64)
    ends = np.cumsum(sizes)
    want = np.zeros((num_rows, 48))
    for g, (a, b) in enumerate(zip(ends - sizes, ends)):
        want[a:b] = x[a:b] @ w64[g]
    weights = cpu_matmul.pack_experts(w) if packed else w
    assert weights.shape == ((8, 24 * 48) if packed else (8, 24, 48))
    got = np.asarray(jax.jit(backend.grouped_matmul)(jnp.asarray(x), weights, jnp.asarray(sizes, jnp.int32)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    assert not got[-3:].any()


def test_cpu_grouped_matmul_names_group_sizes_past_the_rows():
    backend = _cpu_backend()
    x, w = jnp.ones((4, 16)), jnp.ones((2, 16, 16))
    with pytest.raises(Exception, match=r"group_sizes\[1\] = 3 runs past the 4 rows of x \(after 2\)"):
        np.asarray(backend.grouped_matmul(x, w, jnp.asarray([2, 3], jnp.int32)))


def test_cpu_backend_packs_the_expert_stacks(moe):
    from family_oracle import PROMPTS
    from conftest import PagedModel

    _, ckpt = moe
    loaded = load_model(ckpt.path)
    block = loaded.model.layers[0].moe
    hidden, inter, experts = 64, block.experts_down[...].shape[1], block.num_experts
    runner = PagedModel(loaded.model, backend="cpu")
    assert block.experts_gate_up[...].shape == (experts, hidden * 2 * inter)
    assert block.experts_down[...].shape == (experts, inter * hidden)
    assert len(runner.step([(0, PROMPTS[0])])[0]) == len(PROMPTS[0])


_EXPERT_PARALLEL = r"""
import json, sys
sys.path.insert(0, "tests")
import jax
import numpy as np
from jax.sharding import Mesh
import surge
from family_oracle import PROMPTS
from surge.runner.mesh import param_sharding

mesh = Mesh(np.array(jax.devices()[:2]).reshape(1, 2), ("dp", "tp"))
specs = [tuple(param_sharding(name, shape, mesh).spec) for name, shape in
         [("layers.0.moe.experts_gate_up", (4, 64, 96)), ("layers.0.moe.experts_down", (4, 48 * 64)),
          ("layers.0.moe.experts_down", (3, 48, 64))]]
engine = surge.Engine.from_pretrained(sys.argv[1], backend=sys.argv[2], max_num_seqs=4,
                                      max_model_len=64, max_num_batched_tokens=8, token_buckets=[8], num_pages=64,
                                      page_size=4, progress=False, **{"engine.tensor_parallel_size": 2})
outs = engine.generate(prompt_token_ids=PROMPTS,
                       sampling_params=surge.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
split = [w.shape for w in engine.runner._weights if w.ndim == 3 and tuple(w.sharding.spec)[:1] == ("tp",)
         and len(w.sharding.device_set) == 2]
print(json.dumps({"specs": specs, "split": len(split), "tokens": [list(o.outputs[0].token_ids) for o in outs]}))
"""


def test_expert_parallel_over_two_devices_keeps_the_tokens(moe):
    # engine.tensor_parallel_size=2 on two host devices: each holds half of every expert stack (split by expert).
    import json
    import os
    import subprocess
    import sys

    from family_oracle import PROMPTS, hf_greedy

    family, ckpt = moe
    if family != "qwen2_moe":
        pytest.skip("one family is enough: the sharding rule is the same for all")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    run = subprocess.run([sys.executable, "-c", _EXPERT_PARALLEL, ckpt.path, "reference"], env=env,
                         capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    assert result["specs"] == [["tp", None, None], ["tp", None], [None, None, None]]  # 3 experts do not split in 2
    assert result["split"] == 2 * 2  # both expert stacks of both MoE layers (layer 1 is dense)
    assert result["tokens"] == [hf_greedy(ckpt.hf_model, p) for p in PROMPTS]
