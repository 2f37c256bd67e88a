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
            top = _top_dict(per_token, num_top)
        result.top_logprobs.append(top)
        result.text_offset.append(offset)
        offset += len(text)
    return result


def _top_dict(entries: Dict[int, object], num_top: int) -> dict:
    """Legacy top_logprobs are keyed by text; tokens that print alike keep the most likely one's value."""
    top: dict = {}
    for tid, e in _top(entries, num_top):
        top.setdefault(_token_text(e, tid), e.logprob)
    return top


def delta_entries(completion) -> tuple[list[int], list]:
    """The token ids and logprob entries that arrived with this output's delta."""
    count = len(completion.delta_token_ids)
    if not count or completion.logprobs is None:
        return [], []
    return list(completion.delta_token_ids), list(completion.logprobs[-count:])


def prompt_completion_logprobs(prompt_token_ids: Sequence[int], entries: Sequence[Optional[Dict[int, object]]],
                               num_top: int, decode) -> CompletionLogprobs:
    """The echoed prompt's part of legacy completions logprobs: the first token's (and any missing) is null."""
    result = CompletionLogprobs()
    offset = 0
    for token_id, per_token in zip(prompt_token_ids, entries):
        scored = per_token.get(token_id) if per_token is not None else None
        text = _token_text(scored, token_id) if scored is not None else decode(token_id)
        result.tokens.append(text)
        result.token_logprobs.append(scored.logprob if scored is not None else None)
        top = None
        if scored is not None and num_top > 0:
            top = _top_dict(per_token, num_top)
        result.top_logprobs.append(top)
        result.text_offset.append(offset)
        offset += len(text)
    return result


def join_logprobs(first: CompletionLogprobs, second: Optional[CompletionLogprobs]) -> CompletionLogprobs:
    if second is None:
        return first
    return CompletionLogprobs(text_offset=first.text_offset + second.text_offset,
                              token_logprobs=first.token_logprobs + second.token_logprobs,
                              tokens=first.tokens + second.tokens, top_logprobs=first.top_logprobs + second.top_logprobs)


def vllm_prompt_logprobs(entries: Sequence[Optional[Dict[int, object]]]) -> list:
    """vLLM's `prompt_logprobs`: per prompt token None or {token id (str): {logprob, rank, decoded_token}}."""
    return [None if per_token is None else
            {str(tid): {"logprob": e.logprob, "rank": e.rank, "decoded_token": e.decoded_token}
             for tid, e in per_token.items()} for per_token in entries]
