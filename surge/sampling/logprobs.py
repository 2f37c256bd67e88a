"""Log-probabilities of one token position: the one shape they take from the sampler to the server.

In: a host copy of the sampler's arrays (`SamplerOutput`: per row the chosen
token, its log-prob and rank under the raw model distribution, the top-k ids
and log-probs), read row by row by `read_rows`. Out: one frozen
`TokenLogprobs` per position. The runner makes them, the engine carries them
unchanged in `CompletionOutput.logprobs` and `RequestOutput.prompt_logprobs`
(its output side, which holds the tokenizer, fills in `texts`), and only
`surge.server.logprobs` turns them into OpenAI JSON. Prompt log-probs use the
same type, with the prompt token as `token_id`.

`TokenLogprobs` also reads as vLLM's dict token id -> `Logprob` (the chosen
token first, with its own rank, then the top alternatives not equal to it,
ranked 1..k by position), so callers written for vLLM work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class Logprob:
    """Log-probability of one token, its rank in the model's distribution (1 = most likely), and its text."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


@dataclass(frozen=True)
class TokenLogprobs(Mapping):
    """One position: the chosen (sampled or prompt) token's log-prob and rank, and the top alternatives."""

    token_id: int
    logprob: float
    # 1 + the number of tokens more likely than token_id.
    rank: int
    # (token id, log-prob) of the most likely tokens, most likely first; as many as the request asked for.
    top: Tuple[Tuple[int, float], ...] = ()
    # Decoded text of token_id, then of each entry of top; None until the engine's output side decodes them.
    texts: Optional[Tuple[str, ...]] = None

    def with_texts(self, decode: Callable[[int], str]) -> "TokenLogprobs":
        """The same log-probs with every token's text filled in by ``decode``."""
        texts = (decode(self.token_id),) + tuple(decode(token_id) for token_id, _ in self.top)
        return TokenLogprobs(self.token_id, self.logprob, self.rank, self.top, texts)

    def text(self) -> Optional[str]:
        """The chosen token's text (None before decoding)."""
        return None if self.texts is None else self.texts[0]

    def top_texts(self) -> Sequence[Optional[str]]:
        """The text of each entry of ``top`` (None before decoding)."""
        return (None,) * len(self.top) if self.texts is None else self.texts[1:]

    # ---- vLLM's view: token id -> Logprob -----------------------------------------------------------

    def __getitem__(self, token_id: int) -> Logprob:
        if token_id == self.token_id:
            return Logprob(self.logprob, self.rank, self.text())
        for position, ((top_id, logprob), text) in enumerate(zip(self.top, self.top_texts()), start=1):
            if top_id == token_id:
                return Logprob(logprob, position, text)
        raise KeyError(token_id)

    def __iter__(self) -> Iterator[int]:
        yield self.token_id
        for top_id, _ in self.top:
            if top_id != self.token_id:
                yield top_id

    def __len__(self) -> int:
        return 1 + sum(top_id != self.token_id for top_id, _ in self.top)


def read_rows(arrays, rows: Sequence[int], num_top: int) -> List[TokenLogprobs]:
    """``TokenLogprobs`` of ``rows`` of a host copy of a `SamplerOutput`, keeping the first ``num_top`` alternatives."""
    index = np.asarray(rows, np.intp)
    token_ids = arrays.token_ids[index].tolist()
    logprobs = arrays.logprobs[index].tolist()
    ranks = arrays.ranks[index].tolist()
    top_ids = arrays.top_ids[index, :num_top].tolist()
    top_logprobs = arrays.top_logprobs[index, :num_top].tolist()
    return [TokenLogprobs(token_id, logprob, rank, tuple(zip(ids, values)))
            for token_id, logprob, rank, ids, values in zip(token_ids, logprobs, ranks, top_ids, top_logprobs)]


__all__ = ["Logprob", "TokenLogprobs", "read_rows"]
