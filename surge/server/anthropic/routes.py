"""`POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API.

In: the HTTP request (the key as `x-api-key`, as Anthropic clients send it, or
any other form the server accepts) and a `MessagesRequest`. The conversation
becomes chat messages — `system` first, `tool_use` blocks as an assistant's
tool calls, `tool_result` blocks as tool messages, `thinking` blocks as the
assistant's reasoning — and is rendered and sampled as a chat completion.
Out: a `message` object with `text` / `tool_use` / `thinking` content blocks,
`stop_reason` (end_turn, max_tokens, stop_sequence with `stop_sequence`, or
tool_use) and `usage`; or Server-Sent Events `message_start`,
`content_block_start` / `content_block_delta` / `content_block_stop` per block,
`message_delta` (stop reason, output usage), `message_stop`; or
`{"input_tokens": N}`. Every failure answers in Anthropic's error shape.
"""

from __future__ import annotations

import json
from typing import Optional

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from surge.engine.outputs import FinishReason
from surge.server.anthropic.protocol import (CountTokensRequest, CountTokensResponse, Message, MessageResponse,
                                             MessagesRequest, TextBlock, ThinkingBlock, ToolResultBlock,
                                             ToolUseBlock, error_body)
from surge.server.chat_turn import chat_request, open_chat_turn, render
from surge.server.context import ServerContext, close_all
from surge.server.errors import OpenAIError, bad_request, stream_error
from surge.server.openapi import AnthropicErrorResponse, answers
from surge.server.protocol import new_id
from surge.server.reasoning import make_parser
from surge.server.responses.output import OutputBuilder
from surge.server.sse import ClientDisconnected, EventStreamResponse, run_until_disconnect


def anthropic_error(exc: OpenAIError) -> JSONResponse:
    return JSONResponse(error_body(exc.status, exc.message), status_code=exc.status, headers=exc.headers)


class MessagesService:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def register(self, app: FastAPI) -> None:
        app.post("/v1/messages", responses=answers(MessageResponse, streams=True, errors=AnthropicErrorResponse))(
            self.create)
        app.post("/v1/messages/count_tokens", responses=answers(CountTokensResponse, errors=AnthropicErrorResponse))(
            self.count_tokens)

    async def create(self, body: MessagesRequest, request: Request) -> Response:
        try:
            return await self._create(body, request)
        except OpenAIError as exc:
            return anthropic_error(exc)

    async def count_tokens(self, body: CountTokensRequest, request: Request) -> Response:
        try:
            self.ctx.authorize(request)
            self.ctx.check_model(body.model)
            _, prompt_ids = await render(self.ctx, chat_request(_chat_body(body)), to_generate=False)
            return JSONResponse({"input_tokens": len(prompt_ids)})
        except OpenAIError as exc:
            return anthropic_error(exc)

    async def _create(self, body: MessagesRequest, request: Request) -> Response:
        principal = self.ctx.authorize(request)
        self.ctx.check_model(body.model)
        if body.max_tokens < 1:
            raise bad_request(f"max_tokens: {body.max_tokens} must be >= 1", param="max_tokens")
        chat = _chat_body(body)
        chat.update(max_tokens=body.max_tokens, stop=body.stop_sequences, temperature=body.temperature,
                    top_p=body.top_p, top_k=body.top_k)
        message_id = new_id("msg").replace("-", "_")
        turn = await open_chat_turn(self.ctx, chat_request(chat), principal, message_id)
        builder = OutputBuilder(turn.prompt, make_parser(self.ctx.reasoning_parser, turn.prompt.text, turn.stops))
        model = body.model or self.ctx.model_name
        if body.stream:
            return EventStreamResponse(_events(turn, builder, message_id, model),
                                       on_close=lambda: close_all([turn.stream]))
        try:
            last = await run_until_disconnect(request, _consume(turn.stream, builder))
        except ClientDisconnected:
            return Response(status_code=499)
        finally:
            await close_all([turn.stream])
        builder.finish()
        stop_reason, stop_sequence = _stop(last, builder)
        return JSONResponse({
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [_block(item) for item in builder.items], "stop_reason": stop_reason,
            "stop_sequence": stop_sequence, "usage": _usage(last, len(last.outputs[0].token_ids))})


async def _consume(stream, builder: OutputBuilder):
    last = None
    async for output in stream:
        last = output
        builder.feed(output.outputs[0].delta_text)
        if builder.stopped:
            break
    return last


def _usage(last, output_tokens: int) -> dict:
    cached = last.num_cached_tokens if last is not None else 0
    prompt = len(last.prompt_token_ids) if last is not None else 0
    return {"input_tokens": prompt - cached, "output_tokens": output_tokens, "cache_read_input_tokens": cached,
            "cache_creation_input_tokens": 0}


def _stop(last, builder: OutputBuilder) -> tuple[str, Optional[str]]:
    completion = last.outputs[0]
    if builder.stopped is not None:
        return "stop_sequence", builder.stopped
    if builder.called_tools and completion.finish_reason == FinishReason.STOP:
        return "tool_use", None
    if completion.finish_reason == FinishReason.LENGTH:
        return "max_tokens", None
    if isinstance(completion.stop_reason, str):
        return "stop_sequence", completion.stop_reason
    return "end_turn", None


