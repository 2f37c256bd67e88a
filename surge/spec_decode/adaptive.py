"""Adaptive k: per request, stop proposing while speculation does not pay, and probe again later.

In: after each verification of a request, how many drafts it had and how many were accepted (`record`);
after each lookup, whether the proposer found anything (`record_lookup`); and when the step's cost rule
(surge.spec_decode.cost_rule) priced its drafts out, `priced_out`. Out: whether the request proposes at a
given output length, and what it expects a proposal to bring (`expected_accepted`).

Two pauses, both counted in the request's own tokens (not time):
- acceptance: a request whose running mean of accepted tokens per verification falls below `min_accepted`
  proposes nothing for `backoff_steps` tokens, doubling (up to 64x) each time a probe fails again;
- price: a request whose drafts the cost rule priced out waits `backoff_steps` tokens before it asks again,
  and then asks as if its lookups always found something (its find rate is not known any better while it
  does not look).
A lookup that finds nothing is neither a success nor a failure of speculation: it changes neither the
mean nor the pauses, only the find rate, which scales what the cost rule expects from the next attempt.
"""

from __future__ import annotations

from dataclasses import dataclass

# Weight of the newest attempt in the running means.
_SMOOTHING = 0.5
_MAX_BACKOFF_FACTOR = 64


@dataclass
class AdaptiveK:
    min_accepted: float
    backoff_steps: int
    # Running mean of accepted tokens per verification; starts optimistic so a request tries at once.
    mean_accepted: float = 1.0
    # Running share of lookups that found drafts.
    find_rate: float = 1.0
    # The request proposes again once it has this many output tokens.
    resume_at: int = 0
    backoff_factor: int = 1

    def proposes(self, num_output_tokens: int) -> bool:
        return num_output_tokens >= self.resume_at

    def expected_accepted(self, num_drafts: int, looked_up: bool) -> float:
        """Accepted tokens expected from `num_drafts` drafts; before the lookup, scaled by the find rate."""
        expected = min(self.mean_accepted, float(num_drafts))
        return expected if looked_up else expected * self.find_rate

    def record_lookup(self, found: bool) -> None:
        self.find_rate = (1 - _SMOOTHING) * self.find_rate + _SMOOTHING * float(found)

    def record(self, num_output_tokens: int, num_drafts: int, num_accepted: int) -> None:
        if num_drafts <= 0:  # nothing was verified: no evidence either way
            return
        self.mean_accepted = (1 - _SMOOTHING) * self.mean_accepted + _SMOOTHING * num_accepted
        if self.min_accepted <= 0:
            return
        if self.mean_accepted < self.min_accepted:
            self.resume_at = num_output_tokens + self.backoff_steps * self.backoff_factor
            self.backoff_factor = min(2 * self.backoff_factor, _MAX_BACKOFF_FACTOR)
            self.mean_accepted = self.min_accepted  # the probe after the pause decides afresh
        elif num_accepted > 0:
            self.backoff_factor = 1

    def priced_out(self, num_output_tokens: int) -> None:
        self.resume_at = max(self.resume_at, num_output_tokens + self.backoff_steps)
        self.find_rate = 1.0


__all__ = ["AdaptiveK"]
