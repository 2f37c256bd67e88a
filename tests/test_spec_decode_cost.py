"""The cost-aware speculation rule on fake timings (no clock is read): step cost model, cost rule, the
Speculator's use of them, the adaptive pauses, and the loop clock's per-step seconds."""

from __future__ import annotations

import pytest

import surge
from surge import SamplingParams
from surge.config import ConfigError, SpeculativeConfig
from surge.scheduler.request import Request
from surge.spec_decode import Speculator
from surge.spec_decode.adaptive import AdaptiveK
from surge.spec_decode.cost_rule import CostRule
from surge.spec_decode.step_cost import StepCostModel

BUCKETS = [1, 2, 4, 8, 16, 32, 64, 128]


def memory_bound():
    """One sequence: reading the weights dominates, 8 tokens cost 10% more than 1 (buckets 1 and 8 only)."""
    model = StepCostModel([1, 8, 32, 64])
    model.observe_step(1, False, 0.020)
    model.observe_step(5, True, 0.022)
    return model


def compute_bound():
    """32 sequences: seconds grow with the bucket's tokens."""
    model = StepCostModel(BUCKETS)
    model.observe_step(32, False, 0.100)
    model.observe_step(32, True, 0.101)
    model.observe_step(36, True, 0.190)
    return model


def test_step_cost_model_keys_by_bucket_and_drafts_and_smooths():
    model = StepCostModel(BUCKETS)
    assert model.bucket(5) == 8 and model.bucket(8) == 8 and model.bucket(200) == 200
    assert model.seconds(5, True) is None
    model.observe_step(5, True, 0.010)
    assert model.seconds(7, True) == pytest.approx(0.010) and model.seconds(7, False) is None
    model.observe_step(8, True, 0.030)
    assert model.seconds(6, True) == pytest.approx(0.75 * 0.010 + 0.25 * 0.030)
    assert model.num_observed_steps == 2
    model.observe_host(0.004)
    model.observe_host(0.008)
    assert model.host_seconds == pytest.approx(0.005)


def test_one_sequence_memory_bound_speculates_on_little_acceptance():
    rule = CostRule(memory_bound())
    rule.begin_step(1, 1)
    # 0.3 accepted x 20 ms per token = 6 ms > the 2 ms the 8-token bucket adds.
    assert rule.price(4) == pytest.approx(0.002)
    assert rule.drafts_that_pay(4, lambda d: 0.3) == 4
    # 0.05 accepted (1 ms) does not pay for it.
    assert rule.drafts_that_pay(4, lambda d: 0.05) == 0


def test_32_sequences_compute_bound_back_off_even_when_every_draft_is_accepted():
    rule = CostRule(compute_bound())
    rule.begin_step(32, 32)
    # A token is worth 100 ms / 32; crossing into the 64 bucket costs 90 ms.
    assert rule.token_value() == pytest.approx(0.100 / 32)
    assert rule.price(4) == pytest.approx(0.090)
    assert rule.drafts_that_pay(4, lambda d: float(d)) == 0


def test_drafts_fill_the_bucket_then_stop_at_its_end():
    rule = CostRule(compute_bound())
    rule.begin_step(28, 28)  # 28 tokens: bucket 32, 4 free slots once the step carries drafts
    value = 0.100 / 28
    assert rule.price(2) == pytest.approx(0.001)  # no drafts yet: the draft rows' logits
    assert rule.drafts_that_pay(4, lambda d: 2.0) == 4 and 2.0 * value > 0.001
    rule.commit(2)
    assert rule.price(2) == 0.0  # 30 -> 32: same bucket, free
    assert rule.drafts_that_pay(4, lambda d: 0.5) == 2  # 4 would cross into 64
    rule.commit(2)
    assert rule.drafts_that_pay(4, lambda d: 4.0) == 0  # the bucket is full; 64 costs 86 ms


def test_unmeasured_shapes():
    rule = CostRule(StepCostModel(BUCKETS))
    rule.begin_step(32, 32)
    assert rule.drafts_that_pay(4, lambda d: 0.1) == 4  # nothing observed yet: acceptance decides
    model = StepCostModel(BUCKETS)
    model.observe_step(512, False, 1.0)
    rule = CostRule(model)
    rule.begin_step(32, 32)
    assert rule.drafts_that_pay(4, lambda d: 4.0) == 0  # this step's own bucket unmeasured: measure it first
    model.observe_step(32, False, 0.1)
    rule.begin_step(32, 32)
    assert rule.drafts_that_pay(4, lambda d: 1.0) == 4  # the bucket with drafts never seen: one request tries
    rule.commit(4)
    # The 64 bucket with drafts is still unmeasured (its step has not run), and one request per step explores.
    assert rule.drafts_that_pay(4, lambda d: 1.0) == 0
    rule.begin_step(32, 32)
    assert rule.drafts_that_pay(4, lambda d: 1.0) == 4  # a new step may explore again


