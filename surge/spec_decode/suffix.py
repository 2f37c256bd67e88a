"""Suffix decoding: drafts from what followed the longest match of the request's recent tokens.

In: finished requests' outputs (`SuffixIndex.add`, each with up to `max_match` of its prompt's last
tokens before it, so a match may span the prompt/output boundary), and per proposal a live request's
token ids (prompt then output) and the most drafts wanted. Out: up to k draft ids.

Where matches are looked for: a bounded cross-request index of recent outputs (repetitive agent and
code-edit traffic repeats earlier answers) and the request's own prompt and output (quoting, editing).
An occurrence matches when at least `min_match` of the request's last tokens precede it; its match
length is how many of the last `max_match` tokens agree, counted backwards. Only occurrences with the
longest match length are kept, and the draft follows them token by token like a path down a suffix
tree: each next token is the one most of the remaining occurrences continue with (ties: the most
recent occurrence, the request's own tokens counting as newest), and occurrences that continue
differently drop out; the draft ends when none continues or k tokens are drafted.

Bounded memory: the index holds at most `max_tokens` tokens; adding a sequence evicts the oldest
sequences (and their entries in the lookup table) until it fits, and a sequence longer than the bound
keeps its last `max_tokens` tokens. Lookup cost: one dict probe for the last `min_match` tokens, then
at most `MAX_CANDIDATES` of the most recent occurrences are compared backwards (up to `max_match`
tokens each); the request's own tokens cost one numpy pass, as n-gram lookup does.
"""

from __future__ import annotations

from collections import deque
from itertools import islice
from typing import Sequence

import numpy as np

from surge.spec_decode.stats import SuffixIndexStats

# Most recent occurrences of the last min_match tokens compared per lookup (the cost bound).
MAX_CANDIDATES = 64


class SuffixIndex:
    def __init__(self, max_tokens: int, min_match: int, max_match: int) -> None:
        if max_tokens < 1 or min_match < 1 or max_match < min_match:
            raise ValueError(f"SuffixIndex(max_tokens={max_tokens}, min_match={min_match}, max_match={max_match}): "
                             f"need max_tokens >= 1 and 1 <= min_match <= max_match")
        self.max_tokens = max_tokens
        self.min_match = min_match
        self.max_match = max_match
        self._sequences: deque = deque()  # (serial, tokens as a tuple), oldest first
        self._by_serial: dict[int, tuple] = {}
        # The last min_match tokens before a position -> deque of (serial, position), oldest first.
        self._table: dict[tuple, deque] = {}
        self._next_serial = 0
        self.num_tokens = 0

    @property
    def num_sequences(self) -> int:
        return len(self._sequences)

    @property
    def num_entries(self) -> int:
        return sum(len(entries) for entries in self._table.values())

    def add(self, token_ids: Sequence[int]) -> None:
        """Index a sequence (a finished request's output with its prompt's last tokens before it)."""
        tokens = tuple(int(t) for t in token_ids[-self.max_tokens:])
        if len(tokens) <= self.min_match:  # no position has min_match tokens before it
            return
        while self._sequences and self.num_tokens + len(tokens) > self.max_tokens:
            self._evict_oldest()
        serial = self._next_serial
        self._next_serial += 1
        self._sequences.append((serial, tokens))
        self._by_serial[serial] = tokens
        self.num_tokens += len(tokens)
        n = self.min_match
        for position in range(n, len(tokens)):
            self._table.setdefault(tokens[position - n:position], deque()).append((serial, position))

    def _evict_oldest(self) -> None:
        serial, tokens = self._sequences.popleft()
        del self._by_serial[serial]
        self.num_tokens -= len(tokens)
        n = self.min_match
        for position in range(n, len(tokens)):
            key = tokens[position - n:position]
            entries = self._table.get(key)
            if entries is None:  # a key repeated within the sequence: its entries went at its first
                continue
            # A key's entries are in insertion order, so the oldest sequence's are at the front.
            while entries and entries[0][0] == serial:
                entries.popleft()
            if not entries:
                del self._table[key]

    def candidates(self, context: Sequence[int]) -> list[tuple[int, tuple, int]]:
        """(match length, tokens, position after the match) of the most recent indexed occurrences."""
        n = self.min_match
        if len(context) < n:
            return []
        entries = self._table.get(tuple(int(t) for t in context[-n:]))
        if not entries:
            return []
        limit = min(self.max_match, len(context))
        found = []
        # The most recent occurrences, newest first (no copy of a long deque), reversed to oldest first below.
        for serial, position in islice(reversed(entries), MAX_CANDIDATES):
            tokens = self._by_serial[serial]
            length = n
            while length < limit and position - length - 1 >= 0 and \
                    tokens[position - length - 1] == context[len(context) - length - 1]:
                length += 1
            found.append((length, tokens, position))
        found.reverse()
        return found


