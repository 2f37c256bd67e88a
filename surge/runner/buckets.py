"""Shape buckets of the jitted step.

In: the engine config (token budget, max_num_seqs, optional explicit buckets).
Out: the (num_tokens, num_seqs) pairs the step is compiled for, and the pair a
given batch is padded to. With no explicit seq buckets each token bucket T is
paired with S = min(T, max_num_seqs) (a batch never has more sequences than
tokens), which keeps the number of compiled programs equal to the token buckets.
"""

from __future__ import annotations

import bisect

from surge.config import EngineConfig


def powers_of_two(low: int, high: int) -> list[int]:
    out, value = [], low
    while value < high:
        out.append(value)
        value *= 2
    out.append(high)
    return sorted(set(out))


class Buckets:
    def __init__(self, engine: EngineConfig) -> None:
        budget, max_seqs = engine.max_num_batched_tokens, engine.max_num_seqs
        tokens = sorted(set(engine.token_buckets)) or powers_of_two(1, budget)
        if tokens[-1] < budget:
            tokens.append(budget)
        self.max_num_seqs = max_seqs
        if engine.seq_buckets:
            seqs = sorted(set(s for s in engine.seq_buckets if s <= max_seqs) | {max_seqs})
            self.pairs = [(t, s) for t in tokens for s in seqs if s <= t or s == seqs[0]]
        else:
            self.pairs = [(t, min(t, max_seqs)) for t in tokens]
        self.pairs.sort()

    def select(self, num_tokens: int, num_seqs: int) -> tuple[int, int]:
        """The smallest compiled (T, S) that holds the batch."""
        index = bisect.bisect_left(self.pairs, (num_tokens, 0))
        for t, s in self.pairs[index:]:
            if t >= num_tokens and s >= num_seqs:
                return t, s
        raise ValueError(f"a batch of {num_tokens} tokens / {num_seqs} sequences exceeds every bucket "
                         f"(largest {self.pairs[-1]})")

    def __iter__(self):
        return iter(self.pairs)

    def __len__(self) -> int:
        return len(self.pairs)
