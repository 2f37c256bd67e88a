"""`/v1/responses`: create (plain, streamed, background), retrieve, delete, cancel.

In: the HTTP request (auth, a `ResponsesRequest` body or a response id) and
the server's parts: the `ServerContext` (its reasoning parser included) and
the `ResponseStore` (None when `server.responses_store=none`). Out: a
Response object; or Server-Sent Events `response.created`,
`response.in_progress`, the output items' events (`output.py`), then
`response.completed` (or `response.incomplete` when max_output_tokens cut it
short), each `event: <type>` with a `sequence_number`; or, with
`background=true`, the queued response at once, generated in a task that
`POST /v1/responses/{id}/cancel` stops (its pages are freed at once).

A turn is rendered as a chat completion is (`chat.render_chat`), so tools,
tool_choice, templates and limits behave the same. With `store` (the default
when a store exists) the response and its conversation are kept under the
caller's key, so `previous_response_id` replays every earlier turn into the
prompt (the prefix cache serves those tokens again: see
`usage.input_tokens_details.cached_tokens`), and another key gets 404.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.requests import Request
from starlette.responses import Response

from surge.engine.outputs import FinishReason
from surge.server.chat import ChatPrompt
from surge.server.chat_turn import chat_request, open_chat_turn
from surge.server.context import Principal, ServerContext, close_all
from surge.server.errors import OpenAIError, bad_request, stream_error
from surge.server.openapi import answers
from surge.server.protocol import ChatCompletionRequest
from surge.server.reasoning import make_parser
from surge.server.responses.conversation import input_messages, output_messages
from surge.server.responses.output import OutputBuilder
from surge.server.responses.protocol import (ResponseDeleted, ResponseObject, ResponsesRequest, new_item_id,
                                             response_object, usage)
from surge.server.responses.store import ResponseStore, StoredResponse
from surge.server.sse import ClientDisconnected, EventStreamResponse, run_until_disconnect

logger = logging.getLogger("surge")

TERMINAL = ("completed", "incomplete", "cancelled", "failed")


def not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"No response with id {response_id!r} was found", param="response_id",
                       code="response_not_found")


@dataclass
class _Turn:
    """One accepted request: what it renders to and the engine stream generating it."""

    id: str
    req: ResponsesRequest
    owner: str
    messages: list
    prompt: ChatPrompt
    stream: object
    store: bool
    stops: object = None  # reasoning.AnswerStops when stop strings apply to the answer here


def structured_output(req: ResponsesRequest) -> Optional[dict]:
    """`text.format` as the chat completion's `response_format` (json_schema / json_object map to structured
    outputs, surge/structured/); None for plain text."""
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if req.tool_choice == "required" or not isinstance(req.tool_choice, (str, type(None))):
        raise bad_request("text.format and a tool_choice that forces a call each constrain the output: give only "
                          "one of them", param="text.format")
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise bad_request("text.format type 'json_schema' needs text.format.schema", param="text.format.schema")
    return {"type": "json_schema", "json_schema": {"name": fmt.name or "response", "schema": fmt.schema_,
                                                   "strict": bool(fmt.strict)}}


class ResponsesService:
    def __init__(self, ctx: ServerContext, store: Optional[ResponseStore]) -> None:
        self.ctx = ctx
        self.store = store
        self._background: dict[str, asyncio.Task] = {}

    def register(self, app: FastAPI) -> None:
        app.post("/v1/responses", responses=answers(ResponseObject, streams=True))(self.create)
        app.get("/v1/responses/{response_id}", responses=answers(ResponseObject))(self.retrieve)
        app.delete("/v1/responses/{response_id}", responses=answers(ResponseDeleted))(self.delete)
        app.post("/v1/responses/{response_id}/cancel", responses=answers(ResponseObject))(self.cancel)

    # ---- routes ---------------------------------------------------------------------------------
    async def create(self, body: ResponsesRequest, request: Request) -> Response:
        principal = self.ctx.authorize(request)
        turn = await self._start(body, principal)
        if body.background:
            created = response_object(turn.id, body, self.ctx.model_name, status="queued", output=[])
            self._save(turn, created, [])
            task = asyncio.ensure_future(self._run_background(turn, created))
            self._background[turn.id] = task
            task.add_done_callback(lambda _: self._background.pop(turn.id, None))
            return JSONResponse(created)
        if body.stream:
            return EventStreamResponse(self._events(turn), on_close=lambda: close_all([turn.stream]))
        try:
            final = await run_until_disconnect(request, self._generate(turn))
        except ClientDisconnected:
            return Response(status_code=499)
        finally:
            await close_all([turn.stream])
        return JSONResponse(final)

    async def retrieve(self, response_id: str, request: Request) -> JSONResponse:
        return JSONResponse(self._stored(response_id, self.ctx.authorize(request)).response)

    async def delete(self, response_id: str, request: Request) -> JSONResponse:
        principal = self.ctx.authorize(request)
        self._stored(response_id, principal)
        task = self._background.get(response_id)
        if task is not None:
            task.cancel()
        self.store.delete(principal.owner, response_id)
        return JSONResponse({"id": response_id, "object": "response.deleted", "deleted": True})

    async def cancel(self, response_id: str, request: Request) -> JSONResponse:
        principal = self.ctx.authorize(request)
        record = self._stored(response_id, principal)
        if not record.response.get("background"):
            raise bad_request(f"response {response_id!r} was not created with background=true; only background "
                              "responses can be cancelled", param="response_id")
        task = self._background.get(response_id)
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return JSONResponse(self._stored(response_id, principal).response)

    # ---- a turn ---------------------------------------------------------------------------------
    def _stored(self, response_id: str, principal: Principal) -> StoredResponse:
        if self.store is None:
            raise bad_request("this server keeps no responses (server.responses_store=none)", param="response_id")
        record = self.store.get(principal.owner, response_id)
        if record is None:
            raise not_found(response_id)
        return record

    async def _start(self, req: ResponsesRequest, principal: Principal) -> _Turn:
        self.ctx.check_model(req.model)
        if req.store and self.store is None:
            raise bad_request("store=true, but this server keeps no responses (server.responses_store=none)",
                              param="store")
        store = self.store is not None and req.store is not False
        if req.background and not store:
            raise bad_request("background=true needs store=true (and a server.responses_store)", param="background")
        if req.background and req.stream:
            raise bad_request("background=true with stream=true is not supported; poll GET /v1/responses/{id}",
                              param="stream")
        history: list = []
        if req.previous_response_id is not None:
            previous = self._stored(req.previous_response_id, principal)
            status = previous.response.get("status")
            if status not in TERMINAL:
                raise bad_request(f"previous response {req.previous_response_id!r} is still {status}; wait until "
                                  "it is done", param="previous_response_id")
            history = previous.messages
        messages = input_messages(req.input, req.instructions, history)
        response_id = new_item_id("resp")
        turn = await open_chat_turn(self.ctx, _chat_request(req, messages), principal, response_id, req.priority)
        conversation = messages[1:] if req.instructions else messages
        return _Turn(response_id, req, principal.owner, conversation, turn.prompt, turn.stream, store, turn.stops)

    def _builder(self, turn: _Turn) -> OutputBuilder:
        return OutputBuilder(turn.prompt, make_parser(self.ctx.reasoning_parser, turn.prompt.text, turn.stops))

    def _final(self, turn: _Turn, builder: OutputBuilder, last) -> dict:
        completion = last.outputs[0]
        truncated = completion.finish_reason == FinishReason.LENGTH and builder.stopped is None
        if truncated:
            for item in builder.items:
                item["status"] = "incomplete"
        reasoning_tokens = len(self.ctx.host.engine.tokenizer.encode(builder.reasoning_text,
                                                                     add_special_tokens=False)) \
            if builder.reasoning_text else 0
        final = response_object(turn.id, turn.req, self.ctx.model_name,
                                status="incomplete" if truncated else "completed", output=builder.items,
                                usage_=usage(len(last.prompt_token_ids), len(completion.token_ids),
                                             last.num_cached_tokens, reasoning_tokens),
                                incomplete_reason="max_output_tokens" if truncated else None)
        self._save(turn, final, output_messages(builder.items))
        return final

    def _save(self, turn: _Turn, response: dict, output: list) -> None:
        if turn.store:
            self.store.put(StoredResponse(id=turn.id, owner=turn.owner, response=response,
                                          messages=turn.messages + output))

    async def _generate(self, turn: _Turn) -> dict:
        builder = self._builder(turn)
        last = None
        async for output in turn.stream:
            last = output
            builder.feed(output.outputs[0].delta_text)
            if builder.stopped:
                break
        builder.finish()
        return self._final(turn, builder, last)

    async def _run_background(self, turn: _Turn, created: dict) -> None:
        self._save(turn, dict(created, status="in_progress"), [])
        try:
            await self._generate(turn)
        except asyncio.CancelledError:
            self._save(turn, dict(created, status="cancelled"), [])
        except Exception as exc:
            logger.exception("background response %s failed", turn.id)
            self._save(turn, dict(created, status="failed", error={"code": "server_error", "message": str(exc)}),
                       [])
        finally:
            await close_all([turn.stream])

    async def _events(self, turn: _Turn):
        sequence = 0

        def sse(event: dict) -> str:
            nonlocal sequence
            event["sequence_number"] = sequence
            sequence += 1
            return f"event: {event['type']}\ndata: {json.dumps(event, ensure_ascii=False)}\n\n"

        created = response_object(turn.id, turn.req, self.ctx.model_name, status="in_progress", output=[])
        yield sse({"type": "response.created", "response": created})
        yield sse({"type": "response.in_progress", "response": created})
        builder = self._builder(turn)
        try:
            last = None
            async for output in turn.stream:
                last = output
                for event in builder.feed(output.outputs[0].delta_text):
                    yield sse(event)
                if builder.stopped:
                    break
            for event in builder.finish():
                yield sse(event)
            final = self._final(turn, builder, last)
            kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
            yield sse({"type": kind, "response": final})
        except Exception as exc:  # the stream has started: report in-band, as OpenAI does
            error = stream_error(exc, turn.id)
            yield sse({"type": "error", "code": error.code or "server_error", "message": error.message,
                       "param": error.param})


def _chat_request(req: ResponsesRequest, messages: list) -> ChatCompletionRequest:
    """The chat completion this turn renders and samples as."""
    body: dict = {"response_format": structured_output(req), "messages": messages, "max_tokens": req.max_output_tokens, "temperature": req.temperature,
                  "top_p": req.top_p, "parallel_tool_calls": req.parallel_tool_calls,
                  "chat_template_kwargs": req.chat_template_kwargs}
    if req.tools:
        body["tools"] = [{"type": "function", "function": tool.model_dump(exclude_none=True, exclude={"type"})}
                         for tool in req.tools]
    if req.tool_choice is not None:
        body["tool_choice"] = req.tool_choice if isinstance(req.tool_choice, str) else \
            {"type": "function", "function": {"name": req.tool_choice.name}}
    return chat_request(body)