def own_candidates(token_ids: Sequence[int], min_match: int, max_match: int) -> list[tuple[int, np.ndarray, int]]:
    """Occurrences of the sequence's last min_match tokens earlier in itself, with their match lengths."""
    tokens = np.asarray(token_ids, dtype=np.int64)
    length = len(tokens)
    n = min_match
    if length <= n:
        return []
    windows = np.lib.stride_tricks.sliding_window_view(tokens[:length - 1], n)
    # Window i covers tokens[i:i + n]; a hit is followed by tokens[i + n] (the suffix itself is excluded).
    hits = np.flatnonzero((windows == tokens[length - n:]).all(axis=1))
    if not hits.size:
        return []
    ends = hits + n  # position after each occurrence
    matched = np.full(hits.size, n)
    alive = np.ones(hits.size, dtype=bool)
    for extra in range(n, min(max_match, length)):
        before = ends - extra - 1
        alive &= before >= 0
        alive[alive] &= tokens[before[alive]] == tokens[length - extra - 1]
        if not alive.any():
            break
        matched += alive
    return [(int(m), tokens, int(e)) for m, e in zip(matched, ends)]


def follow(candidates: list, k: int) -> list[int]:
    """The draft along the occurrences with the longest match: each token the one most of them continue with.

    `candidates` are (match length, tokens, position after the match) in increasing recency.
    """
    if not candidates or k <= 0:
        return []
    best = max(c[0] for c in candidates)
    alive = [(tokens, position) for length, tokens, position in candidates if length == best]
    drafts: list[int] = []
    while len(drafts) < k:
        votes: dict[int, list] = {}  # token -> [count, recency of its latest occurrence]
        offset = len(drafts)
        for recency, (tokens, position) in enumerate(alive):
            if position + offset < len(tokens):
                token = int(tokens[position + offset])
                vote = votes.setdefault(token, [0, recency])
                vote[0] += 1
                vote[1] = recency
        if not votes:
            break
        token = max(votes, key=lambda t: tuple(votes[t]))
        drafts.append(token)
        alive = [(tokens, position) for tokens, position in alive
                 if position + offset < len(tokens) and int(tokens[position + offset]) == token]
    return drafts


class SuffixProposer:
    """Suffix decoding for the Speculator: the cross-request index plus each request's own tokens."""

    def __init__(self, max_tokens: int, min_match: int, max_match: int) -> None:
        self.index = SuffixIndex(max_tokens, min_match, max_match)

    def propose(self, token_ids: Sequence[int], k: int) -> list[int]:
        index = self.index
        found = index.candidates(token_ids) + own_candidates(token_ids, index.min_match, index.max_match)
        return follow(found, k)

    def add_finished(self, prompt_token_ids: Sequence[int], output_token_ids: Sequence[int]) -> None:
        if len(output_token_ids):
            self.index.add(list(prompt_token_ids)[-self.index.max_match:] + list(output_token_ids))

    def stats(self) -> SuffixIndexStats:
        return SuffixIndexStats(index_tokens=self.index.num_tokens, index_sequences=self.index.num_sequences)


__all__ = ["MAX_CANDIDATES", "SuffixIndex", "SuffixProposer", "follow", "own_candidates"]
