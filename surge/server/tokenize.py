"""The small endpoints clients probe: `/tokenize`, `/detokenize`, `/version` (vLLM's shapes).

In: `POST /tokenize` with a `prompt` (and `add_special_tokens`, default true)
or chat `messages` (rendered by the chat template, `add_generation_prompt`
and `chat_template_kwargs` honoured, as a chat completion would be), and
`return_token_strs`; `POST /detokenize` with `tokens`. Out:
`{"count", "max_model_len", "tokens", "token_strs"}`, `{"prompt"}`, and
`{"version"}`. Token ids outside the vocabulary are a 400, never a crash.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.requests import Request

from surge.server.chat_turn import chat_request, render
from surge.server.context import ServerContext
from surge.server.errors import bad_request
from surge.server.openapi import answers
from surge.server.protocol import ChatMessage, _Lenient
from surge.server.workers import encode


class TokenizeRequest(_Lenient):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[List[ChatMessage]] = Field(default=None, min_length=1)
    add_special_tokens: Optional[bool] = None
    add_generation_prompt: bool = True
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    return_token_strs: bool = False


class DetokenizeRequest(_Lenient):
    model: Optional[str] = None
    tokens: List[int]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: List[int]
    token_strs: Optional[List[str]] = None


class DetokenizeResponse(BaseModel):
    prompt: str


class VersionResponse(BaseModel):
    version: str


class TokenizeService:
    def __init__(self, ctx: ServerContext) -> None:
        self.ctx = ctx

    def register(self, app: FastAPI) -> None:
        app.post("/tokenize", responses=answers(TokenizeResponse))(self.tokenize)
        app.post("/detokenize", responses=answers(DetokenizeResponse))(self.detokenize)
        app.get("/version", responses=answers(VersionResponse))(self.version)

    async def tokenize(self, body: TokenizeRequest, request: Request) -> JSONResponse:
        self.ctx.authorize(request)
        self.ctx.check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise bad_request("give exactly one of prompt or messages", param="prompt")
        engine = self.ctx.require_ready().engine
        if body.prompt is not None:
            special = True if body.add_special_tokens is None else body.add_special_tokens
            tokens = await self.ctx.workers.run(encode, engine.tokenizer, body.prompt, special)
        else:
            chat = chat_request({"messages": [m.model_dump(exclude_none=True) for m in body.messages],
                                 "add_generation_prompt": body.add_generation_prompt,
                                 "chat_template_kwargs": body.chat_template_kwargs})
            _, tokens = await render(self.ctx, chat, to_generate=False)
        strs = await self.ctx.workers.run(engine.tokenizer.convert_ids_to_tokens, tokens) \
            if body.return_token_strs else None
        return JSONResponse({"count": len(tokens), "max_model_len": engine.max_model_len, "tokens": tokens,
                             "token_strs": strs})

    async def detokenize(self, body: DetokenizeRequest, request: Request) -> JSONResponse:
        self.ctx.authorize(request)
        self.ctx.check_model(body.model)
        engine = self.ctx.require_ready().engine
        return JSONResponse({"prompt": await self.ctx.workers.run(_decode, engine.tokenizer, body.tokens,
                                                                  self.ctx.limits().vocab_size)})

    async def version(self, request: Request) -> JSONResponse:
        from surge import __version__

        self.ctx.authorize(request)
        return JSONResponse({"version": __version__})


def _decode(tokenizer, tokens: List[int], vocab: int) -> str:
    bad = [t for t in tokens if not 0 <= t < vocab]
    if bad:
        raise bad_request(f"tokens holds ids outside the vocabulary [0, {vocab}): {bad[:5]}", param="tokens")
    return tokenizer.decode(tokens)
