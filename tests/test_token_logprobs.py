"""TokenLogprobs, the one shape of log-probs: read from the sampler's arrays, carried by the engine, JSON at the server.

The engine test runs a tiny checkpoint greedily with logprobs and prompt_logprobs and checks that what the
engine hands out is TokenLogprobs (the runner's, with texts filled in) and that the server's OpenAI and vLLM
JSON built from them carries exactly their values.
"""

from __future__ import annotations

import numpy as np
import pytest

import surge
from surge.engine.outputs import Logprob, TokenLogprobs
from surge.sampling.logprobs import read_rows
from surge.sampling.params import SamplingParams
from surge.sampling.sampler import SamplerOutput
from surge.server.logprobs import chat_logprobs, completion_logprobs, vllm_prompt_logprobs

PROMPT = [5, 9, 17, 33, 2, 8, 41]


def test_reads_as_vllms_dict_of_logprobs():
    entry = TokenLogprobs(7, -0.5, 2, ((3, -0.1), (7, -0.5), (9, -2.0)), texts=("a", "b", "a", "c"))
    assert list(entry) == [7, 3, 9] and len(entry) == 3 and 7 in entry and 4 not in entry
    assert entry[7] == Logprob(-0.5, 2, "a")  # the chosen token keeps its own rank
    assert entry[3] == Logprob(-0.1, 1, "b") and entry[9] == Logprob(-2.0, 3, "c")
    assert dict(entry) == {7: Logprob(-0.5, 2, "a"), 3: Logprob(-0.1, 1, "b"), 9: Logprob(-2.0, 3, "c")}
    with pytest.raises(KeyError):
        entry[4]
    bare = TokenLogprobs(7, -0.5, 2)
    assert bare[7].decoded_token is None and bare.text() is None and list(bare.top_texts()) == []


def test_read_rows_keeps_the_asked_number_of_alternatives():
    arrays = SamplerOutput(token_ids=np.array([4, 6, 1], np.int32), logprobs=np.array([-1.0, -0.25, -3.0], np.float32),
                           ranks=np.array([3, 1, 9], np.int32), top_ids=np.array([[1, 2, 4], [6, 0, 5], [0, 2, 3]], np.int32),
                           top_logprobs=np.array([[-0.1, -0.5, -1.0], [-0.25, -2.0, -4.0], [-0.5, -1.5, -2.5]],
                                                 np.float32))
    first, last = read_rows(arrays, [0, 2], 2)
    assert first == TokenLogprobs(4, -1.0, 3, ((1, -0.10000000149011612), (2, -0.5)))
    assert last.token_id == 1 and last.rank == 9 and [i for i, _ in last.top] == [0, 2]
    assert all(type(v) is float for v in (first.logprob, *[lp for _, lp in first.top]))
    assert read_rows(arrays, [1], 0) == [TokenLogprobs(6, -0.25, 1, ())]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return surge.Engine.from_pretrained(tiny_checkpoint("llama").path, backend="reference", dtype="float32",
                                        max_num_seqs=4, max_model_len=64, max_num_batched_tokens=16,
                                        token_buckets=[8, 16], num_pages=64, page_size=4, progress=False)


def test_engine_outputs_are_token_logprobs_and_the_server_json_carries_their_values(engine):
    params = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True, logprobs=2, prompt_logprobs=1)
    out = engine.generate(prompt_token_ids=[PROMPT], sampling_params=params)[0]
    completion = out.outputs[0]
    entries = list(completion.logprobs)
    assert len(entries) == 4 and all(type(e) is TokenLogprobs for e in entries)
    assert [e.token_id for e in entries] == list(completion.token_ids)
    for e in entries:  # greedy: the sampled token is the most likely one
        assert e.rank == 1 and len(e.top) == 2 and e.top[0][0] == e.token_id and e.logprob <= 0
        assert e.texts is not None and len(e.texts) == 3
    assert completion.cumulative_logprob == pytest.approx(sum(e.logprob for e in entries))

    prompt_entries = out.prompt_logprobs
    assert len(prompt_entries) == len(PROMPT) and prompt_entries[0] is None
    assert all(type(e) is TokenLogprobs and e.token_id == t and len(e.top) == 1 and e.texts is not None
               for e, t in zip(prompt_entries[1:], PROMPT[1:]))

    chat = chat_logprobs(entries, 2).model_dump()["content"]
    assert len(chat) == 4
    for e, item in zip(entries, chat):
        assert set(item) == {"token", "logprob", "bytes", "top_logprobs"}
        assert (item["token"], item["logprob"], item["bytes"]) == (e.texts[0], e.logprob, list(e.texts[0].encode()))
        assert [(t["token"], t["logprob"], t["bytes"]) for t in item["top_logprobs"]] == \
            [(text, lp, list(text.encode())) for (_, lp), text in zip(e.top, e.texts[1:])]

    legacy = completion_logprobs(entries, 2, start_offset=3).model_dump()
    assert legacy["tokens"] == [e.texts[0] for e in entries]
    assert legacy["token_logprobs"] == [e.logprob for e in entries]
    assert legacy["text_offset"] == list(3 + np.cumsum([0] + [len(e.texts[0]) for e in entries[:-1]]))
    for e, top in zip(entries, legacy["top_logprobs"]):
        assert top == {text: lp for (_, lp), text in reversed(list(zip(e.top, e.texts[1:])))}

    vllm = vllm_prompt_logprobs(prompt_entries)
    assert vllm[0] is None
    for p in range(1, len(PROMPT)):
        e = prompt_entries[p]
        assert vllm[p][str(PROMPT[p])] == {"logprob": e.logprob, "rank": e.rank, "decoded_token": e.texts[0]}
        assert set(vllm[p]) == {str(t) for t in e}
