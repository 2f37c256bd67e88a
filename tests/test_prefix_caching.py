"""Prefix caching end to end, tenant isolation by salt, and sliding-window pages given back."""

from __future__ import annotations

import numpy as np
import pytest

import surge
from surge import SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_engine(path, **overrides):
    options = dict(backend="reference", max_num_seqs=8, max_model_len=256, max_num_batched_tokens=64,
                   token_buckets=[16, 64], num_pages=256, page_size=4, progress=False)
    options.update(overrides)
    return surge.Engine.from_pretrained(path, **options)


def shared_prefix_prompts(n, prefix_len, suffix_len, seed=0):
    rng = np.random.default_rng(seed)
    prefix = rng.integers(3, 320, prefix_len).tolist()
    return [prefix + rng.integers(3, 320, suffix_len).tolist() for _ in range(n)]


def assert_pages_free_or_cached(engine):
    stats = engine.stats()
    assert stats.pages.num_used_pages == 0
    assert stats.pages.num_free_pages == stats.pages.num_total_pages
    engine.block_manager.check_integrity()


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def cached(tiny):
    return make_engine(tiny.path, enable_prefix_caching=True)


@pytest.fixture(scope="module")
def uncached(tiny):
    return make_engine(tiny.path, enable_prefix_caching=False)


def test_outputs_identical_with_and_without_caching_and_hits_reported(cached, uncached):
    prompts = shared_prefix_prompts(10, prefix_len=40, suffix_len=7)
    params = SamplingParams(max_tokens=10, **GREEDY)
    cached.reset_prefix_cache()
    first = cached.generate(prompt_token_ids=prompts[:1], sampling_params=params)
    rest = cached.generate(prompt_token_ids=prompts[1:], sampling_params=params)
    with_cache = [o.outputs[0].token_ids for o in first + rest]
    without = [o.outputs[0].token_ids for o in uncached.generate(prompt_token_ids=prompts, sampling_params=params)]
    assert with_cache == without
    assert first[0].metrics.num_cached_tokens == 0
    # 40 shared tokens = 10 full pages of 4.
    assert all(o.metrics.num_cached_tokens == 40 for o in rest)
    assert cached.stats().prefix_cache_hit_rate > 0.5
    assert uncached.stats().prefix_cache_hit_rate == 0.0
    assert_pages_free_or_cached(cached)


def test_whole_prompt_cached_still_computes_last_token(cached, uncached):
    prompt = shared_prefix_prompts(1, prefix_len=32, suffix_len=0, seed=1)[0]  # exactly 8 full pages
    params = SamplingParams(max_tokens=6, **GREEDY)
    cached.generate(prompt_token_ids=[prompt], sampling_params=params)
    again = cached.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    assert again.metrics.num_cached_tokens == 28  # the last page is recomputed for the last token's logits
    expected = uncached.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    assert again.outputs[0].token_ids == expected.outputs[0].token_ids


def test_different_salts_never_share_pages(cached):
    prompt = shared_prefix_prompts(1, prefix_len=40, suffix_len=3, seed=2)[0]
    params = SamplingParams(max_tokens=2, **GREEDY)
    cached.reset_prefix_cache()
    rid_a = cached.add_request(prompt_token_ids=prompt, sampling_params=SamplingParams(max_tokens=30, **GREEDY),
                               cache_salt="tenant-a")
    for _ in range(3):
        cached.step()
    pages_a = set(cached.block_manager.pages(rid_a))
    rid_b = cached.add_request(prompt_token_ids=prompt, sampling_params=params, cache_salt="tenant-b")
    cached.step()
    request_b = cached.scheduler.requests[rid_b]
    assert request_b.num_cached_tokens == 0
    assert not pages_a & set(cached.block_manager.pages(rid_b))
    rid_a2 = cached.add_request(prompt_token_ids=prompt, sampling_params=params, cache_salt="tenant-a")
    cached.step()
    assert cached.scheduler.requests[rid_a2].num_cached_tokens == 40
    cached.abort(rid_a)
    while cached.has_unfinished_requests():
        cached.step()
    assert_pages_free_or_cached(cached)


def test_chunked_prefill_and_preemption_with_caching(tiny):
    small = make_engine(tiny.path, num_pages=40, max_model_len=64, max_num_batched_tokens=16, token_buckets=[16])
    prompts = shared_prefix_prompts(8, prefix_len=24, suffix_len=9, seed=3)
    params = SamplingParams(max_tokens=12, **GREEDY)
    outs = small.generate(prompt_token_ids=prompts, sampling_params=params)
    reference = make_engine(tiny.path, enable_prefix_caching=False).generate(prompt_token_ids=prompts,
                                                                             sampling_params=params)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in reference]
    assert small.stats().num_preemptions > 0
    assert_pages_free_or_cached(small)


def test_n_children_share_prompt_pages(cached):
    prompt = shared_prefix_prompts(1, prefix_len=40, suffix_len=1, seed=4)[0]
    cached.reset_prefix_cache()
    hits_before = cached.stats().prefix_cache_hit_tokens
    out = cached.generate(prompt_token_ids=[prompt], sampling_params=SamplingParams(n=3, max_tokens=4, seed=1))[0]
    assert len(out.outputs) == 3 and all(len(c.token_ids) == 4 for c in out.outputs)
    # The 2nd and 3rd child find the first child's 10 full prompt pages (40 tokens) in the cache.
    assert cached.stats().prefix_cache_hit_tokens - hits_before == 2 * 40
    assert_pages_free_or_cached(cached)


