"""`POST /v1/chat/completions`: messages in, an assistant message (or its stream of deltas) out.

In: the HTTP request (auth headers, JSON body). Out: a `ChatCompletion` with
`usage`, or Server-Sent Events of `ChatCompletionChunk`s: a first chunk with
the role, content / tool-call deltas as tokens arrive, a chunk with each
choice's finish_reason, a usage chunk only when `stream_options.include_usage`
asks, then `data: [DONE]`. With tools, the text goes through the tool-call
parser, so no tag text reaches `content` and finish_reason is "tool_calls"
when the model called one.
"""

from __future__ import annotations

from typing import AsyncIterator, Optional

from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from surge.engine.outputs import FinishReason
from surge.engine.streams import merge
from surge.server.chat import ChatPrompt
from surge.server.chat_turn import render
from surge.server.context import ServerContext, close_all
from surge.server.errors import stream_error
from surge.server.logprobs import chat_logprobs, delta_entries, vllm_prompt_logprobs
from surge.server.protocol import (AssistantMessage, ChatChoice, ChatCompletion, ChatCompletionChunk,
                                   ChatCompletionRequest, ChunkChoice, DeltaFunctionCall, DeltaMessage,
                                   DeltaToolCall, ResponseFunctionCall, ResponseToolCall, Usage, chunk_json,
                                   new_id)
from surge.server.reasoning import AnswerStops, make_parser, split_reasoning, take_answer_stops
from surge.server.request_params import chat_sampling_params
from surge.server.sse import DONE, ClientDisconnected, EventStreamResponse, event, run_until_disconnect
from surge.server.tool_parser import ParserDelta, ToolCallParser, parse_tool_calls


async def create_chat_completion(ctx: ServerContext, req: ChatCompletionRequest, request: Request) -> Response:
    principal = ctx.authorize(request)
    ctx.check_model(req.model)
    engine = ctx.require_ready().engine
    prompt, prompt_ids = await render(ctx, req)
    params = chat_sampling_params(req, len(prompt_ids), ctx.limits(), tool_grammar=prompt.tool_grammar)
    stops = take_answer_stops(ctx.reasoning_parser, params, prompt.text)
    request_id = new_id("chatcmpl")
    streams = await ctx.open_streams([prompt_ids], params, request_id=request_id, priority=req.priority,
                                     principal=principal, cache_salt=req.cache_salt)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return EventStreamResponse(_events(ctx, streams[0], request_id, prompt, params, len(prompt_ids),
                                           include_usage, stops), on_close=lambda: close_all(streams))
    watch = None if stops is None else [make_parser(ctx.reasoning_parser, prompt.text, stops)
                                        for _ in range(params.n)]
    try:
        final = await run_until_disconnect(request, _last_output(streams[0], watch))
    except ClientDisconnected:
        return Response(status_code=499)
    finally:
        await close_all(streams)
    return JSONResponse(_completion(ctx, final, request_id, prompt, params, stops).model_dump())


async def _last_output(stream: AsyncIterator, watch=None):
    """The last output; with `watch` (a parser per choice applying answer-only stops), it ends as soon as
    every choice has finished or hit a stop string in its answer."""
    final = None
    async for output in stream:
        final = output
        if watch is not None:
            for completion in output.outputs:
                watch[completion.index].feed(completion.delta_text)
            if all(c.finish_reason is not None or watch[c.index].stopped for c in output.outputs) \
                    and len(output.outputs) == len(watch):
                break
    return final


def _completion(ctx: ServerContext, final, request_id: str, prompt: ChatPrompt, params, stops) -> ChatCompletion:
    choices = []
    for completion in final.outputs:
        reasoning, content, stopped = split_reasoning(ctx.reasoning_parser, prompt.text, completion.text, stops)
        calls = []
        if prompt.parse_tools:
            parsed = parse_tool_calls(content, prompt.tool_names)
            content, calls = parsed.content, parsed.tool_calls
        finish = FinishReason.STOP if stopped is not None else completion.finish_reason
        finish = "tool_calls" if calls and finish == FinishReason.STOP else finish
        logprobs = None
        if params.logprobs is not None and completion.logprobs is not None:
            logprobs = chat_logprobs(completion.logprobs, params.logprobs)
        message = AssistantMessage(content=content, reasoning_content=reasoning, reasoning=reasoning, tool_calls=[
            ResponseToolCall(id=c.id, function=ResponseFunctionCall(name=c.name, arguments=c.arguments))
            for c in calls])
        choices.append(ChatChoice(index=completion.index, message=message, finish_reason=finish, logprobs=logprobs))
    usage = Usage.of(len(final.prompt_token_ids), sum(len(c.token_ids) for c in final.outputs))
    prompt_logprobs = None if final.prompt_logprobs is None else vllm_prompt_logprobs(final.prompt_logprobs)
    return ChatCompletion(id=request_id, model=ctx.model_name, choices=choices, usage=usage,
                          prompt_logprobs=prompt_logprobs)


