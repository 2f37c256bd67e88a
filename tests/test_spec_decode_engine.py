"""Speculative decoding end to end on a tiny random Llama: the tokens of method=none, pages all returned.

The drafts change how many steps a request takes, never its tokens: at temperature 0 acceptance is
exact greedy, and at temperature > 0 each position is sampled with the request's seed at its output
index (surge.spec_decode.acceptance), so a seeded request gives the same tokens too. The chi-square test
checks the distribution with disjoint seeds, so it tests the accept rule, not the seeding.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import surge
from surge import SamplingParams
from spec_decode_cases import GREEDY, assert_clean, chi_square_p, completions, run_all, tokens_kept_after_aborts


def make_engine(path, method, async_scheduling=False, **overrides):
    options = dict(backend="reference", max_num_seqs=16, max_model_len=256, max_num_batched_tokens=64,
                   token_buckets=[16, 64], num_pages=400, page_size=4, progress=False,
                   async_scheduling=async_scheduling, speculative_method=method,
                   # Proposals independent of timing, so the counters below are too ("-measured" engines
                   # price drafts by step timings: only their tokens are checked).
                   speculative_cost_model="none")
    options.update(overrides)
    return surge.Engine.from_pretrained(path, **options)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def engines(tiny):
    return {"none": make_engine(tiny.path, "none"), "ngram": make_engine(tiny.path, "ngram"),
            "ngram-async": make_engine(tiny.path, "ngram", async_scheduling=True),
            "suffix": make_engine(tiny.path, "suffix"),
            "suffix-async": make_engine(tiny.path, "suffix", async_scheduling=True),
            "ngram-measured-async": make_engine(tiny.path, "ngram", async_scheduling=True,
                                                speculative_cost_model="measured")}


def copy_prompts(n, seed=0, low=4, high=30):
    """Prompts that repeat a random piece: the model's continuation often copies, so drafts get accepted."""
    rng = np.random.default_rng(seed)
    prompts = []
    for _ in range(n):
        piece = rng.integers(3, 320, int(rng.integers(low, high))).tolist()
        prompts.append(piece * 2 + piece[: len(piece) // 2])
    return prompts


def test_stops_and_max_tokens_inside_accepted_runs(engines):
    prompts = copy_prompts(16, seed=1)
    free = engines["none"].generate(prompt_token_ids=prompts, use_tqdm=False,
                                    sampling_params=SamplingParams(max_tokens=40, **GREEDY))
    params = []
    for i, out in enumerate(free):
        tokens, text = out.outputs[0].token_ids, out.outputs[0].text
        kind = i % 4
        if kind == 0:
            params.append(SamplingParams(max_tokens=[1, 3, 7, 22][i // 4], **GREEDY))
        elif kind == 1:
            params.append(SamplingParams(max_tokens=40, stop_token_ids=[tokens[6 + i % 5]], **GREEDY))
        elif kind == 2 and len(text) > 14:
            params.append(SamplingParams(max_tokens=40, stop=[text[9:12]], **GREEDY))
        else:
            params.append(SamplingParams(max_tokens=5 + i, logprobs=2, **GREEDY))
    serial, moved = run_all(engines, prompt_token_ids=prompts, sampling_params=params)
    for name in ("ngram", "ngram-async", "suffix", "suffix-async"):
        assert moved[name]["spec_decode_num_accepted_tokens"] >= 8, moved
    assert [len(o.outputs[0].token_ids) for o in serial][0::4] == [1, 3, 7, 22]
    for out, p in zip(serial, params):
        if p.stop:
            assert p.stop[0] not in out.outputs[0].text and out.outputs[0].finish_reason == "stop"


def test_logprobs_of_speculated_tokens_match(engines):
    prompts = copy_prompts(4, seed=2)
    params = SamplingParams(max_tokens=24, logprobs=3, **GREEDY)
    outs = {name: engines[name].generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
            for name in ("none", "ngram")}
    assert engines["ngram"].stats().spec_decode.num_accepted_tokens > 0
    for a, b in zip(outs["none"], outs["ngram"]):
        ca, cb = a.outputs[0], b.outputs[0]
        assert ca.token_ids == cb.token_ids and len(cb.logprobs) == len(cb.token_ids)
        for la, lb in zip(ca.logprobs, cb.logprobs):
            assert la.keys() == lb.keys()
            for t in la:
                assert abs(la[t].logprob - lb[t].logprob) < 1e-5 and la[t].rank == lb[t].rank
        assert abs(ca.cumulative_logprob - cb.cumulative_logprob) < 1e-4


def test_chunked_prefill_prefix_cache_seeds_and_n(engines):
    long_prompt = copy_prompts(1, seed=3, low=70, high=71)[0]  # ~175 tokens: chunks of the 64 budget
    prompts = [long_prompt, long_prompt] + copy_prompts(3, seed=4)  # the second finds the first's pages
    params = [SamplingParams(max_tokens=30, **GREEDY), SamplingParams(max_tokens=20, **GREEDY),
              SamplingParams(n=3, max_tokens=12, temperature=0.8, seed=11),
              SamplingParams(max_tokens=14, temperature=1.0, top_p=0.9, seed=5),
              SamplingParams(max_tokens=9, temperature=0.7, top_k=20, seed=7, speculate=False)]
    serial, _ = run_all(engines, prompt_token_ids=prompts, sampling_params=params)
    assert engines["ngram"].stats().prefix_cache_hit_tokens > 100


def test_preemptions(tiny):
    pool = {name: make_engine(tiny.path, name.split("-")[0], name.endswith("async"), num_pages=120)
            for name in ("none", "ngram", "ngram-async", "suffix", "suffix-async")}
    prompts = copy_prompts(24, seed=5, low=15, high=25)
    run_all(pool, prompt_token_ids=prompts, sampling_params=SamplingParams(max_tokens=60, **GREEDY))
    assert all(engine.stats().num_preemptions > 0 for engine in pool.values())


def test_aborts_leak_nothing(engines):
    prompts = copy_prompts(40, seed=7)
    to_abort = set(random.Random(0).sample(range(40), 12))
    expected = tokens_kept_after_aborts(engines["none"], prompts, to_abort)
    for name in ("ngram", "ngram-async", "suffix", "suffix-async"):
        assert tokens_kept_after_aborts(engines[name], prompts, to_abort) == expected, name


@pytest.fixture(scope="module")
def peaked(tiny_checkpoint, tmp_path_factory):
    """Larger random weights: sharper next-token distributions (a few dozen likely 3-token starts)."""
    return tiny_checkpoint("llama", str(tmp_path_factory.mktemp("peaked")), initializer_range=1.0)


def test_first_three_tokens_have_the_target_distribution(peaked, monkeypatch):
    """5,000 seeded samples per method at temperature 1, seeds disjoint between the methods; chi-square
    over the joint of the first 3 tokens (cells seen < 10 times pooled). Fixed seeds: the same p every run.

    A random tiny model does not copy its prompt, so prompt lookup would rarely propose; the proposer is
    replaced by a fixed table (after the prompt and a first token t1: the two tokens that most often
    followed t1 under method=none), a deterministic proposer like n-gram lookup that is often right,
    so the accept/resample rule is exercised on most requests.
    """
    import surge.spec_decode.speculator as speculator_module

    num = 5000
    prompt = [17, 40, 99, 5, 61, 17, 40]

    def run(method, seed_base):
        engine = make_engine(peaked.path, method, max_num_seqs=64, max_num_batched_tokens=256,
                             token_buckets=[64, 256], num_pages=800)
        params = [SamplingParams(max_tokens=3, temperature=1.0, seed=seed_base + i, ignore_eos=True)
                  for i in range(num)]
        outs = engine.generate(prompt_token_ids=[prompt] * num, sampling_params=params, use_tqdm=False)
        assert_clean(engine)
        return [tuple(o.outputs[0].token_ids) for o in outs], engine.stats()

    none, _ = run("none", 0)
    table: dict = {}
    for t1, *rest in none:
        table.setdefault(t1, {}).setdefault(tuple(rest), 0)
        table[t1][tuple(rest)] += 1
    best = {t1: max(options, key=options.get) for t1, options in table.items()}

    def propose(token_ids, k, min_n, max_n):
        if len(token_ids) == len(prompt) + 1 and token_ids[-1] in best:
            return list(best[token_ids[-1]][:k])
        return []

    monkeypatch.setattr(speculator_module, "propose_ngram", propose)
    speculated, stats = run("ngram", num)
    assert stats.spec_decode.num_accepted_tokens > num // 4, stats
    p_value = chi_square_p(none, speculated)
    assert p_value > 0.01, p_value


def test_suffix_replays_earlier_outputs_from_its_index(engines):
    """Prompts with no repetition: n-gram lookup finds little, but the second time round the suffix index
    holds the first round's outputs, so nearly every draft is accepted (and the tokens stay none's)."""
    rng = np.random.default_rng(42)
    prompts = [rng.integers(3, 320, 12).tolist() for _ in range(6)]
    params = SamplingParams(max_tokens=24, **GREEDY)
    expected = completions(engines["none"].generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False))
    suffix = engines["suffix"]
    rates = []
    for _ in range(2):
        before = suffix.stats()
        got = completions(suffix.generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False))
        after = suffix.stats()
        assert got == expected
        assert_clean(suffix)
        drafts = after.spec_decode.num_draft_tokens - before.spec_decode.num_draft_tokens
        accepted = after.spec_decode.num_accepted_tokens - before.spec_decode.num_accepted_tokens
        rates.append((accepted, drafts))
    accepted, drafts = rates[1]
    assert drafts >= 6 * 15 and accepted >= 0.9 * drafts, rates
    assert after.spec_decode.suffix.index_sequences >= 12
    assert after.spec_decode.suffix.index_tokens <= suffix.config.engine.speculative.suffix_max_tokens


def _first_three_tokens(path, method, seed_base, prompt, num):
    engine = make_engine(path, method, max_num_seqs=64, max_num_batched_tokens=256, token_buckets=[64, 256],
                         num_pages=800)
    params = [SamplingParams(max_tokens=3, temperature=1.0, seed=seed_base + i, ignore_eos=True)
              for i in range(num)]
    outs = engine.generate(prompt_token_ids=[prompt] * num, sampling_params=params, use_tqdm=False)
    assert_clean(engine)
    return [tuple(o.outputs[0].token_ids) for o in outs], engine.stats()


def test_suffix_first_three_tokens_have_the_target_distribution(peaked):
    """As the n-gram test, with the real suffix proposer: every request has the same prompt, so once the
    first batch finished the index proposes, after the prompt and t1, the continuation most earlier
    requests took (5,000 seeded samples per method, seeds disjoint, fixed: the same p every run)."""
    num = 5000
    prompt = [17, 40, 99, 5, 61, 17, 40]
    none, _ = _first_three_tokens(peaked.path, "none", 0, prompt, num)
    speculated, stats = _first_three_tokens(peaked.path, "suffix", num, prompt, num)
    assert stats.spec_decode.num_accepted_tokens > num // 4, stats
    p_value = chi_square_p(none, speculated)
    assert p_value > 0.01, p_value


# Repeated objects whose keys the grammar forces and whose values the model picks (a code of 6 free
# letters: runs of several sampled tokens in a row): drafts of earlier objects' tokens are often legal
# and right.
ITEMS_SCHEMA = {"type": "array", "minItems": 2, "maxItems": 3, "items": {
    "type": "object", "properties": {"name": {"enum": ["alpha", "beta", "gamma"]},
                                     "code": {"type": "string", "pattern": "^[a-e]{6}$"}},
    "required": ["name", "code"], "additionalProperties": False}}


@pytest.mark.parametrize("fast_forward", [True, False])
def test_json_schema_requests_speculate_and_match_none(tiny, fast_forward):
    import json

    import jsonschema

    pool = {name: make_engine(tiny.path, name.split("-")[0], name.endswith("async"),
                              structured_output_fast_forward=fast_forward)
            for name in ("none", "ngram", "ngram-async", "suffix")}
    # Text prompts (random byte-level ids could leave a partial UTF-8 character before the JSON).
    prompts = [f"item list number {i}: " * (1 + i % 3) for i in range(6)]
    params = [SamplingParams(max_tokens=160, temperature=0.0, structured_outputs={"json": ITEMS_SCHEMA}),
              SamplingParams(max_tokens=160, temperature=0.8, seed=3, structured_outputs={"json": ITEMS_SCHEMA}),
              SamplingParams(max_tokens=30, **GREEDY)] * 2  # unconstrained rows in the same batch
    run_all(pool, prompts=prompts, sampling_params=params)
    # Only the constrained requests: they speculate (drafts verified under the grammar's masks) and stay
    # schema-valid.
    constrained = [p for p in params if p.structured_outputs]
    before = pool["ngram"].stats().to_dict()
    outs, _ = run_all(pool, prompts=prompts[:len(constrained)], sampling_params=constrained)
    after = pool["ngram"].stats().to_dict()
    moved = {k: after[k] - before[k] for k in ("spec_decode_num_draft_tokens", "spec_decode_num_accepted_tokens")}
    assert moved["spec_decode_num_accepted_tokens"] > 0, moved
    for out in outs:
        assert out.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.outputs[0].text), ITEMS_SCHEMA)
