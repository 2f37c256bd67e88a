"""OpenAI-style errors: one exception type and the JSON body every failure returns.

In: a status code, a message, and optionally the offending parameter. Out: a
`JSONResponse` whose body is `{"error": {"message", "type", "param", "code"}}`,
the shape OpenAI clients parse (the `openai` package turns it into
`BadRequestError`, `AuthenticationError`, ... by status code).
"""

from __future__ import annotations

import json
import logging
from typing import Optional

from fastapi.responses import JSONResponse

logger = logging.getLogger("surge")

# OpenAI's `error.type` for each status the server answers with.
_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "internal_server_error",
    503: "service_unavailable_error",
}


class OpenAIError(Exception):
    """A failure to report to the client with an OpenAI error body (never a bare 500)."""

    def __init__(self, status: int, message: str, *, param: Optional[str] = None, code: Optional[str] = None,
                 error_type: Optional[str] = None, headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.headers = headers or {}  # e.g. Retry-After on a 503
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.error_type = error_type or _TYPES.get(status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def json(self) -> str:
        return json.dumps(self.body())

    def response(self, headers: Optional[dict] = None) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers={**self.headers, **(headers or {})})


def bad_request(message: str, param: Optional[str] = None, code: Optional[str] = None) -> OpenAIError:
    return OpenAIError(400, message, param=param, code=code)


def unauthorized(message: str) -> OpenAIError:
    return OpenAIError(401, message, code="invalid_api_key")


# Seconds a client is told to wait before retrying a 503 (overload, start-up, draining).
RETRY_AFTER_S = 1


def unavailable(message: str, code: str = "server_unavailable") -> OpenAIError:
    """A 503: only for conditions that pass (a full queue, an engine still starting), so Retry-After is set."""
    return OpenAIError(503, message, code=code, headers={"Retry-After": str(RETRY_AFTER_S)})


def stream_error(exc: Exception, request_id: str) -> OpenAIError:
    """The error to send in-band when a response has already started streaming."""
    if isinstance(exc, OpenAIError):
        return exc
    logger.error("request %s failed while streaming: %s", request_id, exc, exc_info=exc)
    return OpenAIError(500, f"generation failed: {exc}")