def _tool_deltas(delta: ParserDelta) -> Optional[list[DeltaToolCall]]:
    if not delta.tool_calls:
        return None
    return [DeltaToolCall(index=d.index, id=d.id, type="function" if d.id is not None else None,
                          function=DeltaFunctionCall(name=d.name, arguments=d.arguments))
            for d in delta.tool_calls]


class _ChoiceStream:
    """One choice of a streamed chat completion: its tool parser and whether it called a tool or ended."""

    def __init__(self, prompt: ChatPrompt, num_logprobs: Optional[int], reasoning_parser: str = "none",
                 stops: Optional[AnswerStops] = None) -> None:
        self.reasoning = make_parser(reasoning_parser, prompt.text, stops)
        self.parser = ToolCallParser(prompt.tool_names) if prompt.parse_tools else None
        self.num_logprobs = num_logprobs
        self.done = False

    def step(self, completion) -> Optional[ChunkChoice]:
        """The chunk choice for this completion's latest delta, or None when there is nothing to send."""
        if self.done or not (completion.delta_text or completion.delta_token_ids or completion.finish_reason):
            return None
        delta = ParserDelta()
        reasoning, text = "", completion.delta_text
        finish = completion.finish_reason
        if self.reasoning is not None:
            reasoning, text = self.reasoning.feed(text)
            if self.reasoning.stopped is not None:
                finish = FinishReason.STOP  # a stop string in the answer (applied here, not by the engine)
            if finish is not None:
                more_reasoning, more_text = self.reasoning.finish()
                reasoning, text = reasoning + more_reasoning, text + more_text
        if self.parser is None:
            delta.content += text
        else:
            delta.extend(self.parser.feed(text))
            if finish is not None:
                delta.extend(self.parser.finish())
        logprobs = None
        if self.num_logprobs is not None:
            entries = delta_entries(completion)
            if entries:
                logprobs = chat_logprobs(entries, self.num_logprobs)
        if finish == FinishReason.STOP and self.parser is not None and self.parser.tool_calls:
            finish = "tool_calls"
        self.done = finish is not None
        message = DeltaMessage(content=delta.content or None, tool_calls=_tool_deltas(delta),
                               reasoning_content=reasoning or None, reasoning=reasoning or None)
        if message.content is None and not message.tool_calls and not reasoning and logprobs is None \
                and finish is None:
            return None
        return ChunkChoice(index=completion.index, delta=message, finish_reason=finish, logprobs=logprobs)


async def _events(ctx: ServerContext, stream: AsyncIterator, request_id: str, prompt: ChatPrompt, params,
                  prompt_len: int, include_usage: bool, stops: Optional[AnswerStops] = None) -> AsyncIterator[str]:
    choices = [_ChoiceStream(prompt, params.logprobs, ctx.reasoning_parser, stops) for _ in range(params.n)]
    generated = 0

    def chunk(choice: ChunkChoice) -> str:
        return event(chunk_json(ChatCompletionChunk(id=request_id, model=ctx.model_name, choices=[choice])))

    merged = merge([stream])
    try:
        for index in range(params.n):
            yield chunk(ChunkChoice(index=index, delta=DeltaMessage(role="assistant", content="")))
        async for _, output in merged:
            generated = sum(len(c.token_ids) for c in output.outputs)
            for completion in output.outputs:
                choice = choices[completion.index].step(completion)
                if choice is not None:
                    yield chunk(choice)
            if all(c.done for c in choices):
                break  # every choice ended (an answer-only stop string ends it before the engine does)
        if include_usage:
            usage_chunk = ChatCompletionChunk(id=request_id, model=ctx.model_name, choices=[],
                                              usage=Usage.of(prompt_len, generated))
            yield event(usage_chunk.model_dump_json(exclude_none=True))
        yield DONE
    except Exception as exc:  # the response has started: report in-band, as OpenAI does
        yield event(stream_error(exc, request_id).json())
        yield DONE
    finally:
        await merged.aclose()
