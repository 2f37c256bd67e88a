"""What `/openapi.json` says about each route beyond its request body: error bodies and streamed answers.

In: the response model of a route (a pydantic class) and whether it can stream. Out: FastAPI `responses=`
dicts — every status the server answers with besides 200 (400, 401, 404, 413, 503) carries the error body
of the route's protocol (OpenAI's `ErrorResponse`, or Anthropic's for `/v1/messages`), and a streaming
route declares `text/event-stream` beside its JSON. Clients generated from the schema and the fuzz test
(`tests/test_server_fuzz.py`) read these.
"""

from __future__ import annotations

from typing import Literal, Optional, Type

from pydantic import BaseModel

ERROR_STATUSES = {400: "The request is invalid (the message names the field and the limit)",
                  401: "No valid API key was given",
                  404: "Unknown model, route or stored response",
                  413: "The request body is larger than server.max_request_bytes",
                  503: "Not ready, draining, or server.max_queue is full (see Retry-After)"}


# One Server-Sent Event: `data:` is a JSON chunk (or [DONE]); `event:` names its type where the protocol does.
SSE_EVENT = {"type": "object", "required": ["data"],
             "properties": {"event": {"type": "string"}, "data": {"type": "string"}}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """OpenAI's error body."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    type: str
    message: str


class AnthropicErrorResponse(BaseModel):
    """Anthropic's error body (`/v1/messages`)."""

    type: Literal["error"] = "error"
    error: AnthropicErrorDetail


def error_responses(model: Type[BaseModel] = ErrorResponse) -> dict:
    return {status: {"model": model, "description": text} for status, text in ERROR_STATUSES.items()}


def answers(model: Optional[Type[BaseModel]] = None, *, streams: bool = False,
            errors: Type[BaseModel] = ErrorResponse) -> dict:
    """`responses=` for a route answering `model` as JSON (and Server-Sent Events when `streams`)."""
    ok: dict = {"description": "The answer" + (" (text/event-stream when stream=true)" if streams else "")}
    if model is not None:
        ok["model"] = model
    if streams:
        ok["content"] = {"text/event-stream": {"schema": SSE_EVENT}}
    return {200: ok, **error_responses(errors)}


def install(app) -> None:
    """Make `app.openapi()` leave out FastAPI's 422: this server answers a body it cannot validate with 400."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            components = schema.get("components", {}).get("schemas", {})
            for name in ("HTTPValidationError", "ValidationError"):
                components.pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi
