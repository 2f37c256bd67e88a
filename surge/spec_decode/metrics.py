"""Counters of speculative decoding, with vLLM's meanings (exported under `surge:` by the server).

In: one record per verification (drafts proposed, drafts accepted). Out: totals and the histogram of
accepted lengths (index a = verifications that accepted a drafts), as a `SpecDecodeStats` snapshot
(surge.spec_decode.stats) for Engine.stats() and /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from surge.spec_decode.stats import DraftModelStats, SpecDecodeStats, SuffixIndexStats


@dataclass
class SpecDecodeMetrics:
    method: str
    max_drafts: int
    num_drafts: int = 0  # verifications (requests-steps that carried drafts)
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    acceptance_lengths: list = field(default_factory=list)

    def __post_init__(self) -> None:
        self.acceptance_lengths = [0] * (self.max_drafts + 1)

    def record(self, num_drafts: int, num_accepted: int) -> None:
        self.num_drafts += 1
        self.num_draft_tokens += num_drafts
        self.num_accepted_tokens += num_accepted
        self.acceptance_lengths[num_accepted] += 1

    def stats(self, suffix: Optional[SuffixIndexStats] = None,
              draft: Optional[DraftModelStats] = None) -> SpecDecodeStats:
        """A snapshot of the counters, with the suffix index's or draft model's part when the method has one."""
        return SpecDecodeStats(method=self.method, num_drafts=self.num_drafts, num_draft_tokens=self.num_draft_tokens,
                               num_accepted_tokens=self.num_accepted_tokens,
                               acceptance_lengths=tuple(self.acceptance_lengths), suffix=suffix, draft=draft)


__all__ = ["SpecDecodeMetrics"]
