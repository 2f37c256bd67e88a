"""Merging several request streams into one, as their outputs come.

In: async iterators of outputs (AsyncEngine.generate's RequestStreams, or anything wrapping them) that
have `aclose()`. Out: (stream index, output) pairs in arrival order; an exception in one stream is raised
to the consumer; closing the merge (or leaving it early) closes every stream, which aborts the requests
still running. The server's multi-prompt and n > 1 answers and vSurge's streamed generate share it.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Sequence

_END = object()


async def merge(streams: Sequence[AsyncIterator]) -> AsyncIterator[tuple[int, object]]:
    """(stream index, output) pairs from several streams as they come; closing it closes them all."""
    queue: asyncio.Queue = asyncio.Queue()

    async def pump(index: int, stream: AsyncIterator) -> None:
        try:
            async for item in stream:
                queue.put_nowait((index, item))
        except Exception as exc:  # handed to the consumer, which re-raises it
            queue.put_nowait((index, exc))
        finally:
            await stream.aclose()
            queue.put_nowait((index, _END))

    tasks = [asyncio.ensure_future(pump(i, s)) for i, s in enumerate(streams)]
    remaining = len(tasks)
    try:
        while remaining:
            index, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["merge"]
