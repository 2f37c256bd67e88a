"""Phi-3 / Phi-3.5 against transformers on tiny random checkpoints.

Two configs: longrope with short and long factors (the prompts stay below the original context,
where transformers uses the short factors; the long ones are checked against transformers' own
rotary tables past it), and a partial rotary factor with a sliding window shorter than the prompts.
Both read q/k/v and gate/up as the checkpoint stores them, fused.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import transformers

from family_oracle import check_engine_greedy, check_greedy, check_ragged_logits, make_checkpoint
from surge.models import load_model
from surge.models.hf_checkpoint import CheckpointError
from surge.models.rope import rope_inputs

_FACTORS = np.random.default_rng(0)
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
            "short_factor": [round(float(f), 3) for f in _FACTORS.uniform(1.0, 1.5, 8)],
            "long_factor": [round(float(f), 3) for f in _FACTORS.uniform(2.0, 8.0, 8)]}
CONFIGS = {
    "longrope": dict(rope_parameters=LONGROPE, original_max_position_embeddings=64, max_position_embeddings=256),
    "partial": dict(rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
                    sliding_window=5),
}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def phi3(request, tmp_path_factory):
    ckpt = make_checkpoint(transformers.Phi3Config, tmp_path_factory.mktemp(f"phi3-{request.param}"),
                           **CONFIGS[request.param])
    return request.param, ckpt


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_ragged_chunked_logits_match_transformers(backend, phi3):
    name, ckpt = phi3
    arch = check_ragged_logits(ckpt, f"phi3 {name}", backend).arch
    assert arch.fused_checkpoint
    if name == "partial":
        assert (arch.rotary_dim, arch.sliding_window) == (8, 5)
    else:
        assert arch.rope_scaling.attention_factor == pytest.approx(np.sqrt(1 + np.log(4) / np.log(64)))


def test_greedy_tokens_match_transformers(phi3):
    check_greedy(phi3[1])


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_engine_greedy_tokens_match_transformers(phi3, backend):
    check_engine_greedy(phi3[1], backend)


def test_long_factors_past_the_original_context_match_transformers_tables(phi3):
    name, ckpt = phi3
    if name != "longrope":
        pytest.skip("no longrope")
    arch = load_model(ckpt.path).arch
    positions = np.arange(60, 100, dtype=np.int32)  # crosses the original context (64)
    ((cos, sin),) = rope_inputs(arch, positions, xp=np)
    rotary = ckpt.hf_model.model.rotary_emb
    dummy = torch.zeros(1, dtype=torch.float32)
    for part, (lo, hi) in (("short", (60, 64)), ("long", (64, 100))):
        # transformers picks one factor set per forward pass from its largest position.
        hf_cos, hf_sin = rotary(dummy, torch.arange(lo, hi)[None])
        np.testing.assert_allclose(cos[lo - 60:hi - 60], hf_cos[0].numpy(), rtol=1e-5, atol=1e-5, err_msg=part)
        np.testing.assert_allclose(sin[lo - 60:hi - 60], hf_sin[0].numpy(), rtol=1e-5, atol=1e-5, err_msg=part)


def test_unsupported_rope_scaling_is_rejected(phi3, tmp_path):
    _, ckpt = phi3
    ckpt.hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 2.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope scaling type 'dynamic' is not supported"):
        load_model(str(tmp_path))
