"""Speculative decoding with method=draft_model: a tiny random draft proposing for a tiny random target.

The draft proposes its greedy tokens (a point mass), so acceptance keeps the target's tokens at
temperature 0 and its distribution at temperature > 0; every test compares with method=none. Two
drafts: the target itself (its argmax is the target's greedy token, so at temperature 0 every draft
is accepted) and different random models with the same vocabulary: `near` (the target's weights plus
10% noise: about half its drafts accepted, every accepted length seen) and `far` (a 1-layer Llama from
another seed: almost none). After every run the target's pages and the draft's page pool are all free.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import surge
from surge import SamplingParams
from surge.config import ConfigError
from spec_decode_cases import GREEDY, assert_clean, chi_square_p, completions, run_all, tokens_kept_after_aborts


def make_engine(path, draft=None, async_scheduling=False, **overrides):
    options = dict(backend="reference", max_num_seqs=16, max_model_len=256, max_num_batched_tokens=64,
                   token_buckets=[16, 64], num_pages=400, page_size=4, progress=False,
                   async_scheduling=async_scheduling, speculative_method="draft_model" if draft else "none",
                   speculative_cost_model="none")  # proposals independent of timing, so the counters are too
    if draft:
        options["draft_model"] = draft
    options.update(overrides)
    return surge.Engine.from_pretrained(path, **options)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def near_draft(tiny, tmp_path_factory):
    """The target's weights, each tensor plus Gaussian noise of 10% of its spread."""
    import copy

    import torch

    from conftest import make_tiny_tokenizer

    model = copy.deepcopy(tiny.hf_model)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in model.parameters():
            if param.numel() > 1 and float(param.std()) > 0:
                param.add_(torch.randn(param.shape, generator=generator) * param.std() * 0.1)
    path = str(tmp_path_factory.mktemp("near-draft"))
    model.save_pretrained(path)
    make_tiny_tokenizer(tiny.hf_config.vocab_size).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def far_draft(tiny_checkpoint, tmp_path_factory):
    return tiny_checkpoint("llama", str(tmp_path_factory.mktemp("far-draft")), seed=1, num_hidden_layers=1).path


@pytest.fixture(scope="module")
def engines(tiny, near_draft):
    return {"none": make_engine(tiny.path), "self": make_engine(tiny.path, tiny.path),
            "near": make_engine(tiny.path, near_draft),
            "near-async": make_engine(tiny.path, near_draft, async_scheduling=True)}


def prompts_of(n, seed=0, low=4, high=30):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 320, int(rng.integers(low, high))).tolist() for _ in range(n)]


def test_config_needs_a_draft_and_rejects_a_stray_one():
    with pytest.raises(ConfigError, match="engine.speculative.draft_model"):
        surge.make_config(speculative_method="draft_model")
    with pytest.raises(ConfigError, match="only used with engine.speculative.method=draft_model"):
        surge.make_config(speculative_method="ngram", draft_model="smollm2-135m-instruct")
    with pytest.raises(ConfigError, match="engine.speculative.draft_num_pages"):
        surge.make_config(speculative_method="draft_model", draft_model="x", draft_num_pages=1)
    cfg = surge.make_config(speculative_method="draft_model", draft_model="some/dir", draft_num_pages=9)
    assert cfg.engine.speculative.draft_model == "some/dir" and cfg.engine.speculative.draft_num_pages == 9


def test_a_draft_with_another_vocabulary_fails_at_start_up(tiny, tiny_checkpoint, tmp_path):
    wide = tiny_checkpoint("llama", str(tmp_path / "wide"), vocab_size=352)
    with pytest.raises(ValueError, match=r"engine.speculative.draft_model=.*model.name=.*352 tokens.*320"):
        make_engine(tiny.path, wide.path)


def test_a_tokenizer_that_maps_tokens_differently_is_refused():
    from types import SimpleNamespace

    from surge.spec_decode.draft_model import DraftMismatch, check_same_vocabulary

    class Tok:
        def __init__(self, vocab):
            self.vocab = vocab

        def __len__(self):
            return len(self.vocab)

        def get_vocab(self):
            return dict(self.vocab)

    arch = SimpleNamespace(vocab_size=3)
    same = {"a": 0, "b": 1, "c": 2}
    check_same_vocabulary("d", "t", arch, arch, Tok(same), Tok(dict(same)))
    with pytest.raises(DraftMismatch, match=r"draft_model='d' vs model.name='t'.*2 tokens, the target's 3"):
        check_same_vocabulary("d", "t", arch, arch, Tok({"a": 0, "b": 1}), Tok(same))
    with pytest.raises(DraftMismatch, match=r"3 tokens each\) map 2 tokens differently \(first 'b'"):
        check_same_vocabulary("d", "t", arch, arch, Tok({"a": 0, "b": 2, "c": 1}), Tok(same))


