"""Scoring through surge-serve's API: echo + logprobs on /v1/completions, as evaluation harnesses send it.

A tiny random Llama (float32) is served in-process; its prompt tokens' log-probs must equal transformers'
log_softmax of the same checkpoint within 1e-4, first token null, for max_tokens 0 and 1, plain and streamed.
"""

from __future__ import annotations

import numpy as np
import openai
import pytest
import torch
from inprocess_server import serve

import surge

PROMPTS = ["the cat sat on the mat", "hello there", "a", "one two three four five six seven",
           "deterministic scoring of choices", "tea or coffee?", "les élèves étudient", "42 is the answer"]


@pytest.fixture(scope="module")
def served(tiny_checkpoint):
    from transformers import AutoTokenizer

    checkpoint = tiny_checkpoint("llama")
    engine = surge.Engine.from_pretrained(checkpoint.path, dtype="float32", max_num_seqs=4, max_model_len=128,
                                          max_num_batched_tokens=16, token_buckets=[8, 16], num_pages=64,
                                          page_size=4, progress=False)
    with serve(engine, responses_store="memory") as served:
        client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused", max_retries=0)
        yield checkpoint, AutoTokenizer.from_pretrained(checkpoint.path), client, engine


def _reference(hf_model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return torch.log_softmax(hf_model(torch.tensor([ids])).logits[0].float(), dim=-1).numpy()


@pytest.mark.parametrize("max_tokens", [0, 1])
def test_echo_logprobs_are_the_prompts_log_softmax(served, max_tokens):
    checkpoint, tokenizer, client, engine = served
    compiles = engine.stats().num_compiles
    reply = client.completions.create(model="default", prompt=PROMPTS, echo=True, logprobs=5, max_tokens=max_tokens,
                                      temperature=0)
    assert len(reply.choices) == len(PROMPTS)
    for choice, prompt in zip(sorted(reply.choices, key=lambda c: c.index), PROMPTS):
        ids = tokenizer.encode(prompt, add_special_tokens=True)
        reference = _reference(checkpoint.hf_model, ids)
        lp = choice.logprobs
        assert choice.text.startswith(prompt) and (choice.text == prompt) == (max_tokens == 0)
        assert len(lp.tokens) == len(ids) + max_tokens
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        expected = [float(reference[p - 1, ids[p]]) for p in range(1, len(ids))]
        np.testing.assert_allclose(lp.token_logprobs[1:len(ids)], expected, atol=1e-4)
        for p in range(1, len(ids)):
            # Keyed by token text, so byte tokens that print alike ("\ufffd") share one key.
            top = sorted(lp.top_logprobs[p].values(), reverse=True)
            best = np.sort(reference[p - 1])[::-1][:5]
            assert 1 <= len(top) <= 5 and top[0] == pytest.approx(float(best[0]), abs=1e-4)
            assert all(np.abs(best - value).min() < 1e-4 for value in top)
        if prompt.isascii():  # a multi-byte character spans byte tokens that do not print alone
            assert "".join(lp.tokens[:len(ids)]) == prompt
    assert reply.usage.completion_tokens == len(PROMPTS) * max_tokens
    assert engine.stats().num_compiles == compiles


def test_streamed_echo_carries_the_same_prompt_logprobs(served):
    _, _, client, _ = served
    plain = client.completions.create(model="default", prompt=PROMPTS[0], echo=True, logprobs=2, max_tokens=0)
    chunks = list(client.completions.create(model="default", prompt=PROMPTS[0], echo=True, logprobs=2,
                                            max_tokens=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    streamed = [x for c in chunks if c.choices and c.choices[0].logprobs for x in c.choices[0].logprobs.token_logprobs]
    assert text == plain.choices[0].text == PROMPTS[0]
    assert streamed == plain.choices[0].logprobs.token_logprobs
    assert chunks[-1].choices[0].finish_reason == "length"


def test_vllm_prompt_logprobs_extra_body(served):
    checkpoint, tokenizer, client, _ = served
    reply = client.completions.create(model="default", prompt=PROMPTS[1], max_tokens=1, temperature=0,
                                      extra_body={"prompt_logprobs": 1})
    entries = reply.choices[0].model_extra["prompt_logprobs"]
    ids = tokenizer.encode(PROMPTS[1])
    reference = _reference(checkpoint.hf_model, ids)
    assert entries[0] is None and len(entries) == len(ids)
    for p in range(1, len(ids)):
        assert entries[p][str(ids[p])]["logprob"] == pytest.approx(float(reference[p - 1, ids[p]]), abs=1e-4)


def test_max_tokens_zero_needs_echo(served):
    _, _, client, _ = served
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model="default", prompt="x", max_tokens=0)


def test_chat_prompt_logprobs_score_the_rendered_prompt(served):
    checkpoint, tokenizer, client, _ = served
    messages = [{"role": "user", "content": "hello there"}]
    reply = client.chat.completions.create(model="default", messages=messages, max_tokens=1, temperature=0,
                                           extra_body={"prompt_logprobs": 0})
    entries = reply.model_extra["prompt_logprobs"]
    ids = tokenizer.encode(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True),
                           add_special_tokens=False)
    reference = _reference(checkpoint.hf_model, ids)
    assert entries[0] is None and len(entries) == len(ids) == reply.usage.prompt_tokens
    got = [entries[p][str(ids[p])]["logprob"] for p in range(1, len(ids))]
    np.testing.assert_allclose(got, [reference[p - 1, ids[p]] for p in range(1, len(ids))], atol=1e-4)
