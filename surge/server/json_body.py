"""Request bodies as JSON with lone surrogates made valid text, for every FastAPI route.

In: a request body that JSON allows but text does not — a `\\ud800` escape with no partner (JavaScript
strings can hold one; clients that slice emoji send them). Out: the parsed body with each lone surrogate
replaced by U+FFFD, as a browser's TextEncoder does, so the prompt tokenizes and the answer encodes as
UTF-8 instead of failing deep in the tokenizer. `SafeJsonRoute` is the app's route class.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def without_lone_surrogates(value: Any) -> Any:
    if isinstance(value, str):
        return _LONE_SURROGATE.sub("\ufffd", value)
    if isinstance(value, list):
        return [without_lone_surrogates(item) for item in value]
    if isinstance(value, dict):
        return {without_lone_surrogates(k): without_lone_surrogates(v) for k, v in value.items()}
    return value


def parse_json(body: bytes) -> Any:
    value = json.loads(body)
    # Paired surrogate escapes are joined by json.loads; only a body with such an escape can hold a lone one.
    return without_lone_surrogates(value) if _SURROGATE_ESCAPE.search(body) else value


class _SafeJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            self._json = parse_json(await self.body())
        return self._json


class SafeJsonRoute(APIRoute):
    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            return await handler(_SafeJsonRequest(request.scope, request.receive))

        return route
