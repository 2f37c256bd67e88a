"""Engine log-probabilities to OpenAI's two shapes.

In: a completion's generated token ids and, per token, the engine's dict
token id -> `Logprob(logprob, rank, decoded_token)` (the sampled token plus
the top alternatives), and how many alternatives the request asked for.
Out: chat's `{"content": [{"token", "logprob", "bytes", "top_logprobs"}]}` or
the legacy completions' `{"tokens", "token_logprobs", "top_logprobs",
"text_offset"}`.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence

from surge.server.protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


def _token_text(entry, token_id: int) -> str:
    return entry.decoded_token if entry.decoded_token is not None else f"<token {token_id}>"


def _top(entries: Dict[int, object], num_top: int) -> list[tuple[int, object]]:
    ranked = [(tid, e) for tid, e in entries.items() if e.rank is not None and e.rank <= num_top]
    ranked.sort(key=lambda item: item[1].rank)
    return ranked[:num_top]


def chat_logprobs(token_ids: Sequence[int], entries: Sequence[Dict[int, object]], num_top: int) -> ChoiceLogprobs:
    content = []
    for token_id, per_token in zip(token_ids, entries):
        sampled = per_token.get(token_id)
        if sampled is None:
            continue
        text = _token_text(sampled, token_id)
        top = [TopLogprob(token=_token_text(e, tid), logprob=e.logprob, bytes=list(_token_text(e, tid).encode()))
               for tid, e in _top(per_token, num_top)]
        content.append(TokenLogprob(token=text, logprob=sampled.logprob, bytes=list(text.encode()),
                                    top_logprobs=top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(token_ids: Sequence[int], entries: Sequence[Dict[int, object]], num_top: int,
                        start_offset: int = 0) -> CompletionLogprobs:
    result = CompletionLogprobs()
    offset = start_offset
    for token_id, per_token in zip(token_ids, entries):
        sampled = per_token.get(token_id)
        if sampled is None:
            continue
        text = _token_text(sampled, token_id)
        result.tokens.append(text)
        result.token_logprobs.append(sampled.logprob)
        top: Optional[dict] = None
        if num_top > 0:
            top = {_token_text(e, tid): e.logprob for tid, e in _top(per_token, num_top)}
        result.top_logprobs.append(top)
        result.text_offset.append(offset)
        offset += len(text)
    return result


def delta_entries(completion) -> tuple[list[int], list]:
    """The token ids and logprob entries that arrived with this output's delta."""
    count = len(completion.delta_token_ids)
    if not count or completion.logprobs is None:
        return [], []
    return list(completion.delta_token_ids), list(completion.logprobs[-count:])
