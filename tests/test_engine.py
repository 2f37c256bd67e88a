"""Engine end to end on a tiny random Llama: batching, preemption, aborts, chunked prefill, compiles, seeds, stops."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

import surge
from surge import SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_engine(path, **overrides):
    options = dict(backend="reference", max_num_seqs=16, max_model_len=256, max_num_batched_tokens=64,
                   token_buckets=[16, 64], num_pages=256, page_size=4, progress=False)
    options.update(overrides)
    return surge.Engine.from_pretrained(path, **options)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def engine(tiny):
    return make_engine(tiny.path)


def prompts_of(n, seed=0, low=3, high=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 320, int(rng.integers(low, high))).tolist() for _ in range(n)]


def hf_greedy(hf_model, prompt, num_tokens):
    with torch.inference_mode():
        out = hf_model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                max_new_tokens=num_tokens, min_new_tokens=num_tokens, do_sample=False,
                                pad_token_id=0, eos_token_id=None)
    return out[0, len(prompt):].tolist()


def assert_all_pages_returned(engine):
    stats = engine.stats()
    assert stats.pages.num_used_pages == 0, stats
    assert stats.num_running == 0 and stats.num_waiting == 0
    engine.block_manager.check_integrity()


def test_sixteen_prompts_together_match_alone_and_transformers(engine, tiny):
    prompts = prompts_of(16)
    params = SamplingParams(max_tokens=16, **GREEDY)
    together = [o.outputs[0].token_ids for o in engine.generate(prompt_token_ids=prompts, sampling_params=params)]
    alone = [engine.generate(prompt_token_ids=[p], sampling_params=params)[0].outputs[0].token_ids for p in prompts]
    assert together == alone
    for prompt, tokens in zip(prompts, together):
        assert tokens == hf_greedy(tiny.hf_model, prompt, 16)
    assert_all_pages_returned(engine)


def test_oversubscribed_pool_preempts_and_completes(tiny, engine):
    # 16 requests x (30 prompt + 40 output) tokens need 16 x 18 pages of 4; the pool has 71 (4x oversubscribed).
    small = make_engine(tiny.path, num_pages=72)
    prompts = prompts_of(16, seed=1, low=30, high=31)
    params = SamplingParams(max_tokens=40, **GREEDY)
    outs = small.generate(prompt_token_ids=prompts, sampling_params=params)
    assert all(len(o.outputs[0].token_ids) == 40 for o in outs)
    assert small.stats().num_preemptions > 0
    assert_all_pages_returned(small)
    # Recomputation after preemption gives the same greedy tokens as an unconstrained pool.
    reference = engine.generate(prompt_token_ids=prompts, sampling_params=params)
    assert [o.outputs[0].token_ids for o in outs] == [o.outputs[0].token_ids for o in reference]


def test_two_hundred_requests_with_random_aborts_leak_nothing(tiny):
    small = make_engine(tiny.path, num_pages=96)
    rng = random.Random(0)
    live, finished, aborted = [], 0, 0
    prompts = prompts_of(200, seed=2, low=1, high=60)
    for i, prompt in enumerate(prompts):
        params = SamplingParams(max_tokens=rng.randint(1, 30), temperature=rng.choice([0.0, 1.0]), seed=i)
        live.append(small.add_request(prompt_token_ids=prompt, sampling_params=params))
        if i % 5 == 4:
            for out in small.step():
                finished += out.finished
        if rng.random() < 0.25:
            victim = live.pop(rng.randrange(len(live)))
            try:
                small.abort(victim)
                aborted += 1
            except ValueError:  # finished already
                pass
    while small.has_unfinished_requests():
        small.step()
    small.block_manager.check_integrity()
    assert aborted > 20
    assert_all_pages_returned(small)


def test_chunked_prefill_matches_unchunked(tiny_checkpoint):
    long = tiny_checkpoint("llama", max_position_embeddings=4096)
    prompt = prompts_of(1, seed=3, low=2000, high=2001)[0]
    params = SamplingParams(max_tokens=8, **GREEDY)
    chunked = make_engine(long.path, max_model_len=2100, max_num_batched_tokens=256, token_buckets=[16, 256],
                          num_pages=600)
    out_chunked = chunked.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    assert chunked.stats().num_steps >= 8 + 7  # 2000 tokens in chunks of 256, then 7 decodes
    whole = make_engine(long.path, max_model_len=2100, max_num_batched_tokens=2048, token_buckets=[16, 2048],
                        num_pages=600)
    out_whole = whole.generate(prompt_token_ids=[prompt], sampling_params=params)[0]
    assert out_chunked.outputs[0].token_ids == out_whole.outputs[0].token_ids


def test_no_compilation_after_warmup(engine):
    before = engine.stats().num_compiles
    rng = np.random.default_rng(4)
    for batch in (1, 3, 16, 7):
        prompts = prompts_of(batch, seed=int(rng.integers(1000)), low=1, high=120)
        params = [SamplingParams(max_tokens=int(rng.integers(1, 12)), temperature=float(rng.choice([0.0, 0.8])),
                                 top_p=0.9, top_k=20, seed=1, logprobs=int(rng.integers(0, 3)),
                                 repetition_penalty=1.1, presence_penalty=0.1) for _ in prompts]
        engine.generate(prompt_token_ids=prompts, sampling_params=params)
    assert engine.stats().num_compiles == before


# The keys engine.stats() returned when it was a dict; EngineStats.to_dict() keeps exactly them.
STATS_KEYS = {
    "num_total_pages", "num_free_pages", "num_cached_pages", "num_used_pages", "num_queried_pages", "num_hit_pages",
    "num_evictions", "max_cached_pages", "num_capacity_evictions", "num_requests", "num_running", "num_waiting",
    "num_waiting_for_grammar", "num_grammar_compiles", "num_grammar_cache_hits", "num_preemptions",
    "num_prompt_tokens", "num_generation_tokens", "num_finished_requests", "num_compiles",
    "num_compiles_since_warmup", "num_compiled_buckets", "num_steps", "step_host_seconds",
    "step_device_wait_seconds", "device_idle_seconds", "num_device_fed_tokens", "num_dropped_tokens",
    "prefix_cache_queried_tokens", "prefix_cache_hit_tokens", "prefix_cache_hit_rate", "backend", "max_model_len"}


def test_stats_are_one_typed_snapshot_with_the_old_dict_as_to_dict(engine):
    from tests.engine_stats_cases import from_flat

    engine.generate(prompt_token_ids=prompts_of(3, seed=11), sampling_params=SamplingParams(max_tokens=4, **GREEDY))
    stats = engine.stats()
    assert isinstance(stats, surge.EngineStats) and stats.spec_decode is None
    assert stats.pages == engine.block_manager.stats() and stats.pages.num_total_pages == 255
    assert stats.num_steps > 0 and stats.num_generation_tokens >= 12 and stats.backend == "reference"
    assert stats.max_model_len == 256
    flat = stats.to_dict()
    assert set(flat) == STATS_KEYS
    assert from_flat(flat) == stats


def test_seeded_sampling_is_independent_of_batch_companions(engine):
    prompt = prompts_of(1, seed=5)[0]
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=1234)
    alone = engine.generate(prompt_token_ids=[prompt], sampling_params=params)[0].outputs[0].token_ids
    companions = prompts_of(6, seed=6)
    mixed = engine.generate(prompt_token_ids=companions[:3] + [prompt] + companions[3:],
                            sampling_params=[SamplingParams(max_tokens=9, temperature=0.7)] * 3 + [params]
                            + [SamplingParams(max_tokens=5, **GREEDY)] * 3)
    assert mixed[3].outputs[0].token_ids == alone
    other_seed = engine.generate(prompt_token_ids=[prompt], sampling_params=params.replace(seed=99))
    assert other_seed[0].outputs[0].token_ids != alone


def test_stop_string_never_reaches_a_delta(engine):
    prompt = "the sea is "
    free = engine.generate([prompt], SamplingParams(max_tokens=24, **GREEDY))[0].outputs[0].text
    assert len(free) > 12
    stop = free[6:9]
    deltas, final = [], None
    for out in engine.stream(prompt, SamplingParams(max_tokens=24, temperature=0.0, stop=[stop])):
        deltas.append(out.delta_text)
        final = out
    assert final.finished and final.outputs[0].finish_reason == "stop"
    assert final.outputs[0].text == free[: free.index(stop)]
    assert "".join(deltas) == final.outputs[0].text
    assert all(stop not in d for d in deltas)
    with_stop = engine.generate([prompt], SamplingParams(max_tokens=24, temperature=0.0, stop=[stop],
                                                         include_stop_str_in_output=True))[0]
    assert with_stop.outputs[0].text == free[: free.index(stop) + len(stop)]
    assert_all_pages_returned(engine)


def test_n_completions_share_the_prompt(engine):
    out = engine.generate(prompt_token_ids=[prompts_of(1, seed=7)[0]],
                          sampling_params=SamplingParams(n=3, max_tokens=6, temperature=1.0, seed=3))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    assert all(len(c.token_ids) == 6 for c in out.outputs)
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert_all_pages_returned(engine)


def test_logprobs_are_returned(engine):
    out = engine.generate(prompt_token_ids=[prompts_of(1, seed=8)[0]],
                          sampling_params=SamplingParams(max_tokens=4, logprobs=2, **GREEDY))[0]
    completion = out.outputs[0]
    assert len(completion.logprobs) == 4
    for token, entry in zip(completion.token_ids, completion.logprobs):
        assert token in entry and entry[token].rank == 1 and entry[token].logprob <= 0


@pytest.mark.parametrize("bad", [
    dict(prompt_token_ids=list(range(3, 300))),
    dict(prompt_token_ids=[]),
    dict(prompt_token_ids=[5, 100000]),
    dict(prompt="x", sampling_params="not params"),
])
def test_bad_requests_raise_and_engine_keeps_serving(engine, bad):
    with pytest.raises(ValueError):
        engine.add_request(**{"sampling_params": SamplingParams(max_tokens=2), **bad})
    out = engine.generate(prompt_token_ids=[[5, 6, 7]], sampling_params=SamplingParams(max_tokens=2, **GREEDY))
    assert len(out[0].outputs[0].token_ids) == 2


@pytest.mark.parametrize("field,value", [("max_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5)])
def test_bad_sampling_params_raise_value_error(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


def test_abort_unknown_request_raises(engine):
    with pytest.raises(ValueError, match="unknown request id"):
        engine.abort("nope")


def test_abort_mid_generation_frees_pages(engine):
    rid = engine.add_request(prompt_token_ids=prompts_of(1, seed=9)[0], sampling_params=SamplingParams(max_tokens=50, **GREEDY))
    engine.step()
    engine.step()
    assert engine.stats().pages.num_used_pages > 0
    engine.abort(rid)
    outs = engine.step()
    assert [o.outputs[0].finish_reason for o in outs if o.request_id == rid] == ["abort"]
    assert_all_pages_returned(engine)


def test_stream_closed_early_aborts(engine):
    stream = engine.stream(prompts_of(1, seed=10)[0], SamplingParams(max_tokens=50, **GREEDY))
    next(stream)
    stream.close()
    assert not engine.has_unfinished_requests()
    assert_all_pages_returned(engine)


def test_async_engine_streams_and_cancellation_frees_pages(engine):
    import asyncio

    async def main():
        async_engine = surge.AsyncEngine(engine)
        try:
            texts = []
            async for out in async_engine.generate(prompt_token_ids=prompts_of(1, seed=11)[0],
                                                   params=SamplingParams(max_tokens=5, **GREEDY)):
                texts.append(out.delta_text)
            assert out.finished and len(out.outputs[0].token_ids) == 5
            agen = async_engine.generate(prompt_token_ids=prompts_of(1, seed=12)[0],
                                         params=SamplingParams(max_tokens=200, **GREEDY))
            await agen.__anext__()
            await agen.aclose()
            for _ in range(100):
                if not engine.has_unfinished_requests():
                    break
                await asyncio.sleep(0.05)
        finally:
            async_engine.stop()

    asyncio.run(main())
    assert_all_pages_returned(engine)


def test_esurge_and_vsurge_spellings(tiny):
    import asyncio

    es = surge.eSurge(model=tiny.path, max_model_len=128, max_num_seqs=4, hbm_utilization=0.5, page_size=8,
                      enable_prefix_caching=True, backend="reference", num_pages=64, token_buckets=[16, 64],
                      progress=False)
    assert es.generate("the sea", SamplingParams(max_tokens=3, **GREEDY))[0].outputs[0].token_ids
    vs = surge.vSurge.from_model(tiny.path, max_prefill_length=64, prefill_lengths=[16], page_size=8,
                                 max_concurrent_decodes=4, max_concurrent_prefill=1, max_length=128, seed=3,
                                 backend="reference", num_pages=64, progress=False)
    vs.compile()
    vs.start()
    try:
        results = asyncio.run(vs.generate(["the sea", "a cat"], SamplingParams(max_tokens=4, **GREEDY), stream=False))
        assert [r.num_generated_tokens for r in results] == [4, 4]
        assert all(isinstance(r, surge.ReturnSample) and r.tokens_per_second > 0 for r in results)
    finally:
        vs.stop()
