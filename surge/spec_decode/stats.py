"""What speculative decoding reports: one frozen snapshot, with vLLM's meanings.

In: the speculator's running counters (`SpecDecodeMetrics`) and, for the methods that have them, the
suffix index's size and the draft model's pool. Out: `SpecDecodeStats`, which the engine reports as
`EngineStats.spec_decode` (None when engine.speculative.method is none) and the server exports under
`surge:spec_decode_*`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class SuffixIndexStats:
    # Tokens held by the cross-request suffix index (method=suffix).
    index_tokens: int
    # Finished sequences the index holds.
    index_sequences: int


@dataclass(frozen=True)
class DraftModelStats:
    # Usable pages of the draft model's own KV pool (method=draft_model).
    num_total_pages: int
    # Of those, pages in its free queue.
    num_free_pages: int
    # Requests holding draft state (and draft pages).
    num_requests: int
    # Device calls of the draft model (one per step that proposed, for all its requests).
    num_calls: int


@dataclass(frozen=True)
class SpecDecodeStats:
    # engine.speculative.method: ngram, suffix or draft_model.
    method: str
    # Verifications: request-steps that carried draft tokens.
    num_drafts: int
    # Draft tokens proposed and verified.
    num_draft_tokens: int
    # Of those, draft tokens the target accepted.
    num_accepted_tokens: int
    # Entry a: verifications that accepted exactly a drafts (a = 0 .. num_speculative_tokens).
    acceptance_lengths: tuple[int, ...]
    # The suffix index's size; None unless method=suffix.
    suffix: Optional[SuffixIndexStats] = None
    # The draft model's pool and calls; None unless method=draft_model.
    draft: Optional[DraftModelStats] = None

    @property
    def acceptance_rate(self) -> float:
        """Accepted draft tokens / draft tokens (0.0 before any verification)."""
        return self.num_accepted_tokens / self.num_draft_tokens if self.num_draft_tokens else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        """Tokens emitted per verification: accepted drafts plus the target's own token (0.0 before any)."""
        return 1 + self.num_accepted_tokens / self.num_drafts if self.num_drafts else 0.0


__all__ = ["DraftModelStats", "SpecDecodeStats", "SuffixIndexStats"]
