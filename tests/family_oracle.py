"""Shared checks for the model-family tests (tests/test_models_*.py): surge against transformers.

``make_checkpoint(config_class, directory, **config)`` saves a tiny random-weight transformers
model (float32, eager attention) with the byte-level test tokenizer and returns a TinyCheckpoint.
``check_ragged_logits`` runs a two-request ragged batch (request 0 prefilled in two chunks, padding
tokens and a padding sequence) through a backend (reference or cpu) over NaN-filled pages and compares every
position's logits with transformers' float32 logits; ``check_greedy`` compares 16 greedy tokens;
``check_engine_greedy`` does the same through surge.Engine with a given backend (chunked prefill).
"""

from __future__ import annotations

import numpy as np
import torch

from conftest import _COMMON, PagedModel, TinyCheckpoint, _single_threaded_torch, make_tiny_tokenizer
from surge.models import load_model, num_params

# Both longer than every tiny window and chunk in these tests, so windows are exercised.
PROMPTS = [[1, 17, 250, 33, 98, 41, 7, 300, 12, 64, 5, 88], [1, 200, 9, 45, 120, 76, 3]]


def make_checkpoint(config_class, directory, seed: int = 0, **config) -> TinyCheckpoint:
    from transformers import AutoModelForCausalLM

    _single_threaded_torch()
    hf_config = config_class(**{**_COMMON, **config})
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config, attn_implementation="eager").float().eval()
    model.save_pretrained(directory)
    make_tiny_tokenizer(hf_config.vocab_size).save_pretrained(directory)
    return TinyCheckpoint(path=str(directory), hf_model=model, hf_config=hf_config)


def hf_logits(hf_model, prompt) -> np.ndarray:
    with torch.no_grad():
        return hf_model(torch.tensor([prompt])).logits[0].float().numpy()


def hf_greedy(hf_model, prompt, num_tokens: int = 16) -> list:
    with torch.no_grad():  # min_new_tokens masks EOS, as `suppress` / ignore_eos do on our side
        out = hf_model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=num_tokens,
                                min_new_tokens=num_tokens, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def assert_logits_close(got, want, what: str) -> None:
    atol = 1e-4 * float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=atol, err_msg=what)


def check_ragged_logits(ckpt: TinyCheckpoint, what: str, backend: str = "reference"):
    loaded = load_model(ckpt.path)
    assert num_params(loaded.arch) == sum(p.numel() for p in ckpt.hf_model.parameters())
    runner = PagedModel(loaded.model, backend=backend)
    what = f"{what} ({backend} backend)"
    first, second = PROMPTS
    chunk_a, chunk_b = runner.step([(0, first[:5]), (1, second)])
    (chunk_c,) = runner.step([(0, first[5:])])
    assert_logits_close(np.concatenate([chunk_a, chunk_c]), hf_logits(ckpt.hf_model, first), f"{what} req 0")
    assert_logits_close(chunk_b, hf_logits(ckpt.hf_model, second), f"{what} req 1")
    return loaded


def check_greedy(ckpt: TinyCheckpoint, loaded=None) -> list:
    loaded = loaded or load_model(ckpt.path)
    ours = PagedModel(loaded.model).greedy(PROMPTS, 16, suppress=loaded.arch.eos_token_ids)
    for prompt, tokens in zip(PROMPTS, ours):
        assert tokens == hf_greedy(ckpt.hf_model, prompt)
    assert len(set(sum(ours, []))) > 2, "random model collapsed to one token; the comparison would be weak"
    return ours


def check_engine_greedy(ckpt: TinyCheckpoint, backend: str) -> None:
    """16 greedy tokens of both prompts through surge.Engine (prefill chunked by a 8-token budget)."""
    import surge

    engine = surge.Engine.from_pretrained(ckpt.path, backend=backend, max_num_seqs=4, max_model_len=64,
                                          max_num_batched_tokens=8, token_buckets=[8], num_pages=64, page_size=4,
                                          progress=False)
    outs = engine.generate(prompt_token_ids=PROMPTS,
                           sampling_params=surge.SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True))
    for prompt, out in zip(PROMPTS, outs):
        assert list(out.outputs[0].token_ids) == hf_greedy(ckpt.hf_model, prompt), f"{backend} backend"
