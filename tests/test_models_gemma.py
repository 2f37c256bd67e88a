"""Gemma 2 and Gemma 3 (text) against transformers on tiny random checkpoints.

What is special is made live: windows (4) shorter than the prompts on alternating layers,
attention and final-logit soft caps small enough to bite (Gemma 2), query_pre_attn_scalar
unlike head_dim, (1 + w) norms and sandwich norms with random weights, q/k norms and a local
RoPE base beside a linearly scaled global one (Gemma 3).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import transformers

from family_oracle import (PROMPTS, check_engine_greedy, check_greedy, check_ragged_logits, hf_logits,
                           make_checkpoint)
from surge.models import load_model
from surge.models.hf_checkpoint import CheckpointError

GEMMA = dict(head_dim=16, num_hidden_layers=4, sliding_window=4, query_pre_attn_scalar=24, eos_token_id=2)
CONFIGS = {
    "gemma2": (transformers.Gemma2Config,
               dict(GEMMA, attn_logit_softcapping=0.5, final_logit_softcapping=2.0,
                    layer_types=["sliding_attention", "full_attention"] * 2,
                    rope_parameters={"rope_type": "default", "rope_theta": 10000.0})),
    "gemma3": (transformers.Gemma3TextConfig,
               dict(GEMMA, layer_types=["sliding_attention", "sliding_attention", "full_attention",
                                        "sliding_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 100.0}})),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def gemma(request, tmp_path_factory):
    config_class, config = CONFIGS[request.param]
    ckpt = make_checkpoint(config_class, tmp_path_factory.mktemp(request.param), **config)
    for norm in ckpt.hf_model.modules():  # Gemma norms start at zero weight, i.e. scale 1; make them count
        if type(norm).__name__.endswith("RMSNorm"):
            norm.weight.data.normal_(0.0, 0.3)
    ckpt.hf_model.save_pretrained(ckpt.path)
    return request.param, ckpt


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_ragged_chunked_logits_match_transformers(backend, gemma):
    family, ckpt = gemma
    loaded = check_ragged_logits(ckpt, family, backend)
    arch = loaded.arch
    assert arch.sandwich_norms and arch.norm_unit_offset and arch.hidden_act == "gelu_tanh"
    want_windows = [4, None, 4, None] if family == "gemma2" else [4, 4, None, 4]
    assert [arch.layer_window(i) for i in range(4)] == want_windows
    assert arch.attention_scale == pytest.approx(24 ** -0.5)


def test_greedy_tokens_match_transformers(gemma):
    check_greedy(gemma[1])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_engine_greedy_tokens_match_transformers(gemma, backend):
    check_engine_greedy(gemma[1], backend)


def test_soft_caps_are_live(gemma):
    family, ckpt = gemma
    if family != "gemma2":
        pytest.skip("Gemma 3 has no soft caps")
    logits = hf_logits(ckpt.hf_model, PROMPTS[0])
    assert np.abs(logits).max() < 2.0 and np.abs(logits).max() > 1.5  # the final cap (2.0) is what bounds them


def test_gemma3_uses_two_rope_bases(gemma):
    family, ckpt = gemma
    if family != "gemma3":
        pytest.skip("Gemma 2 has one RoPE")
    arch = load_model(ckpt.path).arch
    assert (arch.rope_theta, arch.rope_scaling.factor, arch.local_rope_theta) == (1e6, 4.0, 100.0)
    assert [arch.layer_rope(i) for i in range(4)] == [1, 1, 0, 1]


def test_exact_gelu_is_rejected(gemma, tmp_path):
    _, ckpt = gemma
    ckpt.hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["hidden_activation"] = "gelu"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="hidden_activation 'gelu' is not supported"):
        load_model(str(tmp_path))


def test_alternating_windows_hold_the_pages_the_global_layers_need(gemma):
    # Windowed layers could give pages back but the global layers read every token, so over a long
    # generation a request holds exactly its tokens' pages: no more (nothing per layer), no fewer.
    import surge

    _, ckpt = gemma
    engine = surge.Engine.from_pretrained(ckpt.path, backend="reference", max_num_seqs=2, max_model_len=64,
                                          max_num_batched_tokens=16, token_buckets=[16], num_pages=32,
                                          page_size=4, progress=False)
    engine.add_request(prompt_token_ids=PROMPTS[0],
                       sampling_params=surge.SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True))
    peak, finished = 0, []
    while engine.has_unfinished_requests():
        finished += [o for o in engine.step() if o.finished]
        peak = max(peak, engine.stats().pages.num_used_pages)
    assert len(finished[0].outputs[0].token_ids) == 40
    assert peak == -(-(len(PROMPTS[0]) + 40) // 4) == 13
    assert engine.stats().pages.num_used_pages == 0


def test_gemma3_configs_from_before_layer_types_and_rope_parameters():
    # The shape of google/gemma-3-4b-it's text config: top-level rope_theta / rope_scaling / local base,
    # a sliding_window_pattern instead of layer_types, no soft caps.
    from surge.models import ModelArchConfig

    config = dict(architectures=["Gemma3ForCausalLM"], model_type="gemma3_text", vocab_size=320, hidden_size=64,
                  intermediate_size=128, num_hidden_layers=12, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=16, hidden_activation="gelu_pytorch_tanh", query_pre_attn_scalar=16, sliding_window=8,
                  sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                  rope_scaling={"rope_type": "linear", "factor": 8.0})
    arch = ModelArchConfig.from_hf_config(config)
    assert [arch.layer_window(i) for i in range(12)] == ([8] * 5 + [None]) * 2
    assert (arch.rope_theta, arch.rope_scaling.factor, arch.local_rope_theta) == (1e6, 8.0, 1e4)
    assert arch.tie_word_embeddings and arch.qk_norm and arch.attn_logit_soft_cap is None
