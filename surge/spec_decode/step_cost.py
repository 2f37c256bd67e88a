"""What a step costs, learnt online: device seconds by compiled token bucket, and host seconds per step.

In: after each step the engine reconciles, the token count it was scheduled with, whether it carried draft
tokens, and the device seconds it took (`observe_step`); after each engine iteration of the async loop, the
host seconds it spent (`observe_host`). Out: `seconds(num_tokens, with_drafts)`, the running mean for the
bucket that count is padded to (None until such a step was seen), `bucket(num_tokens)`, and
`host_seconds`. A step is priced by its bucket, not its token count, because the padded program
computes the whole bucket: more tokens inside a bucket are free, one more past its end costs the next
bucket. Steps with drafts are kept apart because they also compute logits at every draft row.

Only the proposals depend on these figures, never the tokens (verification keeps outputs exact), so a
timing-dependent cost model changes speed, not results.
"""

from __future__ import annotations

import bisect
from typing import Optional, Sequence

# Weight of the newest observation in the running means.
_SMOOTHING = 0.25


class StepCostModel:
    def __init__(self, token_buckets: Sequence[int] = ()) -> None:
        """`token_buckets`: the compiled token counts (engine.token_buckets resolved); empty = every count its own."""
        self.token_buckets = sorted(set(token_buckets))
        self._seconds: dict[tuple[int, bool], float] = {}
        self.host_seconds: Optional[float] = None
        self.num_observed_steps = 0

    def bucket(self, num_tokens: int) -> int:
        index = bisect.bisect_left(self.token_buckets, num_tokens)
        return self.token_buckets[index] if index < len(self.token_buckets) else num_tokens

    def observe_step(self, num_tokens: int, with_drafts: bool, seconds: float) -> None:
        key = (self.bucket(num_tokens), with_drafts)
        previous = self._seconds.get(key)
        self._seconds[key] = seconds if previous is None else (1 - _SMOOTHING) * previous + _SMOOTHING * seconds
        self.num_observed_steps += 1

    def observe_host(self, seconds: float) -> None:
        previous = self.host_seconds
        self.host_seconds = seconds if previous is None else (1 - _SMOOTHING) * previous + _SMOOTHING * seconds

    def seconds(self, num_tokens: int, with_drafts: bool) -> Optional[float]:
        return self._seconds.get((self.bucket(num_tokens), with_drafts))


__all__ = ["StepCostModel"]
