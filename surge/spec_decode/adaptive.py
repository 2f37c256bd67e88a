"""Adaptive k: per request, stop proposing while speculation does not pay, and probe again later.

In: after each attempt of a request (a verification, or a step where the proposer found nothing),
how many drafts it had and how many were accepted. Out: whether the request proposes at a given
output length. A verification of 1 + d tokens costs more than one decode token, and a speculating
request gives up the async loop's overlap (its drafts need its last token on the host), so a request
whose running mean of accepted tokens per attempt falls below `min_accepted` backs off: it proposes
nothing for `backoff_steps` of its own tokens, doubling (up to 64x) each time a probe fails again.
Counted in tokens, not time, so the behaviour is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

# Weight of the newest attempt in the running mean of accepted tokens.
_SMOOTHING = 0.5
_MAX_BACKOFF_FACTOR = 64


@dataclass
class AdaptiveK:
    min_accepted: float
    backoff_steps: int
    # Running mean of accepted tokens per attempt; starts optimistic so a request tries at once.
    mean_accepted: float = 1.0
    # The request proposes again once it has this many output tokens.
    resume_at: int = 0
    backoff_factor: int = 1

    def proposes(self, num_output_tokens: int) -> bool:
        return num_output_tokens >= self.resume_at

    def record(self, num_output_tokens: int, num_drafts: int, num_accepted: int) -> None:
        del num_drafts
        self.mean_accepted = (1 - _SMOOTHING) * self.mean_accepted + _SMOOTHING * num_accepted
        if self.min_accepted <= 0:
            return
        if self.mean_accepted < self.min_accepted:
            self.resume_at = num_output_tokens + self.backoff_steps * self.backoff_factor
            self.backoff_factor = min(2 * self.backoff_factor, _MAX_BACKOFF_FACTOR)
            self.mean_accepted = self.min_accepted  # the probe after the pause decides afresh
        elif num_accepted > 0:
            self.backoff_factor = 1


__all__ = ["AdaptiveK"]
