"""The JAX decoder against transformers on tiny random checkpoints of each family.

Each checkpoint is written by transformers (safetensors + config + tokenizer)
and loaded by surge. Logits of a ragged two-request batch (one prompt prefilled
in two chunks) must match transformers' float32 logits at every position, and
16 greedy tokens decoded through the paged cache must match ``generate``.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from surge.models import CausalLM, ModelArchConfig, kv_cache_spec, load_model, num_params

FAMILIES = ["llama", "qwen2", "qwen3", "mistral"]
# Longer than every tiny sliding window (Mistral 4, Qwen2 5), so windows are exercised.
PROMPTS = [[1, 17, 250, 33, 98, 41, 7, 300, 12, 64, 5, 88], [1, 200, 9, 45, 120, 76, 3]]


def _hf_logits(hf_model, prompt):
    with torch.no_grad():
        return hf_model(torch.tensor([prompt])).logits[0].float().numpy()


def _assert_logits_close(got, want, what):
    atol = 1e-4 * float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=what)


@pytest.mark.parametrize("family", FAMILIES)
def test_ragged_chunked_logits_match_transformers(family, tiny_checkpoint, paged_model):
    ckpt = tiny_checkpoint(family)
    loaded = load_model(ckpt.path)
    assert loaded.arch.architecture.lower().startswith(family)
    assert num_params(loaded.arch) == sum(p.numel() for p in ckpt.hf_model.parameters())

    runner = paged_model(loaded.model)
    first, second = PROMPTS
    # Step 1: the first 5 tokens of request 0 and all of request 1; step 2: the rest of request 0.
    chunk_a, chunk_b = runner.step([(0, first[:5]), (1, second)])
    (chunk_c,) = runner.step([(0, first[5:])])

    _assert_logits_close(np.concatenate([chunk_a, chunk_c]), _hf_logits(ckpt.hf_model, first), f"{family} req 0")
    _assert_logits_close(chunk_b, _hf_logits(ckpt.hf_model, second), f"{family} req 1")


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_tokens_match_transformers_generate(family, tiny_checkpoint, paged_model):
    ckpt = tiny_checkpoint(family)
    loaded = load_model(ckpt.path)
    ours = paged_model(loaded.model).greedy(PROMPTS, 16, suppress=loaded.arch.eos_token_ids)
    for prompt, tokens in zip(PROMPTS, ours):
        with torch.no_grad():  # min_new_tokens masks EOS, as `suppress` does on our side
            out = ckpt.hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=16,
                                         min_new_tokens=16, pad_token_id=0)
        assert tokens == out[0, len(prompt):].tolist()
    assert len(set(sum(ours, []))) > 2, "random model collapsed to one token; the comparison would be weak"


def test_sliding_window_changes_the_output(tiny_checkpoint, paged_model):
    # Guards against a window that is silently ignored: the same weights with a wider window differ.
    narrow = load_model(tiny_checkpoint("mistral").path)
    wide_arch = ModelArchConfig(**{**narrow.arch.__dict__, "sliding_window": 64})
    wide = CausalLM(wide_arch, dtype=jnp.float32, rngs=nnx.Rngs(0))
    nnx.update(wide, nnx.state(narrow.model))
    (a,) = paged_model(narrow.model).step([(0, PROMPTS[0])])
    (b,) = paged_model(wide).step([(0, PROMPTS[0])])
    np.testing.assert_allclose(a[:4], b[:4], rtol=1e-5, atol=1e-5)  # inside the window: identical
    assert np.abs(a[-1] - b[-1]).max() > 1e-3


def test_bfloat16_load_gives_close_logits(tiny_checkpoint, paged_model):
    ckpt = tiny_checkpoint("qwen3")
    loaded = load_model(ckpt.path, dtype="bfloat16")
    assert loaded.model.layers[0].qkv_proj[...].dtype == jnp.bfloat16
    (logits,) = paged_model(loaded.model).step([(0, PROMPTS[0])])
    assert logits.dtype == np.float32
    want = _hf_logits(ckpt.hf_model, PROMPTS[0])
    assert np.abs(logits - want).max() < 0.05 * np.abs(want).max()


def test_kv_cache_spec_and_logits_only_for_requested_rows(tiny_checkpoint, paged_model):
    loaded = load_model(tiny_checkpoint("qwen3").path)
    assert kv_cache_spec(loaded.arch) == (2, 2, 24)
    runner = paged_model(loaded.model)
    (chunk,) = runner.step([(0, PROMPTS[1])])
    assert chunk.shape == (len(PROMPTS[1]), loaded.arch.vocab_size)


def test_tokenizer_and_chat_template_come_with_the_directory(tiny_checkpoint):
    loaded = load_model(tiny_checkpoint("llama").path)
    ids = loaded.tokenizer("hello there").input_ids
    assert loaded.tokenizer.decode(ids) == "hello there"
    assert max(ids) < loaded.arch.vocab_size
    assert "assistant:" in loaded.chat_template
    assert loaded.arch.eos_token_ids == (2,)


# Chat prompts of one length (38 tokens each), so transformers can run them as one batch without padding:
# left padding would change its float32 numerics, and greedy decoding amplifies any difference.
SMOLLM2_QUESTIONS = [
    "What is the capital city of France?",
    "Write a haiku about the sea.",
    "Give me three tips for sleeping well.",
    "Tell me a short joke about cats.",
]


@pytest.mark.slow
def test_smollm2_greedy_64_tokens_match_transformers(smollm2_surge, smollm2_hf, paged_model):
    tokenizer = smollm2_surge.tokenizer
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True,
                                             tokenize=True, return_dict=False) for q in SMOLLM2_QUESTIONS]
    assert len({len(p) for p in prompts}) == 1, [len(p) for p in prompts]
    eos = smollm2_surge.arch.eos_token_ids
    runner = paged_model(smollm2_surge.model, page_size=16, num_pages=48, pages_per_seq=8, max_seqs=5,
                         token_buckets=(8, 160))
    ours = runner.greedy(prompts, 64, suppress=eos)
    with torch.no_grad():  # min_new_tokens masks EOS, as `suppress` does on our side
        out = smollm2_hf.generate(torch.tensor(prompts), do_sample=False, max_new_tokens=64, min_new_tokens=64,
                                  pad_token_id=tokenizer.pad_token_id)
    for prompt, tokens, row in zip(prompts, ours, out):
        want = row[len(prompt):].tolist()
        assert tokens == want, (f"prompt {tokenizer.decode(prompt)!r}:\nsurge {tokenizer.decode(tokens)!r}\n"
                                f"transformers {tokenizer.decode(want)!r}")


def test_every_layer_of_a_model_carries_its_own_spec():
    from flax import nnx

    from surge.kernels.base import AttentionSpec
    from surge.models.arch import ModelArchConfig
    from surge.models.decoder import CausalLM

    arch = ModelArchConfig("Gemma2ForCausalLM", vocab_size=32, hidden_size=16, intermediate_size=32, num_layers=2,
                           num_heads=2, num_kv_heads=1, head_dim=8, sliding_window=4,
                           sliding_window_layers=(True, False), attn_logit_soft_cap=50.0, attention_scale=0.25)
    model = CausalLM(arch, rngs=nnx.Rngs(0))
    assert [layer.attention_spec for layer in model.layers] == [
        AttentionSpec(0.25, sliding_window=4, logit_soft_cap=50.0), AttentionSpec(0.25, logit_soft_cap=50.0)]
