"""Server-Sent Events responses that end their request when the client goes away.

In: an async iterator of already formatted events (`event(payload)` gives
`data: ...\\n\\n`). Out: a streaming HTTP response that sends them, listens for
the client's disconnect meanwhile, and on disconnect (or any other end)
closes the iterator and runs the cleanup — which closes the engine stream inside it and so aborts
the request and frees its pages at once, rather than when the next token
fails to send or the garbage collector gets round to it.

Also `run_until_disconnect` for non-streamed answers: the work is cancelled
when the client disconnects before the answer is ready.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable, Optional, TypeVar

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

DONE = "data: [DONE]\n\n"
T = TypeVar("T")


def event(payload: str) -> str:
    return f"data: {payload}\n\n"


class ClientDisconnected(Exception):
    """The client closed the connection before the answer was ready."""


class EventStreamResponse(Response):
    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str], on_close: Optional[Callable[[], Awaitable[None]]] = None,
                 status_code: int = 200) -> None:
        self.events = events
        self.on_close = on_close
        self.status_code = status_code
        self.background = None
        self.init_headers({"cache-control": "no-cache", "x-accel-buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:
                async def stream() -> None:
                    await self._stream(send)
                    group.cancel_scope.cancel()

                async def watch() -> None:
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                group.start_soon(watch)
        finally:
            with anyio.CancelScope(shield=True):
                await self.events.aclose()
                if self.on_close is not None:
                    await self.on_close()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        try:
            async for chunk in self.events:
                await send({"type": "http.response.body", "body": chunk.encode("utf-8"), "more_body": True})
        except OSError:
            return  # the client is gone; the watcher or the finally above ends the request
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def run_until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work`, cancelling it (and raising ClientDisconnected) if the client disconnects first."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        task.cancel()
        watcher.cancel()
        raise
    if task in done:
        watcher.cancel()
        return task.result()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    raise ClientDisconnected()
