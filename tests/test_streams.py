"""surge.engine.streams.merge: one merge of request streams for the server and vSurge (fake streams)."""

from __future__ import annotations

import asyncio

import pytest

from surge.engine.streams import merge


class FakeStream:
    def __init__(self, items, fail=None):
        self.items, self.fail, self.closed = list(items), fail, False

    def __aiter__(self):
        return self

    async def __anext__(self):
        await asyncio.sleep(0)
        if self.items:
            return self.items.pop(0)
        if self.fail is not None:
            raise self.fail
        raise StopAsyncIteration

    async def aclose(self):
        self.closed = True


def test_pairs_come_tagged_with_their_stream_and_every_stream_is_closed():
    streams = [FakeStream("ab"), FakeStream("xyz"), FakeStream("")]

    async def main():
        return [pair async for pair in merge(streams)]

    pairs = asyncio.run(main())
    assert sorted(pairs) == [(0, "a"), (0, "b"), (1, "x"), (1, "y"), (1, "z")]
    assert [item for i, item in pairs if i == 1] == ["x", "y", "z"]  # each stream's order is kept
    assert all(s.closed for s in streams)


def test_an_error_reaches_the_consumer_and_leaving_early_closes_the_rest():
    streams = [FakeStream("a", fail=RuntimeError("engine failed")), FakeStream("x" * 100)]

    async def failing():
        async for _ in merge(streams):
            pass

    with pytest.raises(RuntimeError, match="engine failed"):
        asyncio.run(failing())
    assert all(s.closed for s in streams)

    streams = [FakeStream("abc"), FakeStream("xyz")]

    async def early():
        merged = merge(streams)
        async for _ in merged:
            break
        await merged.aclose()

    asyncio.run(early())
    assert all(s.closed for s in streams)
