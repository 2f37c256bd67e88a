"""One request's position in its grammar.

In: the request's own llguidance matcher (copied from its ``CompiledGrammar``)
and, per generated token, the token the sampler chose. Out: the tokens the
grammar forces right after it (fast-forward: they are appended to the request
and computed in its next step together), whether the grammar has finished,
and, through ``surge.structured.bitmask``, the next step's allowed tokens.

The scheduler calls ``accept`` once per sampled token; the runner asks
``matcher`` for the mask of every row that samples. A token the matcher
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

    @property
    def is_finished(self) -> bool:
        """Nothing but EOS may follow (the grammar matched fully, or the matcher failed)."""
        return self.matcher.is_stopped()


__all__ = ["GrammarState"]
