"""Llama 4 (text) against transformers on a tiny random checkpoint.

Chunked local attention with chunks (4) shorter than the prompts on the RoPE layers, a global NoPE
layer with the attention temperature made live (floor_scale 4), interleaved-pair RoPE, weightless q/k
norms, and MoE layers (top-2 of 4 sigmoid-scaled experts plus the shared expert) between dense ones.
The cpu backend's native kernel has no chunk mask yet: the engine on it says so.
"""

from __future__ import annotations

import pytest
import transformers

from family_oracle import check_engine_greedy, check_greedy, check_ragged_logits, make_checkpoint
from surge.models import load_model

CONFIG = dict(num_hidden_layers=4, head_dim=16, intermediate_size=48, intermediate_size_mlp=96,
              num_local_experts=4, num_experts_per_tok=2, interleave_moe_layer_step=2, attention_chunk_size=4,
              no_rope_layers=[1, 1, 1, 0], floor_scale=4, attn_scale=0.5,
              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})


@pytest.fixture(scope="module")
def llama4(tmp_path_factory):
    return make_checkpoint(transformers.Llama4TextConfig, tmp_path_factory.mktemp("llama4"), **CONFIG)


def test_ragged_chunked_logits_match_transformers(llama4):
    arch = check_ragged_logits(llama4, "llama4").arch
    assert [arch.layer_chunk(i) for i in range(4)] == [4, 4, 4, None]
    assert [arch.layer_uses_rope(i) for i in range(4)] == [True, True, True, False]
    assert arch.moe.layers == (False, True, False, True) and arch.moe.routing == "sigmoid"
    assert arch.attn_temperature == (4.0, 0.5)


def test_greedy_tokens_match_transformers(llama4):
    check_greedy(llama4)


def test_engine_greedy_tokens_match_transformers(llama4):
    check_engine_greedy(llama4, "reference")


def test_cpu_backend_says_it_lacks_the_chunk_mask(llama4):
    with pytest.raises(NotImplementedError, match="attention_chunk=4.*backend=reference"):
        check_engine_greedy(llama4, "cpu")