def test_the_draft_bytes_come_out_of_the_target_kv_budget(tiny):
    """On the CPU RAM budget the target's pool is sized after the draft's weights and pool are placed."""
    plain = make_engine(tiny.path, num_pages=None, cpu_memory_gb=0.5)
    drafted = make_engine(tiny.path, tiny.path, num_pages=None, cpu_memory_gb=0.5, draft_num_pages=50)
    draft = drafted.scheduler.speculator.draft
    assert draft.block_manager.num_total_pages == 49
    share = plain.config.cache.hbm_utilization
    assert plain.kv_plan.budget_bytes - drafted.kv_plan.budget_bytes == pytest.approx(share * draft.num_bytes, abs=2)


def test_the_target_as_its_own_draft_is_always_accepted(engines):
    """Greedy: the draft's argmax is the target's token at every position, so every draft is accepted."""
    prompts = prompts_of(6, seed=11)
    compiles = engines["self"].stats().num_compiles
    _, moved = run_all({k: engines[k] for k in ("none", "self")}, prompt_token_ids=prompts,
                       sampling_params=SamplingParams(max_tokens=21, **GREEDY))
    drafts, accepted = moved["self"]["spec_decode_num_draft_tokens"], moved["self"]["spec_decode_num_accepted_tokens"]
    # 6 requests x 20 tokens after the first: verifications of 4 drafts + 1 token cover them in 4 steps each
    # (a few drafts fewer where the step's token budget cuts a proposal).
    assert drafts >= 6 * 15 and accepted == drafts, moved
    # One draft call per step serves every proposing request (batched), not one per request.
    assert moved["self"]["spec_decode_draft_num_calls"] <= 8, moved
    # The draft's buckets were compiled at start-up: serving compiles nothing.
    assert engines["self"].stats().num_compiles == compiles
    assert engines["self"].scheduler.speculator.draft.num_compiled_buckets == 2


def test_stops_and_max_tokens_inside_accepted_runs(engines):
    prompts = prompts_of(16, seed=1)
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
    assert moved["self"]["spec_decode_num_accepted_tokens"] >= 100, moved
    for name in ("near", "near-async"):  # rejections at every depth: runs cut short, draft state rolled back
        assert moved[name]["spec_decode_num_accepted_tokens"] >= 40, moved
        assert all(count > 0 for count in moved[name]["lengths"]), moved
    assert [len(o.outputs[0].token_ids) for o in serial][0::4] == [1, 3, 7, 22]
    for out, p in zip(serial, params):
        if p.stop:
            assert p.stop[0] not in out.outputs[0].text and out.outputs[0].finish_reason == "stop"


def test_logprobs_of_speculated_tokens_match(engines):
    prompts = prompts_of(4, seed=2)
    params = SamplingParams(max_tokens=24, logprobs=3, **GREEDY)
    outs = {name: engines[name].generate(prompt_token_ids=prompts, sampling_params=params, use_tqdm=False)
            for name in ("none", "self", "near")}
    assert engines["self"].stats().spec_decode.num_accepted_tokens > 0
    for name in ("self", "near"):
        for a, b in zip(outs["none"], outs[name]):
            ca, cb = a.outputs[0], b.outputs[0]
            assert ca.token_ids == cb.token_ids and len(cb.logprobs) == len(cb.token_ids)
            for la, lb in zip(ca.logprobs, cb.logprobs):
                assert la.keys() == lb.keys()
                for t in la:
                    assert abs(la[t].logprob - lb[t].logprob) < 1e-5 and la[t].rank == lb[t].rank
            assert abs(ca.cumulative_logprob - cb.cumulative_logprob) < 1e-4


def test_chunked_prefill_prefix_cache_seeds_and_n(engines):
    base = prompts_of(1, seed=3, low=170, high=171)[0]  # 170 tokens: chunks of the 64 budget, for both models
    prompts = [base, base] + prompts_of(3, seed=4)  # the second finds the first's pages in the target's cache
    params = [SamplingParams(max_tokens=30, **GREEDY), SamplingParams(max_tokens=20, **GREEDY),
              SamplingParams(n=3, max_tokens=12, temperature=0.8, seed=11),
              SamplingParams(max_tokens=14, temperature=1.0, top_p=0.9, seed=5),
              SamplingParams(max_tokens=9, temperature=0.7, top_k=20, seed=7, speculate=False)]
    _, moved = run_all(engines, prompt_token_ids=prompts, sampling_params=params)
    assert engines["self"].stats().prefix_cache_hit_tokens > 100
    assert moved["self"]["spec_decode_num_accepted_tokens"] > 30, moved
    assert moved["near"]["spec_decode_num_accepted_tokens"] > 0, moved


def test_preemptions(tiny, near_draft, far_draft):
    pool = {"none": make_engine(tiny.path, num_pages=120),
            "far": make_engine(tiny.path, far_draft, num_pages=120),
            "near": make_engine(tiny.path, near_draft, num_pages=120),
            # A draft pool smaller than the target's: requests it cannot hold propose nothing meanwhile.
            "self-async": make_engine(tiny.path, tiny.path, async_scheduling=True, num_pages=120,
                                      draft_num_pages=60)}
    prompts = prompts_of(24, seed=5, low=15, high=25)
    _, moved = run_all(pool, prompt_token_ids=prompts, sampling_params=SamplingParams(max_tokens=60, **GREEDY))
    assert all(engine.stats().num_preemptions > 0 for engine in pool.values())
    assert moved["self-async"]["spec_decode_num_accepted_tokens"] > 100, moved


