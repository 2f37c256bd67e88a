"""AsyncEngine: the engine driven by a background thread, consumed with `async for`.

In: requests from any asyncio event loop (`generate`), aborts, cancellations.
Out: a `RequestStream` per request: `generate` validates and adds the request
at the call (bad input raises there) after registering the stream, so every
RequestOutput the loop thread produces reaches the caller's asyncio queue, even
one made in the step that admitted the request. Closing or cancelling the
stream (or a client going away) aborts the request at once, which frees its pages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections import deque
from typing import AsyncIterator, Optional

from surge.engine.engine import Engine, PromptLike
from surge.engine.outputs import RequestOutput
from surge.engine.stats import EngineStats
from surge.sampling.params import SamplingParams

logger = logging.getLogger("surge")


class AsyncEngine:
    def __init__(self, engine: Engine, *, start: bool = True) -> None:
        self.engine = engine
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._queues_lock = threading.Lock()
        self._wake = threading.Event()
        # Streams dropped unread (garbage-collected): their ids wait here for the loop thread to abort them.
        # A deque append takes no lock, so a collection that runs while some thread holds one cannot deadlock.
        self._orphaned: deque = deque()
        self._stopped = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.error: Optional[BaseException] = None
        if start:
            self.start()

    @classmethod
    def from_pretrained(cls, model: str = "smollm2-135m-instruct", **overrides) -> "AsyncEngine":
        return cls(Engine.from_pretrained(model, **overrides))

    # ---- the loop thread -----------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stopped.clear()
            self._thread = threading.Thread(target=self._run, name="surge-engine-loop", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stopped.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped.is_set():
            while self._orphaned:
                self._abort_orphan(self._orphaned.popleft())
            if not self.engine.has_unfinished_requests():
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            try:
                outputs = self.engine.step()
            except BaseException as exc:  # a broken step must not hang every caller
                logger.exception("engine step failed")
                self.error = exc
                self._fail_all(exc)
                continue
            for output in outputs:
                self._deliver(output.request_id, output)

    def _deliver(self, request_id: str, item) -> None:
        with self._queues_lock:
            target = self._queues.get(request_id)
        if target is not None:
            loop, queue = target
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def _fail_all(self, exc: BaseException) -> None:
        with self._queues_lock:
            ids = list(self._queues)
        for request_id in ids:
            try:
                self.engine.abort(request_id)
            except ValueError:
                pass
            self._deliver(request_id, exc)

    # ---- API -----------------------------------------------------------------------------
    def generate(self, prompt: Optional[PromptLike] = None, params: Optional[SamplingParams] = None, *,
                 request_id: Optional[str] = None, **kwargs) -> "RequestStream":
        """Add a request and return its stream of outputs (each with delta_text), iterated with `async for`.

        Called from a running event loop. The request is added before this returns: bad input raises
        ValueError here, at the call, and the stream is registered first, so an output the engine produces
        before the caller starts iterating (even in the step that admitted it) waits in the stream.
        Leaving the iteration early (break + `aclose()`, or cancelling the task) aborts the request.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        request_id = str(request_id) if request_id is not None else self.engine.new_request_id()
        with self._queues_lock:
            if request_id in self._queues:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._queues[request_id] = (loop, queue)
        try:
            self.engine.add_request(prompt, params, request_id=request_id, **kwargs)
        except BaseException:
            self._unregister(request_id)
            raise
        self._wake.set()
        return RequestStream(self, request_id, queue)

    def _abort_orphan(self, request_id: str) -> None:
        self._unregister(request_id)
        try:
            self.engine.abort(request_id)
        except ValueError:  # it finished in the meantime
            pass

    def _unregister(self, request_id: str) -> None:
        with self._queues_lock:
            self._queues.pop(request_id, None)

    async def generate_full(self, prompt: Optional[PromptLike] = None, params: Optional[SamplingParams] = None,
                            **kwargs) -> RequestOutput:
        """Await the final output of one request."""
        final = None
        async for output in self.generate(prompt, params, **kwargs):
            final = output
        return final

    async def abort(self, request_id: str) -> None:
        self.engine.abort(request_id)
        self._wake.set()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def replica_stats(self) -> tuple[EngineStats, ...]:
        return self.engine.replica_stats()


class RequestStream:
    """One added request's outputs, in order, until the finished one; closing it early aborts the request."""

    def __init__(self, owner: AsyncEngine, request_id: str, queue: asyncio.Queue) -> None:
        self.request_id = request_id
        self._owner = owner
        self._queue = queue
        self._finished = False
        self._closed = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._finished or self._closed:
            raise StopAsyncIteration
        try:
            item = await self._queue.get()
        except BaseException:  # cancelled while waiting (a client went away): abort at once
            self._close()
            raise
        if isinstance(item, BaseException):
            self._close()
            raise RuntimeError(f"engine failed while serving {self.request_id}: {item}") from item
        if item.finished:
            self._finished = True
            self._close()
        return item

    async def aclose(self) -> None:
        self._close()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._owner._unregister(self.request_id)
        if not self._finished:
            try:
                self._owner.engine.abort(self.request_id)
            except ValueError:  # it finished in the meantime
                pass
            self._owner._wake.set()

    def __del__(self) -> None:  # dropped without being read to the end or closed: the loop thread aborts it
        if not self._closed and not self._finished:
            self._owner._orphaned.append(self.request_id)
            self._owner._wake.set()
