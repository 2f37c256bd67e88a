"""Counters of speculative decoding, with vLLM's meanings (exported under `surge:` by the server).

In: one record per verification (drafts proposed, drafts accepted). Out: totals and the histogram of
accepted lengths (index a = verifications that accepted a drafts), for stats() and /metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def as_dict(self) -> dict:
        rate = self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0
        mean = 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0
        return {
            "spec_decode_method": self.method,
            "spec_decode_num_drafts": self.num_drafts,
            "spec_decode_num_draft_tokens": self.num_draft_tokens,
            "spec_decode_num_accepted_tokens": self.num_accepted_tokens,
            "spec_decode_acceptance_rate": rate,
            # Tokens emitted per verification (accepted drafts + the target's own token).
            "spec_decode_mean_acceptance_length": mean,
            "spec_decode_acceptance_lengths": list(self.acceptance_lengths),
        }


__all__ = ["SpecDecodeMetrics"]
