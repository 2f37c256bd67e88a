"""CPU work of a request kept off the event loop: tokenizing, chat templating, detokenizing.

In: a function of the request (its prompt text, messages, token ids) and the tokenizer. Out: its result,
computed on a small thread pool, so one large prompt never stalls `/health`, other requests' parsing, or
the token streams of requests in flight. `encode` calls the Rust tokenizer's batch entry point, which
releases the GIL while it works (`PreTrainedTokenizerFast.encode` holds it while it converts offsets),
and gives the same ids. With a `limit`, a prompt longer than it raises `TooManyTokens` with its count
and its ids are never made into a Python list (a million ints, built while holding the GIL).
"""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

T = TypeVar("T")

NUM_WORKERS = max(2, min(8, os.cpu_count() or 2))


class WorkerPool:
    def __init__(self, num_workers: int = NUM_WORKERS) -> None:
        self.num_workers = num_workers
        self._executor = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="surge-tokenize")

    async def run(self, fn: Callable[..., T], *args) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class TooManyTokens(Exception):
    def __init__(self, num_tokens: int) -> None:
        super().__init__(f"{num_tokens} tokens")
        self.num_tokens = num_tokens


def encode(tokenizer, text: str, add_special_tokens: bool, limit: Optional[int] = None) -> list[int]:
    """`tokenizer.encode(text, add_special_tokens=...)`, with the GIL released while the Rust tokenizer runs;
    `TooManyTokens` when the text has more than `limit` tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        ids = tokenizer.encode(text, add_special_tokens=add_special_tokens)
        if limit is not None and len(ids) > limit:
            raise TooManyTokens(len(ids))
        return ids
    encoding = backend.encode_batch([text], add_special_tokens=add_special_tokens)[0]
    if limit is not None and len(encoding) > limit:
        raise TooManyTokens(len(encoding))
    return encoding.ids
