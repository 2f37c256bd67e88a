"""One request's position in its grammar.

In: the request's own llguidance matcher (copied from its ``CompiledGrammar``)
and, per generated token, the token the sampler chose. Out: the tokens the
grammar forces right after it (fast-forward: they are appended to the request
and computed in its next step together), whether the grammar has finished,
and, through ``surge.structured.bitmask``, the next step's allowed tokens.

The scheduler calls ``accept`` once per sampled token; the runner asks
``matcher`` for the mask of every row that samples. Speculative decoding checks
drafts with ``legal_drafts`` and builds each verified position's mask by
consuming the drafts before it (``bitmask``); both roll the matcher back. A token the matcher
refuses (only possible when something outside the mask chose it) is logged
and leaves the matcher failed, whose mask then allows only EOS: the request
ends at its next token.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("surge")


class GrammarState:
    def __init__(self, matcher, fast_forward: bool) -> None:
        self.matcher = matcher
        self.fast_forward = fast_forward
        self.num_forced_tokens = 0

    def accept(self, token_id: int, max_forced: int) -> list[int]:
        """Consume the sampled token; return (and consume) up to ``max_forced`` tokens the grammar forces next."""
        if self.matcher.is_stopped():  # the grammar is done: only EOS (already handled as a stop) follows
            return []
        if not self.matcher.consume_token(token_id):
            logger.warning("grammar refused token %d: %s", token_id, self.matcher.get_error())
            return []
        if not self.fast_forward or max_forced <= 0 or self.matcher.is_stopped():
            return []
        forced = self.matcher.compute_ff_tokens()[:max_forced]
        if forced and not self.matcher.consume_tokens(forced):
            logger.warning("grammar refused its own forced tokens %s: %s", forced, self.matcher.get_error())
            return []
        self.num_forced_tokens += len(forced)
        return forced

    def legal_drafts(self, draft_token_ids: list[int]) -> list[int]:
        """The drafts up to the first one the grammar refuses, and cut after one that ends the grammar or
        makes it force tokens (those join the request unsampled, so nothing after them is verified).
        The matcher is left as it was (the drafts it consumed to check are rolled back)."""
        matcher = self.matcher
        if matcher.is_stopped() or not draft_token_ids:
            return []
        legal = draft_token_ids[:matcher.validate_tokens(draft_token_ids)]
        kept = 0
        for token_id in legal:
            if not matcher.consume_token(token_id):
                break
            kept += 1
            if matcher.is_stopped() or (self.fast_forward and matcher.compute_ff_tokens()):
                break
        matcher.rollback(kept)
        return legal[:kept]

    @property
    def is_finished(self) -> bool:
        """Nothing but EOS may follow (the grammar matched fully, or the matcher failed)."""
        return self.matcher.is_stopped()


__all__ = ["GrammarState"]