def _block(item: dict) -> dict:
    if item["type"] == "function_call":
        try:
            arguments = json.loads(item["arguments"]) if item["arguments"] else {}
        except ValueError:
            arguments = {}
        return {"type": "tool_use", "id": item["call_id"], "name": item["name"],
                "input": arguments if isinstance(arguments, dict) else {"value": arguments}}
    text = item["content"][0]["text"] if item["content"] else ""
    if item["type"] == "reasoning":
        return {"type": "thinking", "thinking": text, "signature": ""}
    return {"type": "text", "text": text}


async def _events(turn, builder: OutputBuilder, message_id: str, model: str):
    def sse(event: dict) -> str:
        return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

    start_usage = {"input_tokens": turn.num_prompt_tokens, "output_tokens": 0}
    yield sse({"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": start_usage}})
    try:
        last = None
        async for output in turn.stream:
            last = output
            for event in builder.feed(output.outputs[0].delta_text):
                for translated in _translate(event):
                    yield sse(translated)
            if builder.stopped:
                break
        for event in builder.finish():
            for translated in _translate(event):
                yield sse(translated)
        stop_reason, stop_sequence = _stop(last, builder)
        usage = _usage(last, len(last.outputs[0].token_ids))
        yield sse({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                   "usage": {"output_tokens": usage["output_tokens"]}})
        yield sse({"type": "message_stop"})
    except Exception as exc:  # the stream has started: report in-band, as Anthropic does
        error = stream_error(exc, message_id)
        yield sse(error_body(error.status, error.message))


def _translate(event: dict) -> list[dict]:
    """A Responses output event as Anthropic content-block events (one block per output item)."""
    kind, index = event["type"], event.get("output_index")
    if kind == "response.output_item.added":
        item = event["item"]
        if item["type"] == "function_call":
            block = {"type": "tool_use", "id": item["call_id"], "name": item["name"], "input": {}}
        elif item["type"] == "reasoning":
            block = {"type": "thinking", "thinking": "", "signature": ""}
        else:
            block = {"type": "text", "text": ""}
        return [{"type": "content_block_start", "index": index, "content_block": block}]
    if kind == "response.output_text.delta":
        return [{"type": "content_block_delta", "index": index, "delta": {"type": "text_delta",
                                                                          "text": event["delta"]}}]
    if kind == "response.reasoning_text.delta":
        return [{"type": "content_block_delta", "index": index, "delta": {"type": "thinking_delta",
                                                                          "thinking": event["delta"]}}]
    if kind == "response.function_call_arguments.delta":
        return [{"type": "content_block_delta", "index": index, "delta": {"type": "input_json_delta",
                                                                          "partial_json": event["delta"]}}]
    if kind == "response.output_item.done":
        return [{"type": "content_block_stop", "index": index}]
    return []


def _text(content) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(block.text for block in content)


def _chat_body(body: CountTokensRequest) -> dict:
    """The chat request body (messages, tools, tool_choice) of an Anthropic conversation."""
    messages: list[dict] = []
    if body.system:
        messages.append({"role": "system", "content": _text(body.system)})
    for i, message in enumerate(body.messages):
        messages += _messages_of(message, i)
    chat: dict = {"messages": messages}
    if body.thinking is not None:
        chat["chat_template_kwargs"] = {"enable_thinking": body.thinking.type != "disabled"}
    if body.tools:
        chat["tools"] = [{"type": "function", "function": {"name": tool.name, "description": tool.description,
                                                           "parameters": tool.input_schema}} for tool in body.tools]
    choice = body.tool_choice
    if choice is not None:
        if choice.type == "tool":
            if not choice.name:
                raise bad_request("tool_choice type 'tool' needs a name", param="tool_choice.name")
            chat["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        else:
            chat["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        chat["parallel_tool_calls"] = not choice.disable_parallel_tool_use
    return chat


def _messages_of(message: Message, index: int) -> list[dict]:
    if isinstance(message.content, str):
        return [{"role": message.role, "content": message.content}]
    out: list[dict] = []
    texts: list[str] = []
    calls: list[dict] = []
    reasoning: list[str] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            texts.append(block.text)
        elif isinstance(block, ToolUseBlock) and message.role == "assistant":
            calls.append({"id": block.id, "type": "function",
                          "function": {"name": block.name, "arguments": json.dumps(block.input)}})
        elif isinstance(block, ToolResultBlock) and message.role == "user":
            result = _text(block.content)
            out.append({"role": "tool", "tool_call_id": block.tool_use_id,
                        "content": f"Error: {result}" if block.is_error else result})
        elif isinstance(block, ThinkingBlock) and message.role == "assistant":
            reasoning.append(block.thinking)
        else:
            raise bad_request(f"messages.{index}.content: {block.type!r} blocks are not supported in "
                              f"{message.role} messages by this server", param=f"messages.{index}.content")
    if texts or calls or not out:
        turn: dict = {"role": message.role, "content": "".join(texts)}
        if calls:
            turn["tool_calls"] = calls
        if reasoning:
            turn["reasoning_content"] = "".join(reasoning)
        out.append(turn)
    return out