def _request(prompt, request_id="r"):
    return Request(request_id, list(prompt), SamplingParams(max_tokens=64, temperature=0.0))


def _speculator(model):
    return Speculator(SpeculativeConfig(method="ngram"), cost_model=model)


REPEATING = [5, 6, 7, 8, 9] * 4  # prompt lookup proposes 4 drafts


def test_speculator_follows_the_price_not_only_acceptance():
    """The same request, the same n-gram match: proposes at one sequence, not at 32 compute-bound ones."""
    cheap = _speculator(memory_bound())
    cheap.begin_step(1, 1)
    assert cheap.wants_host_tokens(_request(REPEATING)) and len(cheap.propose(_request(REPEATING), 8)) == 4
    dear = _speculator(compute_bound())
    dear.begin_step(32, 32)
    request = _request(REPEATING)
    assert not dear.wants_host_tokens(request)
    assert dear.propose(_request(REPEATING), 8) == []
    # Priced out: it waits adaptive_backoff_steps of its tokens before asking again.
    assert request.spec_state.resume_at == request.num_output_tokens + 16
    # Acceptance alone (cost_model=none) would have proposed.
    alone = Speculator(SpeculativeConfig(method="ngram", cost_model="none"))
    assert alone.wants_host_tokens(_request(REPEATING)) and len(alone.propose(_request(REPEATING), 8)) == 4


def test_drafts_are_cut_to_what_the_bucket_holds():
    speculator = _speculator(compute_bound())
    speculator.begin_step(29, 29)  # bucket 32: 3 slots
    assert speculator.propose(_request(REPEATING, "a"), 8) == [5, 6, 7]
    assert speculator.propose(_request(REPEATING, "b"), 8) == []


def test_waiting_for_the_token_costs_the_overlap_at_one_sequence():
    """Async loop: 2 ms of host work per step is exposed when the request waits for its token; a request
    whose lookups rarely find anything stops asking, one whose lookups find stays on."""
    model = memory_bound()
    model.observe_host(0.002)
    speculator = _speculator(model)
    speculator.begin_step(1, 1)
    finds = _request(REPEATING)
    assert speculator.wants_host_tokens(finds)
    rarely = _request(list(range(3, 30)))  # nothing repeats: prompt lookup finds nothing
    for _ in range(3):
        assert speculator.wants_host_tokens(rarely)
        assert speculator.propose(rarely, 8) == []
    assert rarely.spec_state.find_rate == pytest.approx(0.125)
    assert rarely.spec_state.proposes(rarely.num_output_tokens)  # finding nothing is no failure...
    assert not speculator.wants_host_tokens(rarely)  # ... but 0.125 x 1 x 20 ms < 2 + 2 ms
    assert rarely.spec_state.find_rate == 1.0 and not rarely.spec_state.proposes(rarely.num_output_tokens)


def test_a_lookup_that_finds_nothing_is_neither_success_nor_failure():
    state = AdaptiveK(min_accepted=0.5, backoff_steps=4)
    state.record(3, 3, 0)  # mean 0.5
    for step in range(4, 20):
        state.record(step, 0, 0)
        state.record_lookup(False)
    assert state.proposes(20) and state.mean_accepted == 0.5 and state.backoff_factor == 1
    assert state.find_rate < 0.01
    assert state.expected_accepted(4, looked_up=True) == 0.5
    assert state.expected_accepted(4, looked_up=False) == pytest.approx(0.5 * state.find_rate)
    state.record(20, 3, 3)  # one success
    assert state.mean_accepted == pytest.approx(1.75) and state.expected_accepted(1, looked_up=True) == 1.0
    state.priced_out(21)
    assert not state.proposes(24) and state.proposes(25) and state.find_rate == 1.0


def test_cost_model_config():
    assert surge.make_config().engine.speculative.cost_model == "measured"
    assert surge.make_config(speculative_cost_model="none").engine.speculative.cost_model == "none"
    with pytest.raises(ConfigError, match="engine.speculative.cost_model.*is not measured\\|none"):
        surge.make_config(speculative_cost_model="fast")
    with pytest.raises(ValueError, match="StepCostModel is needed exactly when"):
        Speculator(SpeculativeConfig(method="ngram"))
    with pytest.raises(ValueError, match="StepCostModel is needed exactly when"):
        Speculator(SpeculativeConfig(method="ngram", cost_model="none"), cost_model=StepCostModel())


def test_a_step_that_measures_its_own_bucket_pauses_nobody():
    model = StepCostModel(BUCKETS)
    model.observe_step(512, False, 1.0)  # a prefill step was seen; the decode bucket not yet
    speculator = _speculator(model)
    speculator.begin_step(1, 1)
    request = _request(REPEATING)
    assert not speculator.wants_host_tokens(request) and speculator.propose(request, 8) == []
    assert request.spec_state.proposes(request.num_output_tokens)
    model.observe_step(1, False, 0.02)
    speculator.begin_step(1, 1)
    assert len(speculator.propose(request, 8)) == 4  # the 8-token bucket with drafts is explored
