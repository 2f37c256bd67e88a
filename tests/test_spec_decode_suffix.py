"""surge.spec_decode.suffix: the bounded cross-request index, own-token matches, the proposal rule."""

from __future__ import annotations

import pytest

import surge
from surge.config import ConfigError
from surge.spec_decode.suffix import MAX_CANDIDATES, SuffixIndex, SuffixProposer, follow, own_candidates


def test_proposes_what_followed_the_longest_match():
    index = SuffixIndex(max_tokens=100, min_match=2, max_match=8)
    index.add([1, 2, 3, 4, 5, 6])
    index.add([9, 3, 4, 7, 8])
    proposer = SuffixProposer(100, 2, 8)
    proposer.index = index
    # (3, 4) occurs in both; (2, 3, 4) only in the first: the longer match wins.
    assert proposer.propose([50, 2, 3, 4], 3) == [5, 6]
    assert proposer.propose([50, 9, 3, 4], 3) == [7, 8]
    # Equal match lengths: the most recent occurrence breaks the tie.
    assert proposer.propose([50, 3, 4], 3) == [7, 8]
    assert proposer.propose([50, 4, 3], 3) == []  # no occurrence
    assert proposer.propose([3, 4], 1) == [7]
    assert proposer.propose([3, 4], 0) == []


def test_the_most_frequent_continuation_wins_then_the_path_narrows():
    index = SuffixIndex(max_tokens=1000, min_match=2, max_match=4)
    for tail in ([7, 8, 1], [7, 8, 2], [7, 9, 3]):
        index.add([5, 6] + tail)
    # After (5, 6): 7 twice then 8 twice (of the two that continued with 7), then 1 vs 2: the latest (2).
    assert follow(index.candidates([0, 5, 6]), 4) == [7, 8, 2]


def test_own_tokens_match_and_count_as_newest():
    tokens = [4, 5, 6, 1, 4, 5, 9, 2, 4, 5]
    found = own_candidates(tokens, 2, 8)
    assert [(m, e) for m, _, e in found] == [(2, 2), (2, 6)]
    assert follow(found, 3) == [9, 2, 4]  # tie on count: the latest
    proposer = SuffixProposer(100, 2, 8)
    proposer.add_finished([3], [4, 5, 6, 6, 6])  # indexed as [3, 4, 5, 6, 6, 6]
    # Own occurrences (1 each for 6 and 9 after (4, 5)) and the indexed one (6): 6 has two votes.
    assert proposer.propose(tokens, 2) == [6, 1]
    assert proposer.propose([8, 3, 4, 5], 2) == [6, 6]  # the match (3, 4, 5) spans the indexed prompt tail


def test_bounded_memory_evicts_the_oldest():
    index = SuffixIndex(max_tokens=10, min_match=1, max_match=4)
    index.add([1, 2, 3, 4])
    index.add([5, 6, 7, 8])
    assert index.num_tokens == 8 and index.num_sequences == 2 and index.num_entries == 6
    index.add([9, 1, 5])  # 11 > 10: the oldest goes
    assert index.num_tokens == 7 and index.num_sequences == 2 and index.num_entries == 5
    assert follow(index.candidates([1]), 2) == [5]  # only the newest (9, 1, 5) still has a 1
    assert index.candidates([2]) == [] and index.candidates([3]) == []
    index.add(list(range(100, 130)))  # longer than the bound: its last 10 tokens, alone
    assert index.num_tokens == 10 and index.num_sequences == 1 and index.num_entries == 9
    assert follow(index.candidates([125]), 3) == [126, 127, 128]
    assert index.candidates([115]) == []
    for i in range(50):  # many adds stay within the bound; the table never outgrows the tokens
        index.add([i % 7, i % 5, i % 3, i])
        assert index.num_tokens <= 10 and index.num_entries <= index.num_tokens
    index.add([1])  # too short to index anything
    assert index.num_tokens <= 10


def test_candidates_per_lookup_are_bounded():
    index = SuffixIndex(max_tokens=10_000, min_match=1, max_match=2)
    for i in range(3 * MAX_CANDIDATES):
        index.add([42, i])
    found = index.candidates([42])
    assert len(found) == MAX_CANDIDATES
    assert follow(found, 1) == [3 * MAX_CANDIDATES - 1]  # all tie on count: the most recent


def test_bad_bounds_are_refused():
    with pytest.raises(ValueError, match="max_match"):
        SuffixIndex(10, 3, 2)


@pytest.mark.parametrize("key, value, message", [
    ("engine.speculative.suffix_max_tokens", 0, "must be >= 1"),
    ("engine.speculative.suffix_min_match", 0, "must be >= 1"),
    ("engine.speculative.suffix_max_match", 1, "must be >= engine.speculative.suffix_min_match"),
])
def test_suffix_config_is_validated(key, value, message):
    with pytest.raises(ConfigError, match=message):
        surge.make_config(**{key: value})


def test_suffix_config_defaults():
    spec = surge.make_config(speculative_method="suffix").engine.speculative
    assert spec.method == "suffix" and spec.suffix_max_tokens == 65536
    assert (spec.suffix_min_match, spec.suffix_max_match) == (2, 16)
