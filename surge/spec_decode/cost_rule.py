"""Whether draft tokens pay for themselves in this step, priced by what the step's extra tokens cost.

In: the StepCostModel (measured step and host seconds), and per step the tokens and sequences it holds
before drafts (`begin_step`), then the drafts given out so far (`commit`). Out: `drafts_that_pay`, the most
drafts (up to a bound) whose expected accepted tokens are worth more than they cost.

A token of this step is worth what a step without drafts costs per sequence, t(base) / seqs: an accepted
draft is one token the request does not need a step for. d more drafts cost the device seconds between the
step's bucket now and the bucket with them, t(now + d, drafts) - t(now): nothing inside a bucket (once the
step carries drafts at all), the jump to the next bucket when they cross its end. A request whose next
token is still on the device also gives up the async loop's overlap to propose (its drafts need that token
on the host): `extra_seconds` adds the host seconds of a step, shared by the step's sequences.

At one sequence a step reads every weight for one token, the next bucket costs little more and a fraction
of an accepted token pays; at 32 sequences on a small CPU the step is compute-bound, t(64) is nearly
2 x t(32), and no request's drafts pay for the crossing, so nobody speculates. Unmeasured cases: before any
step was observed (a Scheduler without an engine) every draft pays (acceptance decides alone); while the
step's own bucket without drafts is unmeasured nothing pays (the step measures it); a bucket with drafts
never seen is tried by one request per step (which measures it).
"""

from __future__ import annotations

from typing import Callable, Optional

from surge.spec_decode.step_cost import StepCostModel


class CostRule:
    def __init__(self, model: StepCostModel) -> None:
        self.model = model
        self._base_tokens = 0
        self._num_seqs = 1
        self._num_drafts = 0  # drafts given out in this step so far
        self._explored = False  # a request already tried an unmeasured bucket this step

    def begin_step(self, num_base_tokens: int, num_seqs: int) -> None:
        self._base_tokens = max(num_base_tokens, 1)
        self._num_seqs = max(num_seqs, 1)
        self._num_drafts = 0
        self._explored = False

    def token_value(self) -> Optional[float]:
        """Device seconds one token of this step is worth: a step without drafts per sequence."""
        seconds = self.model.seconds(self._base_tokens, False)
        return None if seconds is None else seconds / self._num_seqs

    def price(self, num_drafts: int) -> Optional[float]:
        """Device seconds `num_drafts` more drafts add to this step; None when that step shape was never measured."""
        now = self._base_tokens + self._num_drafts
        before = self.model.seconds(now, self._num_drafts > 0)
        after = self.model.seconds(now + num_drafts, True)
        if before is None or after is None:
            return None
        if self._num_drafts > 0 and self.model.bucket(now) == self.model.bucket(now + num_drafts):
            return 0.0
        return max(after - before, 0.0)

    def sync_seconds(self) -> float:
        """A request's share of the async overlap it gives up by waiting for its last token on the host."""
        host = self.model.host_seconds
        return 0.0 if host is None else host / self._num_seqs

    def drafts_that_pay(self, max_drafts: int, expected_accepted: Callable[[int], float],
                        extra_seconds: float = 0.0) -> int:
        """The most drafts d <= max_drafts with expected_accepted(d) x token value > price(d) + extra_seconds."""
        if max_drafts <= 0:
            return 0
        if self.model.num_observed_steps == 0:
            return max_drafts
        value = self.token_value()
        if value is None:
            return 0
        for num_drafts in range(max_drafts, 0, -1):
            gain = expected_accepted(num_drafts) * value
            price = self.price(num_drafts)
            if price is None:
                if not self._explored and gain > extra_seconds:
                    return num_drafts
                continue
            if gain > price + extra_seconds:
                return num_drafts
        return 0

    def commit(self, num_drafts: int) -> None:
        """`num_drafts` drafts join this step."""
        if num_drafts <= 0:
            return
        if self.model.num_observed_steps and self.price(num_drafts) is None:
            self._explored = True
        self._num_drafts += num_drafts


__all__ = ["CostRule"]
