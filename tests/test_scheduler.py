"""Scheduler: counters, chunked prefill, budgets, preemption, policies — with exact page ids."""

from __future__ import annotations

import pytest

from surge.cache.block_manager import BlockManager
from surge.config import EngineConfig, SchedulerConfig
from surge.sampling.params import SamplingParams
from surge.scheduler.request import Request, RequestStatus
from surge.scheduler.scheduler import Scheduler

PAGE = 4


def make_scheduler(num_pages=64, max_num_seqs=4, budget=16, policy="fcfs", prefix=True, max_model_len=64,
                   chunked=True):
    bm = BlockManager(num_pages, PAGE, enable_prefix_caching=prefix)
    engine = EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=budget, max_model_len=max_model_len)
    sched = Scheduler(SchedulerConfig(policy=policy, enable_chunked_prefill=chunked), engine, bm, max_model_len)
    return sched, bm


def make_request(rid, num_prompt=5, max_tokens=3, priority=0, arrival=0.0, start=100, **params):
    return Request(rid, list(range(start, start + num_prompt)), SamplingParams(max_tokens=max_tokens, **params),
                   eos_token_ids=(2,), priority=priority, arrival_time=arrival)


def run_step(sched, token=7):
    out = sched.schedule()
    updates = sched.update(out, [token] * len(out.scheduled))
    return out, updates


def test_prefill_then_decode_counters_and_pages():
    sched, bm = make_scheduler()
    sched.add_request(make_request("a", num_prompt=5))
    out = sched.schedule()
    [item] = out.scheduled
    assert (item.num_computed_tokens, item.num_new_tokens, item.page_ids) == (0, 5, [1, 2])
    assert item.samples
    sched.update(out, [7])
    req = sched.requests["a"]
    assert req.num_computed_tokens == 5 and req.output_token_ids == [7]
    out = sched.schedule()
    [item] = out.scheduled
    assert (item.num_computed_tokens, item.num_new_tokens, item.page_ids) == (5, 1, [1, 2])


def test_finishes_at_max_tokens_and_frees_pages():
    sched, bm = make_scheduler()
    sched.add_request(make_request("a", num_prompt=5, max_tokens=3))
    for _ in range(3):
        out, updates = run_step(sched)
    assert updates[0].finished and updates[0].request.status == RequestStatus.FINISHED_LENGTH
    assert not sched.has_unfinished_requests()
    assert bm.num_used_pages == 0
    bm.check_integrity()


def test_eos_stops_unless_ignore_eos_or_min_tokens():
    sched, _ = make_scheduler()
    sched.add_request(make_request("a", max_tokens=10))
    sched.add_request(make_request("b", max_tokens=10, ignore_eos=True, start=200))
    sched.add_request(make_request("c", max_tokens=10, min_tokens=2, start=300))
    out, updates = run_step(sched, token=2)
    finished = {u.request.request_id for u in updates if u.finished}
    assert finished == {"a"}
    out, updates = run_step(sched, token=2)
    finished = {u.request.request_id for u in updates if u.finished}
    assert finished == {"c"}


def test_chunked_prefill_splits_long_prompt_under_budget():
    sched, _ = make_scheduler(budget=8)
    sched.add_request(make_request("a", num_prompt=20))
    chunks = []
    while True:
        out, updates = run_step(sched)
        chunks.append(out.scheduled[0].num_new_tokens)
        if updates:
            break
    assert chunks == [8, 8, 4]
    assert sched.requests["a"].num_output_tokens == 1


def test_decodes_first_then_waiting_share_one_budget():
    sched, _ = make_scheduler(budget=8)
    sched.add_request(make_request("a", num_prompt=4))
    run_step(sched)
    sched.add_request(make_request("b", num_prompt=20, start=200))
    out = sched.schedule()
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [("a", 1), ("b", 7)]
    assert not out.scheduled[1].samples


def test_max_num_seqs_limits_admission():
    sched, _ = make_scheduler(max_num_seqs=2, budget=64)
    for i in range(3):
        sched.add_request(make_request(f"r{i}", start=100 * (i + 1)))
    out = sched.schedule()
    assert [s.request.request_id for s in out.scheduled] == ["r0", "r1"]
    assert sched.num_waiting == 1