def test_reset_prefix_cache_drops_cached_pages(cached):
    cached.generate(prompt_token_ids=shared_prefix_prompts(1, 40, 1, seed=5),
                    sampling_params=SamplingParams(max_tokens=1, **GREEDY))
    assert cached.stats().pages.num_cached_pages > 0
    assert cached.reset_prefix_cache()
    assert cached.stats().pages.num_cached_pages == 0


def test_sliding_window_pages_are_given_back(tiny_checkpoint):
    import torch

    mistral = tiny_checkpoint("mistral", sliding_window=8)
    engine = make_engine(mistral.path, page_size=4)
    prompt = shared_prefix_prompts(1, prefix_len=10, suffix_len=0, seed=6)[0]
    rid = engine.add_request(prompt_token_ids=prompt, sampling_params=SamplingParams(max_tokens=60, **GREEDY))
    most_held = 0
    tokens = []
    while engine.has_unfinished_requests():
        for out in engine.step():
            tokens = out.outputs[0].token_ids
        held = [p for p in engine.block_manager.pages(rid) if p] if rid in engine.scheduler.requests else []
        most_held = max(most_held, len(held))
    assert most_held <= 8 // 4 + 2  # the window's pages, the page being written, and one straddling page
    with torch.inference_mode():
        expected = mistral.hf_model.generate(torch.tensor([prompt]), max_new_tokens=60, min_new_tokens=60,
                                             do_sample=False, pad_token_id=0, eos_token_id=None)
    assert tokens == expected[0, len(prompt):].tolist()
    assert_pages_free_or_cached(engine)


@pytest.mark.slow
def test_real_model_shared_600_token_prefix(smollm2_gguf):
    options = dict(max_num_seqs=20, max_model_len=1024, max_num_batched_tokens=512,
                   token_buckets=[32, 512], num_pages=1024, page_size=16, progress=False)
    on = surge.Engine.from_pretrained(smollm2_gguf, enable_prefix_caching=True, **options)
    prompts = shared_prefix_prompts(20, prefix_len=600, suffix_len=12, seed=7)
    prompts = [[t + 1000 for t in p] for p in prompts]
    params = SamplingParams(max_tokens=8, **GREEDY)
    first = on.generate(prompt_token_ids=prompts[:1], sampling_params=params)
    rest = on.generate(prompt_token_ids=prompts[1:], sampling_params=params)
    assert all(o.metrics.num_cached_tokens >= 592 for o in rest)
    del on
    off = surge.Engine.from_pretrained(smollm2_gguf, enable_prefix_caching=False, **options)
    expected = off.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [o.outputs[0].token_ids for o in first + rest] == [o.outputs[0].token_ids for o in expected]


def test_prefix_cache_capacity_bounds_cached_pages_while_a_shared_prefix_keeps_hitting(tiny):
    from surge.esurge import CacheConfig

    # 100 usable pages of 4 tokens; at most 30 may stay cached once no request holds them.
    cache_config = CacheConfig(enable_prefix_caching=True, prefix_cache_capacity=0.3, num_pages=101, page_size=4)
    engine = surge.eSurge(model=tiny.path, cache_config=cache_config, max_model_len=256, max_num_seqs=4,
                          max_num_batched_tokens=64, token_buckets=[16, 64], backend="reference", progress=False)
    assert engine.stats().pages.max_cached_pages == 30
    rng = np.random.default_rng(5)
    shared = rng.integers(3, 320, 16).tolist()  # 4 full pages every prompt starts with
    params = SamplingParams(max_tokens=4, **GREEDY)
    peak, hits = 0, []
    for i in range(12):  # each prompt brings 10 pages of its own: 120 distinct pages in all
        prompt = shared + rng.integers(3, 320, 40).tolist()
        out = engine.generate(prompt_token_ids=[prompt], sampling_params=params, use_tqdm=False)[0]
        hits.append(out.metrics.num_cached_tokens)
        stats = engine.stats()
        peak = max(peak, stats.pages.num_cached_pages)
        assert stats.pages.num_cached_pages <= 30
        assert_pages_free_or_cached(engine)
    assert peak == 30 and engine.stats().pages.num_capacity_evictions > 0
    assert hits[0] == 0 and hits[1:] == [16] * 11  # the shared prefix is never the oldest cached page
    assert engine.stats().prefix_cache_hit_rate > 0


def test_prefix_cache_capacity_is_a_validated_config_key():
    from surge.config import ConfigError, make_config

    assert make_config(prefix_cache_capacity=0.3).cache.prefix_cache_capacity == 0.3
    assert make_config().cache.prefix_cache_capacity == 1.0
    with pytest.raises(ConfigError, match="cache.prefix_cache_capacity"):
        make_config(**{"cache.prefix_cache_capacity": 1.5})


def test_the_hit_rate_is_prompt_tokens_served_over_looked_up_once_per_request(cached):
    """One prefix-cache hit rate with one meaning: tokens served / prompt tokens looked up at admission."""
    assert cached.reset_prefix_cache()
    before = cached.stats()
    prompts = shared_prefix_prompts(4, prefix_len=40, suffix_len=7, seed=5)
    cached.generate(prompt_token_ids=prompts[:1], sampling_params=SamplingParams(max_tokens=2, **GREEDY))
    cached.generate(prompt_token_ids=prompts[1:], sampling_params=SamplingParams(max_tokens=2, **GREEDY))
    after = cached.stats()
    queried = after.prefix_cache_queried_tokens - before.prefix_cache_queried_tokens
    hits = after.prefix_cache_hit_tokens - before.prefix_cache_hit_tokens
    assert (queried, hits) == (4 * 47, 3 * 40)
    assert after.prefix_cache_hit_rate == after.prefix_cache_hit_tokens / after.prefix_cache_queried_tokens
