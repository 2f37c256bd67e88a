"""surge.spec_decode units: n-gram lookup, the accept rule, adaptive back-off, metrics, config, page rollback."""

from __future__ import annotations

import pytest

import surge
from surge.cache.block_manager import BlockManager
from surge.config import ConfigError
from surge.sampling.params import SamplingParams
from surge.scheduler.output import ScheduledRequest, SchedulerOutput
from surge.spec_decode import num_accepted
from surge.spec_decode.adaptive import AdaptiveK
from surge.spec_decode.metrics import SpecDecodeMetrics
from surge.spec_decode.ngram import propose_ngram


def test_ngram_takes_the_longest_suffix_and_what_followed_it():
    #            0  1  2  3  4  5  6  7  8  9 10
    tokens = [5, 6, 7, 8, 9, 1, 6, 7, 3, 5, 6, 7]
    # Suffix (5, 6, 7) occurs at 0 (followed by 8, 9); the shorter (6, 7) also at 6 (followed by 3):
    # the longest n wins.
    assert propose_ngram(tokens, 2, min_n=2, max_n=3) == [8, 9]
    assert propose_ngram(tokens, 2, min_n=2, max_n=2) == [3, 5]  # latest (6, 7) followed by two tokens
    assert propose_ngram(tokens, 4, min_n=1, max_n=1) == [3, 5, 6, 7]  # 7 at 7 has 4 tokens after it
    assert propose_ngram(tokens, 5, min_n=1, max_n=1) == [8, 9, 1, 6, 7]  # none has 5: the earliest
    assert propose_ngram([1, 2, 3, 4], 3, min_n=1, max_n=3) == []
    assert propose_ngram(tokens, 0, min_n=1, max_n=3) == []


def test_ngram_in_a_loop_offers_a_full_run():
    tokens = [4, 9] * 6
    assert propose_ngram(tokens, 4, min_n=2, max_n=4) == [4, 9, 4, 9]


def test_num_accepted_stops_at_the_first_mismatch():
    assert num_accepted([3, 4, 5], [3, 4, 5, 6]) == 3
    assert num_accepted([3, 4, 5], [3, 9, 5, 6]) == 1
    assert num_accepted([3], [8, 1]) == 0
    with pytest.raises(ValueError, match="bonus"):
        num_accepted([3, 4], [3, 4])


def test_adaptive_backs_off_doubles_and_recovers():
    state = AdaptiveK(min_accepted=0.5, backoff_steps=4)
    assert state.proposes(0)
    state.record(10, 3, 0)  # mean 0.5: still on
    assert state.proposes(10)
    state.record(11, 3, 0)  # mean 0.25: off for 4 tokens
    assert not state.proposes(14) and state.proposes(15)
    state.record(15, 3, 0)  # the probe fails: off for 8
    assert not state.proposes(22) and state.proposes(23)
    state.record(23, 3, 3)  # a good probe resets the pause length
    assert state.proposes(24) and state.backoff_factor == 1
    never = AdaptiveK(min_accepted=0.0, backoff_steps=4)
    for step in range(5):
        never.record(step, 3, 0)
    assert never.proposes(5)


def test_metrics_histogram_and_rates():
    metrics = SpecDecodeMetrics("ngram", 3)
    metrics.record(3, 3)
    metrics.record(3, 0)
    metrics.record(2, 1)
    stats = metrics.stats()
    assert stats.num_drafts == 3
    assert stats.num_draft_tokens == 8
    assert stats.num_accepted_tokens == 4
    assert stats.acceptance_lengths == (1, 1, 0, 1)
    assert stats.acceptance_rate == pytest.approx(0.5)
    assert stats.mean_acceptance_length == pytest.approx(1 + 4 / 3)


@pytest.mark.parametrize("key, value, message", [
    ("engine.speculative.method", "eagle", "is not none|ngram"),
    ("engine.speculative.num_speculative_tokens", 0, "must be in \\[1, 16\\]"),
    ("engine.speculative.prompt_lookup_min", 0, "must be >= 1"),
    ("engine.speculative.prompt_lookup_max", 1, "must be >= engine.speculative.prompt_lookup_min"),
    ("engine.speculative.adaptive_backoff_steps", 0, "must be >= 1"),
])
def test_config_is_validated_at_load(key, value, message):
    with pytest.raises(ConfigError, match=message):
        surge.make_config(**{key: value})


def test_config_short_names_and_default():
    assert surge.make_config().engine.speculative.method == "none"
    cfg = surge.make_config(speculative_method="ngram", num_speculative_tokens=3)
    assert cfg.engine.speculative.method == "ngram" and cfg.engine.speculative.num_speculative_tokens == 3


def test_sampling_params_speculate_must_be_a_bool():
    assert SamplingParams().speculate is True
    with pytest.raises(ValueError, match="speculate"):
        SamplingParams(speculate="no")


def test_release_trailing_pages_returns_rejected_slots():
    bm = BlockManager(num_pages=16, page_size=4, enable_prefix_caching=True)
    bm.allocate("a", 14)  # 4 pages
    bm.cache_full_pages("a", list(range(14)), 9)  # 2 pages hashed
    assert bm.release_trailing_pages("a", 9) == 1  # 9 tokens need 3 pages
    assert len(bm.pages("a")) == 3
    with pytest.raises(ValueError, match="hashed"):
        bm.release_trailing_pages("a", 4)
    bm.free("a")
    bm.check_integrity()
    assert bm.num_used_pages == 0


def test_sample_rows_put_draft_positions_after_every_sequence():
    def item(drafts):
        return ScheduledRequest(request=None, num_computed_tokens=0, num_new_tokens=1 + len(drafts), page_ids=[],
                                samples=True, draft_token_ids=drafts)

    out = SchedulerOutput(scheduled=[item([7, 8]), item([]), item([9])])
    assert out.sample_rows() == [[3, 4, 0], [1], [5, 2]]
    assert out.num_draft_tokens == 3
