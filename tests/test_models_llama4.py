"""Llama 4 (text) against transformers on a tiny random checkpoint.

Chunked local attention with chunks (4) shorter than the prompts on the RoPE layers, a global NoPE
layer with the attention temperature made live (floor_scale 4), interleaved-pair RoPE, weightless q/k
norms, and MoE layers (top-2 of 4 sigmoid-scaled experts plus the shared expert) between dense ones.
Both the reference and the cpu backend (its native kernel masks chunks) are checked.
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


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_ragged_chunked_logits_match_transformers(backend, llama4):
    arch = check_ragged_logits(llama4, "llama4", backend).arch
    assert [arch.layer_chunk(i) for i in range(4)] == [4, 4, 4, None]
    assert [arch.layer_uses_rope(i) for i in range(4)] == [True, True, True, False]
    assert arch.moe.layers == (False, True, False, True) and arch.moe.routing == "sigmoid"
    assert arch.attn_temperature == (4.0, 0.5)


def test_greedy_tokens_match_transformers(llama4):
    check_greedy(llama4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_engine_greedy_tokens_match_transformers(llama4, backend):
    check_engine_greedy(llama4, backend)


def test_pages_behind_every_layers_reach_are_released_only_without_global_layers(llama4):
    import dataclasses

    arch = load_model(llama4.path).arch
    assert arch.kv_reach() is None  # the NoPE layer reads every token
    all_local = dataclasses.replace(arch, chunked_layers=(True,) * 4, sliding_window=6,
                                    sliding_window_layers=(False, True, False, False))
    assert all_local.kv_reach() == 6  # the widest reach: layer 1's window (6) over the chunks (4)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_all_chunked_model_gives_pages_back_and_still_matches(tmp_path, backend):
    import surge
    from family_oracle import PROMPTS, hf_greedy

    ckpt = make_checkpoint(transformers.Llama4TextConfig, tmp_path, **{**CONFIG, "no_rope_layers": [1, 1, 1, 1]})
    engine = surge.Engine.from_pretrained(ckpt.path, backend=backend, max_num_seqs=2, max_model_len=64,
                                          max_num_batched_tokens=16, token_buckets=[16], num_pages=32,
                                          page_size=4, progress=False)
    assert engine.scheduler.sliding_window == 4
    rid = engine.add_request(prompt_token_ids=PROMPTS[0],
                             sampling_params=surge.SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    most_held, tokens = 0, []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens = list(out.outputs[0].token_ids)
        if rid in engine.scheduler.requests:
            most_held = max(most_held, len([p for p in engine.block_manager.pages(rid) if p]))
    assert most_held <= 4 // 4 + 2  # the chunk's page, the page being written, one straddling page
    assert tokens == hf_greedy(ckpt.hf_model, PROMPTS[0], 30)


def test_first_needed_key_is_the_chunk_start_or_the_widest_window():
    from surge.models import ModelArchConfig

    config = dict(architectures=["Llama4ForCausalLM"], model_type="llama4_text", vocab_size=320, hidden_size=64,
                  intermediate_size=48, intermediate_size_mlp=96, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2,
                  attention_chunk_size=8, no_rope_layers=[1, 1, 1, 1])
    arch = ModelArchConfig.from_hf_config(config)
    assert [arch.first_needed_key(p) for p in (0, 7, 8, 13, 16)] == [0, 0, 8, 8, 16]
    assert arch.kv_reach() == 8  # releasing by reach alone would keep keys from p - 7: 6 for p = 13
    import dataclasses

    mixed = dataclasses.replace(arch, sliding_window=3, sliding_window_layers=(False, True, False, False))
    assert [mixed.first_needed_key(p) for p in (0, 8, 9, 13)] == [0, 6, 7, 8]  # min(p - 2, chunk start)
    assert dataclasses.replace(arch, chunked_layers=(True, True, True, False)).first_needed_key(13) == 0


def test_all_chunked_model_holds_only_the_current_chunks_pages(tmp_path):
    # chunk 8 = two pages of 4: pages before the current chunk are given back (releasing by reach would keep
    # up to 7 keys before it); the engine's look-ahead step may hold one more page for a step.
    import surge
    from family_oracle import PROMPTS

    ckpt = make_checkpoint(transformers.Llama4TextConfig, tmp_path,
                           **{**CONFIG, "no_rope_layers": [1, 1, 1, 1], "attention_chunk_size": 8})
    engine = surge.Engine.from_pretrained(ckpt.path, backend="cpu", max_num_seqs=2, max_model_len=64,
                                          max_num_batched_tokens=16, token_buckets=[16], num_pages=32,
                                          page_size=4, progress=False)
    rid = engine.add_request(prompt_token_ids=PROMPTS[0],
                             sampling_params=surge.SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    held = []
    while engine.has_unfinished_requests():
        engine.step()
        if rid in engine.scheduler.requests:
            held.append(len([p for p in engine.block_manager.pages(rid) if p]))
    assert max(held) <= 3 and sorted(held)[len(held) // 2] <= 2 and len(held) > 20
