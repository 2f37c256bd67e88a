"""One chat turn opened on the engine: what Responses and Anthropic Messages share with chat completions.

In: a `ChatCompletionRequest` built by a protocol adapter (messages, tools,
tool_choice, sampling fields), the caller's `Principal`, an id and priority.
Out: a `ChatTurn` — the rendered `ChatPrompt`, its token count and the
accepted engine stream — or the same 400s / 503s a chat completion gets
(unrenderable messages, context overflow, bad sampling values, overload).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from pydantic import ValidationError

from surge.server.chat import ChatPrompt, render_chat
from surge.server.context import Principal, ServerContext, invalid_body
from surge.server.errors import bad_request
from surge.server.protocol import ChatCompletionRequest
from surge.server.reasoning import AnswerStops, take_answer_stops
from surge.server.request_params import EngineLimits, chat_sampling_params, prompt_limit, prompt_too_long
from surge.server.workers import TooManyTokens, encode


@dataclass
class ChatTurn:
    prompt: ChatPrompt
    num_prompt_tokens: int
    stream: object  # a TrackedStream of RequestOutputs; closing it aborts the request
    # Stop strings the answer side of the reasoning parser applies (reasoning.take_answer_stops), or None.
    stops: Optional[AnswerStops] = None


def chat_request(body: dict) -> ChatCompletionRequest:
    """A ChatCompletionRequest from an adapter's dict; a 400 naming the field if it does not validate."""
    try:
        return ChatCompletionRequest.model_validate_json(json.dumps(body))
    except ValidationError as exc:
        raise invalid_body(exc.errors(include_url=False)) from None


async def render(ctx: ServerContext, chat: ChatCompletionRequest,
                 to_generate: bool = True) -> tuple[ChatPrompt, list[int]]:
    """The rendered prompt and its token ids, computed on the worker pool (never on the event loop).

    `to_generate`: a prompt too long to generate from is a 400 at once (its ids are never listed); false
    where only the tokens are wanted (/tokenize, count_tokens).
    """
    engine = ctx.require_ready().engine
    return await ctx.workers.run(_render, engine.tokenizer, chat, ctx.limits() if to_generate else None)


def _render(tokenizer, chat: ChatCompletionRequest,
            limits: Optional[EngineLimits]) -> tuple[ChatPrompt, list[int]]:
    prompt = render_chat(tokenizer, chat)
    try:
        prompt_ids = encode(tokenizer, prompt.text, add_special_tokens=False,
                            limit=None if limits is None else prompt_limit(limits))
    except TooManyTokens as exc:
        raise prompt_too_long(exc.num_tokens, limits, "messages") from None
    if not prompt_ids:
        raise bad_request("the input renders to an empty prompt", param="messages")
    return prompt, prompt_ids


async def open_chat_turn(ctx: ServerContext, chat: ChatCompletionRequest, principal: Principal, request_id: str,
                         priority: int = 0) -> ChatTurn:
    prompt, prompt_ids = await render(ctx, chat)
    params = chat_sampling_params(chat, len(prompt_ids), ctx.limits(), tool_grammar=prompt.tool_grammar)
    stops = take_answer_stops(ctx.reasoning_parser, params, prompt.text)
    streams = await ctx.open_streams([prompt_ids], params, request_id=request_id, priority=priority,
                                     principal=principal, cache_salt=chat.cache_salt)
    return ChatTurn(prompt, len(prompt_ids), streams[0], stops)
