"""AsyncEngine: the engine driven by a background thread, consumed with `async for`.

In: requests from any asyncio event loop (`generate`), aborts, cancellations.
Out: RequestOutput objects delivered to each caller's asyncio queue as the loop
thread steps the engine. Cancelling the async generator (or a client going
away) aborts the request at once, which frees its pages.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import AsyncIterator, Optional

from surge.engine.engine import Engine, PromptLike
from surge.engine.outputs import RequestOutput
from surge.sampling.params import SamplingParams

logger = logging.getLogger("surge")


class AsyncEngine:
    def __init__(self, engine: Engine, *, start: bool = True) -> None:
        self.engine = engine
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._queues_lock = threading.Lock()
        self._wake = threading.Event()
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
    async def generate(self, prompt: Optional[PromptLike] = None, params: Optional[SamplingParams] = None, *,
                       request_id: Optional[str] = None, **kwargs) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs (each with delta_text) until it finishes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        request_id = str(request_id) if request_id is not None else self.engine.new_request_id()
        # The stream is registered before the request can produce anything, so no output is missed.
        with self._queues_lock:
            if request_id in self._queues:
                raise ValueError(f"request id {request_id!r} is already in use")
            self._queues[request_id] = (loop, queue)
        try:
            self.engine.add_request(prompt, params, request_id=request_id, **kwargs)
        except BaseException:
            with self._queues_lock:
                self._queues.pop(request_id, None)
            raise
        self._wake.set()
        finished = False
        try:
            while not finished:
                item = await queue.get()
                if isinstance(item, BaseException):
                    raise RuntimeError(f"engine failed while serving {request_id}: {item}") from item
                finished = item.finished
                yield item
        finally:
            with self._queues_lock:
                self._queues.pop(request_id, None)
            if not finished:
                try:
                    self.engine.abort(request_id)
                except ValueError:
                    pass
                self._wake.set()

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

    def stats(self) -> dict:
        return self.engine.stats()
