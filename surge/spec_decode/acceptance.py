"""The accept rule of verification: how many draft tokens the target keeps.

In: the k draft ids and the k + 1 tokens the target sampled at the request's positions this step
(position i's token is the one that follows draft i - 1; the last is the bonus token).
Out: the number of leading drafts accepted; the emitted tokens are sampled[:accepted + 1].

Why this is the standard rule (accept with probability min(1, p/q), else resample from the residual
max(0, p - q) normalised) and keeps the target's distribution: surge's proposers are deterministic,
so q is one-hot on the draft d. The rule then accepts d with probability p(d) and otherwise draws
from p with d removed, renormalised. The target's own sample at that position, a Gumbel-max draw
from fold_in(key(seed), output index), equals d with probability p(d), and when it differs it is
distributed as p restricted to tokens != d: the same two probabilities. Because the draw is the one
non-speculative decoding makes at that output index, a seeded request gives the same tokens with or
without speculation (greedy rows take the argmax, so temperature 0 is exact greedy acceptance).
"""

from __future__ import annotations

from typing import Sequence


def num_accepted(draft_token_ids: Sequence[int], sampled_token_ids: Sequence[int]) -> int:
    if len(sampled_token_ids) != len(draft_token_ids) + 1:
        raise ValueError(f"{len(sampled_token_ids)} sampled tokens for {len(draft_token_ids)} drafts "
                         f"(expected one more: the bonus token)")
    accepted = 0
    for draft, sampled in zip(draft_token_ids, sampled_token_ids):
        if int(draft) != int(sampled):
            break
        accepted += 1
    return accepted


__all__ = ["num_accepted"]