def test_aborts_leak_nothing(engines):
    prompts = prompts_of(40, seed=7)
    to_abort = set(random.Random(0).sample(range(40), 12))
    expected = tokens_kept_after_aborts(engines["none"], prompts, to_abort)
    for name in ("self", "near", "near-async"):
        assert tokens_kept_after_aborts(engines[name], prompts, to_abort) == expected, name


@pytest.fixture(scope="module")
def peaked(tiny_checkpoint, tmp_path_factory):
    """Larger random weights: sharper next-token distributions (a few dozen likely 3-token starts)."""
    return tiny_checkpoint("llama", str(tmp_path_factory.mktemp("peaked")), initializer_range=1.0)


def test_first_three_tokens_have_the_target_distribution(peaked):
    """5,000 seeded samples per method at temperature 1, seeds disjoint between the methods; chi-square
    over the joint of the first 3 tokens (cells seen < 10 times pooled). Fixed seeds: the same p every run.
    The draft is the target itself: its greedy tokens are the target's most likely ones, often sampled, so
    the accept/resample rule runs on most requests and accepts often."""
    num = 5000
    prompt = [17, 40, 99, 5, 61, 17, 40]

    def run(draft, seed_base):
        engine = make_engine(peaked.path, draft, max_num_seqs=64, max_num_batched_tokens=256,
                             token_buckets=[64, 256], num_pages=800)
        params = [SamplingParams(max_tokens=3, temperature=1.0, seed=seed_base + i, ignore_eos=True)
                  for i in range(num)]
        outs = engine.generate(prompt_token_ids=[prompt] * num, sampling_params=params, use_tqdm=False)
        assert_clean(engine)
        return [tuple(o.outputs[0].token_ids) for o in outs], engine.stats()

    none, _ = run(None, 0)
    speculated, stats = run(peaked.path, num)
    assert stats.spec_decode.num_accepted_tokens > num // 4, stats
    p_value = chi_square_p(none, speculated)
    print(f"draft_model chi-square: p = {p_value:.3f}; {stats}")
    assert p_value > 0.01, p_value


@pytest.mark.slow
def test_smollm2_as_its_own_draft(smollm2_gguf):
    """The embedded SmolLM2 (GGUF, its own tokenizer checked against itself) proposing for itself."""
    options = dict(max_num_seqs=4, max_model_len=256, max_num_batched_tokens=64, token_buckets=[16, 64],
                   num_pages=100, progress=False, async_scheduling=False, speculative_cost_model="none")
    prompts = ["The capital of France is", "def fibonacci(n):", "List three fruits:", "Water boils at"]
    params = SamplingParams(max_tokens=24, **GREEDY)
    none = surge.Engine.from_pretrained(smollm2_gguf, **options).generate(prompts, params, use_tqdm=False)
    engine = surge.Engine.from_pretrained(smollm2_gguf, speculative_method="draft_model",
                                          draft_model="smollm2-135m-instruct", **options)
    speculated = engine.generate(prompts, params, use_tqdm=False)
    assert completions(speculated) == completions(none)
    stats = engine.stats()
    assert stats.spec_decode.acceptance_rate > 0.9 and stats.spec_decode.num_draft_tokens >= 4 * 16, stats
    assert_clean(engine)


# Repeated objects: forced keys, a chosen name and a code of 6 free letters (as in test_spec_decode_engine).
ITEMS_SCHEMA = {"type": "array", "minItems": 2, "maxItems": 3, "items": {
    "type": "object", "properties": {"name": {"enum": ["alpha", "beta", "gamma"]},
                                     "code": {"type": "string", "pattern": "^[a-e]{6}$"}},
    "required": ["name", "code"], "additionalProperties": False}}


def test_json_schema_requests_with_draft_model_match_none(tiny, near_draft):
    """Draft-model drafts for a constrained request are cut by its grammar and what is left is verified
    under its masks (fast-forward off, so every step is a decode the draft proposes for). The draft does
    not see the grammar, so a random draft's tokens are nearly always cut at once: the test checks that
    the draft ran and that the tokens stay none's and schema-valid."""
    import json

    import jsonschema

    pool = {"none": make_engine(tiny.path, structured_output_fast_forward=False),
            "near": make_engine(tiny.path, near_draft, structured_output_fast_forward=False)}
    prompts = [f"item list number {i}: " * (1 + i % 3) for i in range(4)]
    params = [SamplingParams(max_tokens=160, temperature=0.0, structured_outputs={"json": ITEMS_SCHEMA}),
              SamplingParams(max_tokens=160, temperature=0.8, seed=3, structured_outputs={"json": ITEMS_SCHEMA})] * 2
    outs, moved = run_all(pool, prompts=prompts, sampling_params=params)
    assert moved["near"]["spec_decode_draft_num_calls"] > 0, moved
    for out in outs:
        assert out.outputs[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.outputs[0].text), ITEMS_SCHEMA)