def test_preemption_when_pages_run_out_and_everyone_finishes():
    # 7 usable pages of 4 tokens; each request needs up to 3 pages (5 prompt + 6 output = 11 tokens).
    sched, bm = make_scheduler(num_pages=8, max_num_seqs=4, budget=64)
    for i in range(4):
        sched.add_request(make_request(f"r{i}", num_prompt=5, max_tokens=6, start=100 * (i + 1)))
    finished = set()
    for _ in range(200):
        if not sched.has_unfinished_requests():
            break
        out, updates = run_step(sched)
        finished |= {u.request.request_id for u in updates if u.finished}
        bm.check_integrity()
    assert finished == {"r0", "r1", "r2", "r3"}
    assert sched.num_preemptions > 0
    assert bm.num_used_pages == 0


def test_fcfs_preempts_most_recent_priority_preempts_worst():
    for policy, expected in (("fcfs", "r2"), ("priority", "r0")):
        sched, bm = make_scheduler(num_pages=7, max_num_seqs=4, budget=64, policy=policy)
        # priorities: r0 worst (9), r1 and r2 best (0); all prompts fill 2 pages exactly after one decode
        for i, prio in enumerate((9, 0, 0)):
            sched.add_request(make_request(f"r{i}", num_prompt=4, max_tokens=20, priority=prio, arrival=float(i),
                                           start=100 * (i + 1)))
        run_step(sched)  # 3 requests x 1 page (4 tokens each) + 1 sampled token each
        out = sched.schedule()  # each needs a 2nd page: 6 usable pages, 3 held -> fits
        sched.update(out, [7] * len(out.scheduled))
        for _ in range(10):  # the 9th token of each needs a 3rd page: only 6 usable pages exist
            out = sched.schedule()
            sched.update(out, [7] * len(out.scheduled))
            if out.preempted_ids:
                break
        assert out.preempted_ids[0] == expected, policy


def test_priority_policy_admits_lower_priority_value_first():
    sched, _ = make_scheduler(max_num_seqs=1, policy="priority")
    sched.add_request(make_request("low", priority=5, arrival=0.0))
    sched.add_request(make_request("high", priority=-1, arrival=1.0, start=200))
    out = sched.schedule()
    assert out.scheduled[0].request.request_id == "high"


def test_prefix_hit_skips_computed_pages():
    sched, bm = make_scheduler()
    sched.add_request(make_request("a", num_prompt=9, max_tokens=1))
    run_step(sched)  # finishes; its 2 full pages stay cached
    sched.add_request(make_request("b", num_prompt=9, max_tokens=1))
    out = sched.schedule()
    [item] = out.scheduled
    assert item.num_computed_tokens == 8 and item.num_new_tokens == 1
    assert item.page_ids[:2] == [1, 2]
    assert sched.requests["b"].num_cached_tokens == 8


def test_abort_running_and_waiting_frees_pages():
    sched, bm = make_scheduler(max_num_seqs=1)
    sched.add_request(make_request("a"))
    sched.add_request(make_request("b", start=200))
    run_step(sched)
    assert bm.num_used_pages > 0
    sched.finish("a", RequestStatus.FINISHED_ABORTED)
    sched.finish("b", RequestStatus.FINISHED_ABORTED)
    assert bm.num_used_pages == 0 and not sched.has_unfinished_requests()
    bm.check_integrity()


def test_duplicate_request_id_rejected():
    sched, _ = make_scheduler()
    sched.add_request(make_request("a"))
    with pytest.raises(ValueError, match="already in use"):
        sched.add_request(make_request("a"))


def test_max_model_len_stops_with_length():
    sched, _ = make_scheduler(max_model_len=8)
    sched.add_request(make_request("a", num_prompt=6, max_tokens=100))
    run_step(sched)
    out, updates = run_step(sched)
    assert updates[0].finished and updates[0].request.finish_reason == "length"
    assert sched.requests.get("a") is None


