"""Prompt log-probs: every prompt position's log-softmax, computed in the step programs compiled at start-up.

The oracle is transformers' float32 forward of the same tiny checkpoint: log_softmax(logits[p - 1])[token p]
for p >= 1, and the top-k alternatives. Prompts are long enough that chunked prefill (16-token budget) spreads
them over several steps, and a prompt seen before must still be computed (no prefix-cache reuse for it).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import surge
from surge.sampling.params import SamplingParams

K = 5


def _prompts(vocab: int) -> list[list[int]]:
    rng = np.random.default_rng(7)
    return [rng.integers(3, vocab, size=size).tolist() for size in (2, 5, 9, 16, 17, 23, 31, 40)]


def _reference(hf_model, prompt: list[int]) -> np.ndarray:
    with torch.no_grad():
        logits = hf_model(torch.tensor([prompt])).logits[0].float()
    return torch.log_softmax(logits, dim=-1).numpy()


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    checkpoint = tiny_checkpoint("llama")
    engine = surge.Engine.from_pretrained(checkpoint.path, backend="reference", dtype="float32", max_num_seqs=4,
                                          max_model_len=64, max_num_batched_tokens=16, token_buckets=[8, 16],
                                          num_pages=64, page_size=4, progress=False)
    return checkpoint, engine


def test_prompt_logprobs_match_transformers_and_nothing_recompiles(tiny):
    checkpoint, engine = tiny
    prompts = _prompts(checkpoint.hf_config.vocab_size)
    compiles = engine.stats().num_compiles
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=K)
    # Twice: the second time the prompts sit in the prefix cache, and must be computed all the same.
    for outs in (engine.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False),
                 engine.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)):
        for prompt, out in zip(prompts, outs):
            reference = _reference(checkpoint.hf_model, prompt)
            entries = out.prompt_logprobs
            assert len(entries) == len(prompt) and entries[0] is None
            for p in range(1, len(prompt)):
                entry = entries[p]
                assert entry[prompt[p]].logprob == pytest.approx(reference[p - 1, prompt[p]], abs=1e-4)
                expected_rank = int((reference[p - 1] > reference[p - 1, prompt[p]]).sum()) + 1
                assert entry[prompt[p]].rank == expected_rank
                # The top-k alternatives: the k largest log-probs (ids may swap only between near-ties).
                top = sorted((e.rank, e.logprob) for t, e in entry.items() if e.rank <= K)
                want = np.sort(reference[p - 1])[::-1][:K]
                np.testing.assert_allclose([lp for _, lp in top][:K], want, atol=1e-4)
    assert engine.stats().num_compiles == compiles
    assert engine.block_manager.stats().num_used_pages == 0


def test_requests_without_prompt_logprobs_are_unchanged(tiny):
    _, engine = tiny
    prompt = [5, 9, 11, 40, 7, 3, 90, 100]
    plain = engine.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(max_tokens=4, temperature=0),
                            use_tqdm=False)[0]
    asked = engine.generate(prompt_token_ids=[prompt], use_tqdm=False,
                            sampling_params=SamplingParams(max_tokens=4, temperature=0, prompt_logprobs=0))[0]
    assert plain.prompt_logprobs is None
    assert asked.outputs[0].token_ids == plain.outputs[0].token_ids
    assert all(len(e) == 1 for e in asked.prompt_logprobs[1:])  # k=0: the prompt token alone


def test_prompt_logprobs_range_is_checked():
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
