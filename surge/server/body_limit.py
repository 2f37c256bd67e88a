"""`server.max_request_bytes`: a request body larger than the limit is answered 413 before it is parsed.

In: the ASGI app, the limit, and how to shape the error for a path (OpenAI's body, Anthropic's under
`/v1/messages`). Out: ASGI middleware. A `Content-Length` over the limit is refused before one body byte is
read; a chunked body is read up to the limit, refused as soon as it passes it, and otherwise handed on whole.
"""

from __future__ import annotations

from typing import Callable

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from surge.server.errors import OpenAIError


def too_large(limit: int, size: str) -> OpenAIError:
    return OpenAIError(413, f"the request body is {size} bytes; this server takes at most {limit} "
                            "(server.max_request_bytes)", code="request_too_large")


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int, respond: Callable[[str, OpenAIError], Response]) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            if length.isdigit() and int(length) > self.max_bytes:
                await self.respond(scope["path"], too_large(self.max_bytes, length.decode()))(scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server reads exactly Content-Length bytes
            return
        if b"chunked" not in headers.get(b"transfer-encoding", b""):
            await self.app(scope, receive, send)
            return
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the app sees the disconnect below
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await self.respond(scope["path"], too_large(self.max_bytes, f"at least {size}"))(
                    scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
