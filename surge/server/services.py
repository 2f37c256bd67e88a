"""The protocols served beside OpenAI chat and completions, built and registered together.

In: the `ServerContext` (its `reasoning_parser` included) and the Responses
store's kind, size and path. Out: `register(app)`
adds `/v1/responses*` (responses/), `/v1/messages*` (anthropic/), `/tokenize`,
`/detokenize` and `/version` (tokenize.py); `error_response_for(path, error)` answers a
failure in the shape of the protocol the request spoke (Anthropic's for
`/v1/messages`, OpenAI's otherwise).
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse

from surge.server.anthropic.routes import MessagesService, anthropic_error
from surge.server.context import ServerContext
from surge.server.errors import OpenAIError
from surge.server.reasoning import PARSERS
from surge.server.responses.routes import ResponsesService
from surge.server.responses.store import open_store
from surge.server.tokenize import TokenizeService


class ProtocolServices:
    def __init__(self, ctx: ServerContext, responses_store: str = "sqlite", responses_store_max: int = 10000,
                 responses_store_path: str = "") -> None:
        if ctx.reasoning_parser != "none" and ctx.reasoning_parser not in PARSERS:
            raise ValueError(f"reasoning_parser={ctx.reasoning_parser!r}: must be none or one of {PARSERS}")
        self.responses = ResponsesService(ctx, open_store(responses_store, responses_store_max,
                                                          responses_store_path))
        self.messages = MessagesService(ctx)
        self.tokenize = TokenizeService(ctx)

    def register(self, app: FastAPI) -> None:
        for service in (self.responses, self.messages, self.tokenize):
            service.register(app)

    @staticmethod
    def error_response_for(path: str, error: OpenAIError) -> JSONResponse:
        if path.startswith("/v1/messages"):
            return anthropic_error(error)
        return error.response()
