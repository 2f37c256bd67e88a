"""The engine as the HTTP handlers see it: built in the background, admitted into, drained.

In: an `Engine` / `AsyncEngine` (or a factory that builds one, run in a
background thread so the port answers `/health` with 503 meanwhile), and
requests from the handlers: prompt token ids, `SamplingParams`, id, priority,
cache salt. Out: an `EngineStream` per accepted request (iterate it for
`RequestOutput`s; closing it aborts the request and frees its pages), 503s
when the engine is not ready, is draining, or more than `max_queue`
sequences already wait for a slot, 400s from `check_servable` for requests that
could never be served (more sequences than engine.max_num_seqs +
server.max_queue, more KV than the pool holds), and `abort_all()` for shutdown.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Optional

from surge.server.errors import bad_request, unavailable

logger = logging.getLogger("surge")


class EngineStream:
    """An accepted engine request, iterated with `async for`; `aclose()` aborts it if unfinished.

    `open()` adds the request before returning (AsyncEngine.generate validates at the call), so bad input
    raises ValueError there (a 400), not in the middle of a response that has already started.
    """

    def __init__(self, stream, on_close: Callable[[], None]) -> None:
        self._stream = stream
        self._on_close = on_close
        self._closed = False

    @classmethod
    async def open(cls, async_engine, prompt_token_ids: list[int], params, *, request_id: str, priority: int,
                   cache_salt: Optional[str], on_close: Callable[[], None]) -> "EngineStream":
        try:
            stream = async_engine.generate(None, params, request_id=request_id, prompt_token_ids=prompt_token_ids,
                                           priority=priority, cache_salt=cache_salt)
        except BaseException:
            on_close()
            raise
        return cls(stream, on_close)

    def __aiter__(self) -> "EngineStream":
        return self

    async def __anext__(self):
        return await self._stream.__anext__()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self._stream.aclose()
        finally:
            self._on_close()


class EngineHost:
    """Holds the AsyncEngine once ready; admission control over sequences in flight."""

    def __init__(self, max_queue: int = 1024) -> None:
        self.max_queue = max_queue
        self.async_engine = None
        self.error: Optional[str] = None
        self.draining = False
        self._build_thread: Optional[threading.Thread] = None
        self._ready_callbacks: list[Callable[[object], None]] = []
        self._in_flight: dict[str, int] = {}  # request id -> sequences (n)

    # ---- the engine ----------------------------------------------------------------------------
    def set_engine(self, engine) -> None:
        """Serve `engine` (an Engine, wrapped in an AsyncEngine, or an AsyncEngine)."""
        from surge.engine.async_engine import AsyncEngine

        self.async_engine = engine if isinstance(engine, AsyncEngine) else AsyncEngine(engine)
        for callback in self._ready_callbacks:
            callback(self.async_engine.engine)

    def on_ready(self, callback: Callable[[object], None]) -> None:
        self._ready_callbacks.append(callback)
        if self.async_engine is not None:
            callback(self.async_engine.engine)

    def build_in_background(self, factory: Callable[[], object]) -> threading.Thread:
        def build() -> None:
            try:
                self.set_engine(factory())
            except BaseException as exc:  # reported by /health and the launcher, never silently lost
                logger.exception("building the engine failed")
                self.error = f"{type(exc).__name__}: {exc}"

        self._build_thread = threading.Thread(target=build, name="surge-engine-build", daemon=True)
        self._build_thread.start()
        return self._build_thread

    @property
    def building(self) -> bool:
        return self._build_thread is not None and self._build_thread.is_alive()

    @property
    def engine(self):
        return None if self.async_engine is None else self.async_engine.engine

    @property
    def ready(self) -> bool:
        return self.async_engine is not None and self.async_engine.is_running and self.async_engine.error is None

    def status(self) -> tuple[bool, str]:
        if self.error is not None:
            return False, f"the engine failed to start: {self.error}"
        if self.async_engine is None:
            return False, "the engine is starting (loading the model and compiling); retry shortly"
        if self.async_engine.error is not None:
            return False, f"the engine failed while serving: {self.async_engine.error}"
        if not self.async_engine.is_running:
            return False, "the engine loop is not running"
        if self.draining:
            return False, "the server is shutting down"
        return True, "ok"

    def require_ready(self):
        """The AsyncEngine, or a 503 saying why it cannot take requests."""
        ok, message = self.status()
        if not ok:
            raise unavailable(message, code="draining" if self.draining else "not_ready")
        return self.async_engine

    # ---- admission -----------------------------------------------------------------------------
    @property
    def num_in_flight(self) -> int:
        return sum(self._in_flight.values())

    @property
    def num_slots(self) -> int:
        """Sequences the engine runs at once: engine.max_num_seqs on each data-parallel replica."""
        engine = self.engine.config.engine
        return engine.max_num_seqs * engine.data_parallel_size

    def check_servable(self, num_prompts: int, n: int, longest_prompt: int, max_tokens: int) -> None:
        """A 400 for a request no amount of waiting would let in: more sequences than an idle server admits
        (the slots plus server.max_queue), or one sequence needing more KV cache than the whole pool."""
        engine = self.engine
        slots = self.num_slots
        if num_prompts * n > slots + self.max_queue:
            what = f"{num_prompts} prompts x n={n}" if num_prompts > 1 else f"n={n}"
            dp = engine.config.engine.data_parallel_size
            running = (f"engine.max_num_seqs={slots}" if dp == 1 else
                       f"engine.max_num_seqs={engine.config.engine.max_num_seqs} x engine.data_parallel_size={dp}")
            raise bad_request(f"this request asks for {num_prompts * n} sequences ({what}); the server admits at "
                              f"most {slots + self.max_queue} at once ({running} running + "
                              f"server.max_queue={self.max_queue} waiting)", param="n", code="too_many_sequences")
        page_size = engine.config.cache.page_size
        # One sequence lives on one data-parallel replica: the pool that must hold it is one replica's.
        pool = min(replica.pages.num_total_pages for replica in engine.replica_stats()) * page_size
        need = longest_prompt + max_tokens
        if pool and need > pool:
            raise bad_request(f"one sequence of this request needs {need} tokens of KV cache ({longest_prompt} "
                              f"prompt + {max_tokens} max_tokens); the whole pool holds {pool} (cache.num_pages x "
                              f"cache.page_size={page_size})", param="max_tokens", code="kv_cache_too_small")

    def admit(self, request_id: str, num_seqs: int) -> None:
        """Count a request in, or a 503 when its sequences would push the queue past max_queue."""
        slots = self.num_slots
        in_flight = self.num_in_flight
        if in_flight + num_seqs > slots + self.max_queue:
            raise unavailable(f"the server is overloaded: {in_flight} sequences are in flight or waiting (it runs "
                              f"{slots} at once and server.max_queue={self.max_queue} may wait) and this request "
                              f"adds {num_seqs}; retry later", code="overloaded")
        self._in_flight[request_id] = num_seqs

    def release(self, request_id: str) -> None:
        self._in_flight.pop(request_id, None)

    async def open_stream(self, prompt_token_ids: list[int], params, *, request_id: str, priority: int = 0,
                          cache_salt: Optional[str] = None) -> EngineStream:
        """Admit and add one request; ValueError for input the engine refuses, OpenAIError 503 when full."""
        async_engine = self.require_ready()
        self.admit(request_id, params.n)
        try:
            return await EngineStream.open(async_engine, prompt_token_ids, params, request_id=request_id,
                                           priority=priority, cache_salt=cache_salt,
                                           on_close=lambda: self.release(request_id))
        except BaseException:
            self.release(request_id)
            raise

    async def abort_all(self) -> int:
        """Abort every request in flight (their streams end with finish_reason 'abort'); returns how many."""
        if self.async_engine is None:
            return 0
        ids = list(self._in_flight)
        for request_id in ids:
            try:
                await self.async_engine.abort(request_id)
            except ValueError:
                pass  # it finished meanwhile
        return len(ids)

    def stop(self) -> None:
        if self.async_engine is not None:
            self.async_engine.stop()
