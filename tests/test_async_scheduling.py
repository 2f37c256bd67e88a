"""engine.async_scheduling on vs off on a tiny random Llama: the same tokens, no leaked pages, no late tokens.

With async scheduling step N+1 is dispatched before step N's ids reach the host, so a request found
finished at N (EOS-like stop token, stop string, abort) was already scheduled once more: that token must
be dropped (never emitted, never counted) and its pages freed.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

import surge
from surge import SamplingParams

GREEDY = dict(temperature=0.0, ignore_eos=True)


def make_engine(path, async_scheduling, **overrides):
    options = dict(backend="reference", max_num_seqs=16, max_model_len=2100, max_num_batched_tokens=64,
                   token_buckets=[16, 64], num_pages=560, page_size=4, progress=False,
                   async_scheduling=async_scheduling)
    options.update(overrides)
    return surge.Engine.from_pretrained(path, **options)


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return tiny_checkpoint("llama")


@pytest.fixture(scope="module")
def engines(tiny):
    return {"serial": make_engine(tiny.path, False), "async": make_engine(tiny.path, True)}


def prompts_of(n, seed=0, low=3, high=40):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 320, int(rng.integers(low, high))).tolist() for _ in range(n)]


def assert_clean(engine):
    stats = engine.stats()
    assert stats.pages.num_used_pages == 0, stats
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.pages.num_free_pages == stats.pages.num_total_pages, stats  # free, cached ones included
    assert not engine.has_unfinished_requests()
    engine.block_manager.check_integrity()


def completions(outputs):
    return [[(c.text, list(c.token_ids), c.finish_reason, c.stop_reason) for c in o.outputs] for o in outputs]


COUNTERS = ("num_generation_tokens", "num_device_fed_tokens", "num_dropped_tokens", "prefix_cache_hit_tokens")


def run_both(engines, **generate_kwargs):
    """Generate in both loops; returns the serial outputs and, per loop, how the counters moved."""
    results, moved = {}, {}
    for mode, engine in engines.items():
        before = engine.stats()
        outputs = engine.generate(use_tqdm=False, **generate_kwargs)
        after = engine.stats()
        moved[mode] = {name: getattr(after, name) - getattr(before, name) for name in COUNTERS}
        assert moved[mode]["num_generation_tokens"] == sum(len(c.token_ids) for o in outputs for c in o.outputs)
        # Usage per request counts exactly the tokens handed out: none past a stop, none dropped late.
        assert all(o.metrics.num_generation_tokens == sum(len(c.token_ids) for c in o.outputs) for o in outputs)
        assert_clean(engine)
        results[mode] = outputs
    assert completions(results["async"]) == completions(results["serial"])
    assert moved["serial"]["num_device_fed_tokens"] == moved["serial"]["num_dropped_tokens"] == 0
    return results["serial"], moved["async"]


def test_the_default_is_async(tiny):
    assert surge.make_config(tiny.path).engine.async_scheduling is True


def test_mixed_batch_gives_the_same_tokens(engines):
    """16 prompts of different lengths; max_tokens 1..30; stop token ids and stop strings ending
    requests mid-batch (one step before the async loop learns of it)."""
    prompts = prompts_of(16, seed=1)
    free = engines["serial"].generate(prompt_token_ids=prompts, sampling_params=SamplingParams(
        max_tokens=30, **GREEDY), use_tqdm=False)
    params = []
    for i, out in enumerate(free):
        tokens, text = out.outputs[0].token_ids, out.outputs[0].text
        kind = i % 4
        if kind == 0:
            params.append(SamplingParams(max_tokens=[1, 2, 7, 30][i % 16 // 4], **GREEDY))
        elif kind == 1:  # a stop token id met mid-completion
            params.append(SamplingParams(max_tokens=30, stop_token_ids=[tokens[5 + i % 7]], **GREEDY))
        elif kind == 2 and len(text) > 12:  # a stop string met mid-completion
            params.append(SamplingParams(max_tokens=30, stop=[text[8:11]], **GREEDY))
        else:
            params.append(SamplingParams(max_tokens=3 + i, **GREEDY))
    serial, moved = run_both(engines, prompt_token_ids=prompts, sampling_params=params)
    # The async loop fed decodes from the device and dropped the token after each stop it learnt late.
    assert moved["num_device_fed_tokens"] > 100
    assert moved["num_dropped_tokens"] >= 4
    reasons = [o.outputs[0].finish_reason for o in serial]
    assert reasons.count("stop") >= 4 and reasons.count("length") >= 4
    assert [len(o.outputs[0].token_ids) for o in serial][0::4] == [1, 2, 7, 30]
    for out, p in zip(serial, params):
        if p.stop_token_ids:  # the stop token ends the ids; nothing after it
            assert out.outputs[0].token_ids[-1] == p.stop_token_ids[0]
            assert out.outputs[0].token_ids.count(p.stop_token_ids[0]) == 1
        if p.stop:
            assert p.stop[0] not in out.outputs[0].text and out.outputs[0].finish_reason == "stop"


def test_every_request_with_max_tokens_one(engines):
    serial, moved = run_both(engines, prompt_token_ids=prompts_of(20, seed=2),
                             sampling_params=SamplingParams(max_tokens=1, **GREEDY))
    assert all(len(o.outputs[0].token_ids) == 1 for o in serial)
    # The scheduler knows max_tokens is reached by the token in flight: nothing more is run.
    assert moved["num_device_fed_tokens"] == moved["num_dropped_tokens"] == 0


def test_long_chunked_prompt(engines):
    prompt = prompts_of(1, seed=3, low=2000, high=2001)[0]
    others = prompts_of(3, seed=4)
    serial, _ = run_both(engines, prompt_token_ids=[prompt] + others,
                      sampling_params=SamplingParams(max_tokens=12, **GREEDY))
    assert [len(o.outputs[0].token_ids) for o in serial] == [12] * 4


def test_oversubscribed_pool_with_preemptions(tiny):
    """48 requests of ~190 tokens on a 2,240-token pool (about 4x): both loops preempt and agree."""
    pool = {mode: make_engine(tiny.path, mode == "async", max_model_len=256, num_pages=561)
            for mode in ("serial", "async")}
    prompts = prompts_of(48, seed=5, low=50, high=80)
    _, moved = run_both(pool, prompt_token_ids=prompts, sampling_params=SamplingParams(max_tokens=120, **GREEDY))
    assert moved["num_device_fed_tokens"] > 1000
    assert all(engine.stats().num_preemptions > 0 for engine in pool.values())


def test_seeded_sampling_and_n4_with_prefix_caching(engines):
    prompts = prompts_of(4, seed=6, low=20, high=30)
    params = [SamplingParams(n=4, max_tokens=10, temperature=0.9, seed=11),
              SamplingParams(max_tokens=14, temperature=1.0, top_p=0.9, seed=5),
              SamplingParams(max_tokens=9, temperature=0.8, top_k=20, seed=7, presence_penalty=0.5),
              SamplingParams(n=2, max_tokens=8, **GREEDY)]
    serial, _ = run_both(engines, prompt_token_ids=prompts, sampling_params=params)
    assert len({tuple(c.token_ids) for c in serial[0].outputs}) > 1


def test_greedy_n4_siblings_reuse_the_first_childs_prompt_pages(engines):
    """n = 4, greedy, prefix caching on: the 3 siblings of each request wait for the first child's prompt
    pages and find every full one in the prefix cache; both loops give 4 identical completions per prompt."""
    prompts = prompts_of(3, seed=9, low=21, high=34)
    serial, moved = run_both(engines, prompt_token_ids=prompts,
                             sampling_params=SamplingParams(n=4, max_tokens=12, **GREEDY))
    for out in serial:
        assert len(out.outputs) == 4 and len({tuple(c.token_ids) for c in out.outputs}) == 1
    page_size = engines["async"].block_manager.page_size
    assert moved["prefix_cache_hit_tokens"] >= sum(3 * ((len(p) - 1) // page_size) * page_size for p in prompts)


def test_random_aborts_leak_nothing_and_agree_on_what_completes(engines):
    """200 requests; a random quarter is aborted while running. Requests never aborted give the same
    tokens in both loops; an aborted one got a prefix of what it would have produced."""
    rng = random.Random(0)
    prompts = prompts_of(200, seed=7, low=3, high=20)
    to_abort = set(rng.sample(range(200), 50))
    finals = {}
    for mode, engine in engines.items():
        ids = [engine.add_request(prompt_token_ids=p, sampling_params=SamplingParams(max_tokens=6 + i % 9, **GREEDY))
               for i, p in enumerate(prompts)]
        done, num_steps, aborted = {}, 0, set()
        while engine.has_unfinished_requests():
            for out in engine.step():
                if out.finished:
                    done[out.request_id] = out
            num_steps += 1
            if num_steps % 3 == 0:
                for i in sorted(to_abort - aborted)[:4]:
                    if ids[i] not in done:
                        engine.abort(ids[i])
                    aborted.add(i)
        assert len(done) == 200
        assert_clean(engine)
        finals[mode] = [done[i].outputs[0] for i in ids]
    full = engines["serial"].generate(prompt_token_ids=[prompts[i] for i in sorted(to_abort)], use_tqdm=False,
                                      sampling_params=[SamplingParams(max_tokens=6 + i % 9, **GREEDY)
                                                       for i in sorted(to_abort)])
    full_tokens = dict(zip(sorted(to_abort), (o.outputs[0].token_ids for o in full)))
    for i in range(200):
        serial, fast = finals["serial"][i], finals["async"][i]
        if i not in to_abort or (serial.finish_reason != "abort" and fast.finish_reason != "abort"):
            assert list(fast.token_ids) == list(serial.token_ids)
            continue
        for c in (serial, fast):
            assert list(c.token_ids) == full_tokens[i][:len(c.token_ids)]
    assert sum(c.finish_reason == "abort" for c in finals["async"]) > 10
    assert engines["async"].stats().num_dropped_tokens > 0


def test_async_engine_registers_the_stream_before_the_request_can_produce(engines, monkeypatch):
    import asyncio

    engine = engines["async"]
    async_engine = surge.AsyncEngine(engine)
    registered_at_add = []
    original = engine.add_request

    def add_request(*args, request_id=None, **kwargs):
        registered_at_add.append(request_id in async_engine._queues)
        return original(*args, request_id=request_id, **kwargs)

    monkeypatch.setattr(engine, "add_request", add_request)

    async def main():
        outs = [o async for o in async_engine.generate(prompt_token_ids=[5, 6, 7],
                                                       params=SamplingParams(max_tokens=1, **GREEDY))]
        assert outs[-1].finished and len(outs[-1].outputs[0].token_ids) == 1
        with pytest.raises(ValueError, match="prompt is empty"):
            async for _ in async_engine.generate(prompt_token_ids=[], params=SamplingParams(max_tokens=1)):
                pass

    try:
        asyncio.run(main())
    finally:
        async_engine.stop()
    assert registered_at_add == [True, True]
    assert not async_engine._queues
    assert_clean(engine)


def test_the_loop_reports_host_time_and_the_device_idle_gap(engines):
    """Engine.stats() carries the loop's figures (surge.engine.loop_clock): every step spends host time; the
    serial loop always leaves the device idle between steps (it waits, then builds the next step)."""
    moved = {}
    for mode, engine in engines.items():
        before = engine.stats()
        engine.generate(prompt_token_ids=prompts_of(4, seed=8), sampling_params=SamplingParams(max_tokens=8, **GREEDY),
                        use_tqdm=False)
        after = engine.stats()
        moved[mode] = {k: getattr(after, k) - getattr(before, k) for k in ("num_steps", "step_host_seconds",
                                                                            "step_device_wait_seconds",
                                                                            "device_idle_seconds")}
        assert moved[mode]["num_steps"] >= 8 and moved[mode]["step_host_seconds"] > 0
        assert moved[mode]["step_device_wait_seconds"] > 0 and moved[mode]["device_idle_seconds"] >= 0
    assert moved["serial"]["device_idle_seconds"] > 0


def test_async_engine_raises_bad_input_at_the_call_and_keeps_outputs_made_before_reading(engines):
    """AsyncEngine.generate adds the request when called: bad input raises there, before any iteration.
    A request whose only output is made before its caller reads (max_tokens 1, finished in the step that
    admitted it) still delivers it; a stream closed unread, or dropped unread, aborts its request."""
    import asyncio

    engine = engines["async"]
    async_engine = surge.AsyncEngine(engine)

    async def main():
        with pytest.raises(ValueError, match="prompt is empty"):
            async_engine.generate(prompt_token_ids=[], params=SamplingParams(max_tokens=1))
        with pytest.raises(ValueError, match="outside the vocabulary"):
            async_engine.generate(prompt_token_ids=[10**9], params=SamplingParams(max_tokens=1))
        assert not async_engine._queues
        streams = [async_engine.generate(prompt_token_ids=p, params=SamplingParams(max_tokens=1, **GREEDY))
                   for p in prompts_of(3, seed=13)]
        with pytest.raises(ValueError, match="already in use"):
            async_engine.generate(prompt_token_ids=[5, 6], request_id=streams[0].request_id)
        for _ in range(2000):  # let the loop thread finish all three before anyone reads
            if not engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.005)
        assert not engine.has_unfinished_requests()
        for stream in streams:
            outs = [o async for o in stream]
            assert len(outs) == 1 and outs[0].finished and len(outs[0].outputs[0].token_ids) == 1
        unread = async_engine.generate(prompt_token_ids=prompts_of(1, seed=14)[0],
                                       params=SamplingParams(max_tokens=500, **GREEDY))
        await unread.aclose()
        generated = engine.stats().num_generation_tokens
        dropped = async_engine.generate(prompt_token_ids=prompts_of(1, seed=15)[0],
                                        params=SamplingParams(max_tokens=1500, **GREEDY))
        del dropped  # never read nor closed: the loop thread aborts it
        for _ in range(2000):
            if not engine.has_unfinished_requests():
                break
            await asyncio.sleep(0.005)
        assert not engine.has_unfinished_requests()
        assert engine.stats().num_generation_tokens - generated < 1500  # aborted, not run to the end

    try:
        asyncio.run(main())
    finally:
        async_engine.stop()
    assert not async_engine._queues
    assert_clean(engine)
