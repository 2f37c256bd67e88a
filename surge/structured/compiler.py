"""The grammar compile worker: specs in, ready matchers out, off the step loop.

In: ``StructuredOutputsParams`` from ``Engine.add_request`` (or the server,
which waits on the result with a timeout before it accepts a request). Out: a
``concurrent.futures.Future`` of a ``CompiledGrammar`` (or raising
``GrammarError`` with llguidance's message). Compiles run in a small thread
pool (llguidance drops the GIL while it builds a grammar); results, failures
included, are cached by (grammar, tokenizer) with LRU eviction — a compiler
serves one tokenizer, so its cache is keyed by ``spec.key`` — and a repeated
schema costs one ``deep_copy`` of its matcher.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Optional, Sequence

from surge.structured.spec import GrammarError, StructuredOutputsParams
from surge.structured.tokenizer import grammar_tokenizer

logger = logging.getLogger("surge")

MAX_CACHED_GRAMMARS = 512


class CompiledGrammar:
    """A grammar llguidance accepted; each request gets its own matcher copied from the template."""

    def __init__(self, template, compile_seconds: float) -> None:
        self._template = template
        self.compile_seconds = compile_seconds

    def new_matcher(self):
        return self._template.deep_copy()


class GrammarCompiler:
    def __init__(self, tokenizer, vocab_size: int, eos_token_ids: Sequence[int], num_workers: int = 1,
                 max_cached: int = MAX_CACHED_GRAMMARS) -> None:
        self._tokenizer_source = (tokenizer, vocab_size, tuple(eos_token_ids))
        self._ll_tokenizer = None
        self._fingerprint: Optional[str] = None
        self._tokenizer_lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=num_workers, thread_name_prefix="surge-grammar")
        self._cache: "OrderedDict[str, Future]" = OrderedDict()
        self._cache_lock = threading.Lock()
        self._max_cached = max_cached
        self.num_compiles = 0
        self.num_cache_hits = 0

    @property
    def vocab_size(self) -> int:
        return self._tokenizer_source[1]

    def submit(self, spec: StructuredOutputsParams) -> Future:
        """The future CompiledGrammar of ``spec`` (already done when the cache has it)."""
        key = spec.key
        with self._cache_lock:
            future = self._cache.get(key)
            if future is not None:
                self._cache.move_to_end(key)
                self.num_cache_hits += 1
                return future
            future = self._pool.submit(self._compile, spec)
            self._cache[key] = future
            while len(self._cache) > self._max_cached:
                self._cache.popitem(last=False)
        return future

    def tokenizer(self):
        """The LLTokenizer (built on first use) and its fingerprint."""
        with self._tokenizer_lock:
            if self._ll_tokenizer is None:
                started = time.perf_counter()
                self._ll_tokenizer, self._fingerprint = grammar_tokenizer(*self._tokenizer_source)
                logger.info("grammar tokenizer ready in %.2f s", time.perf_counter() - started)
            return self._ll_tokenizer, self._fingerprint

    def _compile(self, spec: StructuredOutputsParams) -> CompiledGrammar:
        import llguidance

        ll_tokenizer, _ = self.tokenizer()
        started = time.perf_counter()
        grammar = spec.to_grammar()
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise GrammarError(f"structured_outputs.{spec.kind} does not compile: {matcher.get_error()}")
        self.num_compiles += 1
        return CompiledGrammar(matcher, time.perf_counter() - started)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


__all__ = ["CompiledGrammar", "GrammarCompiler", "MAX_CACHED_GRAMMARS"]