def test_priority_preempts_a_worse_request_scheduled_earlier_in_the_same_step_and_refunds_it():
    # Running order low (worst), high, mid, tail. At step 3 low is scheduled first, then a later request needs a
    # page: the victim is low (the policy's worst among *all* running), its page and its token go back, and
    # tail's chunk takes the refunded token (6 = budget 8 - high 1 - mid 1; 5 without the refund).
    sched, bm = make_scheduler(num_pages=8, max_num_seqs=4, budget=8, policy="priority")
    sched.add_request(make_request("low", num_prompt=4, max_tokens=20, priority=9, arrival=0.0, start=100))
    run_step(sched)
    for rid, num_prompt, arrival, start in (("high", 3, 1.0, 200), ("mid", 9, 2.0, 300), ("tail", 8, 3.0, 400)):
        sched.add_request(make_request(rid, num_prompt=num_prompt, max_tokens=20, priority=0, arrival=arrival,
                                       start=start))
    run_step(sched)
    out, _ = run_step(sched)
    assert [(s.request.request_id, s.num_new_tokens) for s in out.scheduled] == [
        ("low", 1), ("high", 1), ("mid", 5), ("tail", 1)]
    out = sched.schedule()
    assert out.preempted_ids == ["low"]
    assert [(s.request.request_id, s.num_computed_tokens, s.num_new_tokens) for s in out.scheduled] == [
        ("high", 4, 1), ("mid", 9, 1), ("tail", 1, 6)]
    assert out.num_batched_tokens == 8
    low = sched.requests["low"]
    assert low.status == RequestStatus.PREEMPTED and low.num_computed_tokens == 0
    assert bm.num_used_pages == 7  # all 7 usable pages, low's 2 now mid's and tail's
    with pytest.raises(KeyError, match="holds no pages"):
        bm.pages("low")
    bm.check_integrity()


# ---- n > 1 siblings ------------------------------------------------------------------------------

def siblings(n=3, num_prompt=9, **params):
    return [make_request(f"s#{i}", num_prompt=num_prompt, max_tokens=4, n=n, **params) for i in range(n)]


def test_siblings_wait_off_the_queue_until_the_first_child_samples_then_hit_its_pages():
    sched, bm = make_scheduler()
    sched.add_siblings(siblings())
    assert sched.num_waiting == 3 and sched.has_unfinished_requests()
    out = sched.schedule()
    assert [item.request.request_id for item in out.scheduled] == ["s#0"]  # the prompt is computed once
    sched.update(out, [7])  # s#0 sampled: its two full prompt pages are cached, the siblings are queued
    out = sched.schedule()
    by_id = {item.request.request_id: item for item in out.scheduled}
    assert sorted(by_id) == ["s#0", "s#1", "s#2"]
    assert by_id["s#1"].num_computed_tokens == 8 and by_id["s#1"].num_new_tokens == 1
    assert sched.num_prefix_hit_tokens == 16 and sched.num_prefix_queried_tokens == 27
    assert by_id["s#1"].page_ids[:2] == by_id["s#0"].page_ids[:2]
    bm.check_integrity()


def test_siblings_are_queued_at_once_without_prefix_caching():
    sched, _ = make_scheduler(prefix=False, budget=32)
    sched.add_siblings(siblings())
    out = sched.schedule()
    assert sorted(item.request.request_id for item in out.scheduled) == ["s#0", "s#1", "s#2"]


def test_a_held_sibling_can_finish_and_a_first_child_finishing_early_releases_the_rest():
    sched, bm = make_scheduler()
    sched.add_siblings(siblings())
    assert sched.finish("s#2", RequestStatus.FINISHED_ABORTED).status == RequestStatus.FINISHED_ABORTED
    assert sched.num_waiting == 2
    sched.schedule()  # s#0 starts its prompt ...
    sched.finish("s#0", RequestStatus.FINISHED_ABORTED)  # ... and is aborted before sampling
    assert sched.num_waiting == 1 and bm.num_used_pages == 0
    out = sched.schedule()
    assert [item.request.request_id for item in out.scheduled] == ["s#1"]  # it computes the prompt itself
    with pytest.raises(ValueError, match="already in use"):
        sched.add_siblings([make_request("s#1", n=2), make_request("s#9", n=2)])
