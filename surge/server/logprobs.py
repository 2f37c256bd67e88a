"""Engine log-probabilities to OpenAI's two shapes, and vLLM's prompt_logprobs.

In: per token a `TokenLogprobs` (surge.sampling.logprobs: the token, its
log-prob and rank, the top alternatives most likely first, every text decoded
by the engine's output side), as `CompletionOutput.logprobs` and
`RequestOutput.prompt_logprobs` carry them, and how many alternatives the
request asked for. Out: chat's `{"content": [{"token", "logprob", "bytes",
"top_logprobs"}]}`, the legacy completions' `{"tokens", "token_logprobs",
"top_logprobs", "text_offset"}`, or vLLM's `prompt_logprobs` list. This is the
only place log-probs become JSON.
"""

from __future__ import annotations

from typing import Optional, Sequence

from surge.sampling.logprobs import TokenLogprobs
from surge.server.protocol import ChoiceLogprobs, CompletionLogprobs, TokenLogprob, TopLogprob


def _text(text: Optional[str], token_id: int) -> str:
    return text if text is not None else f"<token {token_id}>"


def _top(entry: TokenLogprobs, num_top: int) -> list[tuple[str, float]]:
    """(text, log-prob) of the top ``num_top`` alternatives, most likely first."""
    return [(_text(text, token_id), logprob)
            for (token_id, logprob), text in zip(entry.top[:num_top], entry.top_texts())]


def chat_logprobs(entries: Sequence[TokenLogprobs], num_top: int) -> ChoiceLogprobs:
    content = []
    for entry in entries:
        text = _text(entry.text(), entry.token_id)
        top = [TopLogprob(token=top_text, logprob=logprob, bytes=list(top_text.encode()))
               for top_text, logprob in _top(entry, num_top)]
        content.append(TokenLogprob(token=text, logprob=entry.logprob, bytes=list(text.encode()), top_logprobs=top))
    return ChoiceLogprobs(content=content)


def completion_logprobs(entries: Sequence[TokenLogprobs], num_top: int, start_offset: int = 0) -> CompletionLogprobs:
    result = CompletionLogprobs()
    offset = start_offset
    for entry in entries:
        text = _text(entry.text(), entry.token_id)
        result.tokens.append(text)
        result.token_logprobs.append(entry.logprob)
        result.top_logprobs.append(_top_dict(entry, num_top) if num_top > 0 else None)
        result.text_offset.append(offset)
        offset += len(text)
    return result


def _top_dict(entry: TokenLogprobs, num_top: int) -> dict:
    """Legacy top_logprobs are keyed by text; tokens that print alike keep the most likely one's value."""
    top: dict = {}
    for text, logprob in _top(entry, num_top):
        top.setdefault(text, logprob)
    return top


def delta_entries(completion) -> list[TokenLogprobs]:
    """The log-probs of the tokens that arrived with this output's delta."""
    count = len(completion.delta_token_ids)
    if not count or completion.logprobs is None:
        return []
    return list(completion.logprobs[-count:])


def prompt_completion_logprobs(prompt_token_ids: Sequence[int], entries: Sequence[Optional[TokenLogprobs]],
                               num_top: int, decode) -> CompletionLogprobs:
    """The echoed prompt's part of legacy completions logprobs: the first token's (and any missing) is null."""
    result = CompletionLogprobs()
    offset = 0
    for token_id, entry in zip(prompt_token_ids, entries):
        text = decode(token_id) if entry is None else _text(entry.text(), token_id)
        result.tokens.append(text)
        result.token_logprobs.append(None if entry is None else entry.logprob)
        result.top_logprobs.append(_top_dict(entry, num_top) if entry is not None and num_top > 0 else None)
        result.text_offset.append(offset)
        offset += len(text)
    return result


def join_logprobs(first: CompletionLogprobs, second: Optional[CompletionLogprobs]) -> CompletionLogprobs:
    if second is None:
        return first
    return CompletionLogprobs(text_offset=first.text_offset + second.text_offset,
                              token_logprobs=first.token_logprobs + second.token_logprobs,
                              tokens=first.tokens + second.tokens, top_logprobs=first.top_logprobs + second.top_logprobs)


def vllm_prompt_logprobs(entries: Sequence[Optional[TokenLogprobs]]) -> list:
    """vLLM's `prompt_logprobs`: per prompt token None or {token id (str): {logprob, rank, decoded_token}}."""
    return [None if entry is None else
            {str(token_id): {"logprob": e.logprob, "rank": e.rank, "decoded_token": e.decoded_token}
             for token_id, e in entry.items()} for entry in entries]
