"""Speculative decoding: draft tokens proposed per request, verified exactly in the target's one ragged step.

A speculating request in decode runs its last token plus k draft tokens as one chunk of 1 + k query
tokens; the step samples a token from the logits at every one of those positions, each with the
request's own seed and the output index of that position, exactly as non-speculative decoding would.
`acceptance.num_accepted` keeps the drafts up to the first one the target did not sample; the target's
token there (or after the last draft, the bonus token) is emitted too. The scheduler rolls back the
rejected positions (num_computed_tokens, pages past the accepted length).

Modules: `ngram` (prompt-lookup proposer), `suffix` (cross-request suffix index), `draft_model` (a
smaller model with the target's tokenizer, its own KV pool and compiled program, proposing its greedy
tokens for all of a step's requests in one device call), `acceptance` (the accept rule), `adaptive`
(per-request k that backs off when speculation does not pay), `speculator` (what the scheduler calls),
`metrics`.
"""

from surge.spec_decode.acceptance import num_accepted
from surge.spec_decode.speculator import Speculator

__all__ = ["Speculator", "num_accepted"]
