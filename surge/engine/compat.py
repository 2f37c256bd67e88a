"""eSurge and vSurge spellings: thin aliases over the one Engine.

In: the constructor arguments of EasyDeL's eSurge (`model`, `tokenizer`,
`max_model_len`, `max_num_seqs`, `hbm_utilization`, `page_size`,
`enable_prefix_caching`, ...) and vSurge/oDriver (`processor`,
`max_prefill_length`, `prefill_lengths`, `max_concurrent_decodes`, ...).
Out: the same Engine / AsyncEngine, with their method names. Arguments that
have no meaning in surge are accepted and listed in a log line, never dropped
silently.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Sequence, Union

from surge.config import make_config
from surge.engine.async_engine import AsyncEngine
from surge.engine.engine import Engine
from surge.sampling.params import SamplingParams

logger = logging.getLogger("surge")


def _model_source(model) -> str:
    if isinstance(model, str):
        return model
    raise ValueError(f"model must be a catalogue name, an HF directory or a .gguf path (got {type(model).__name__}); "
                     "surge loads its own weights")


def _warn_ignored(api: str, ignored: dict) -> None:
    used = {k: v for k, v in ignored.items() if v is not None}
    if used:
        logger.info("%s: arguments without effect in surge (accepted for compatibility): %s", api, sorted(used))


class eSurge(Engine):
    """EasyDeL eSurge's constructor over surge's Engine (same generate / stream / step / abort)."""

    def __init__(self, model: str = "smollm2-135m-instruct", tokenizer=None, *, max_model_len: int = 2048,
                 max_num_seqs: int = 32, hbm_utilization: float = 0.9, page_size: int = 16,
                 enable_prefix_caching: bool = True, max_num_batched_tokens: Optional[int] = None,
                 esurge_name: Optional[str] = None, dtype: str = "auto", backend: str = "auto",
                 num_pages: Optional[int] = None, scheduling_policy: str = "fcfs", runner_verbose: bool = False,
                 min_input_pad: Optional[int] = None, use_aot_forward: Optional[bool] = None,
                 cache_config=None, progress: bool = True, **overrides) -> None:
        _warn_ignored("eSurge", {"min_input_pad": min_input_pad, "use_aot_forward": use_aot_forward,
                                 "cache_config": cache_config})
        if isinstance(tokenizer, str):
            overrides["tokenizer"] = tokenizer
        options = dict(max_model_len=max_model_len, max_num_seqs=max_num_seqs, hbm_utilization=hbm_utilization,
                       page_size=page_size, enable_prefix_caching=enable_prefix_caching, dtype=dtype,
                       backend=backend, num_pages=num_pages, scheduling_policy=scheduling_policy, **overrides)
        if max_num_batched_tokens is not None:
            options["max_num_batched_tokens"] = max_num_batched_tokens
        else:
            options["max_num_batched_tokens"] = max(512, max_num_seqs)
        if runner_verbose:
            options["engine.log_level"] = "DEBUG"
        super().__init__(make_config(_model_source(model), **options), progress=progress)
        if tokenizer is not None and not isinstance(tokenizer, str):
            self.tokenizer = tokenizer
            self.output_processor.tokenizer = tokenizer
        self.esurge_name = esurge_name or f"esurge-{self.model_name}"


@dataclass
class ReturnSample:
    """vSurge's per-prompt result."""

    text: str
    token_ids: list[int]
    num_generated_tokens: int
    tokens_per_second: float
    time_spent_computing: float
    finish_reason: Optional[str] = None
    accumulated_text: str = ""
    extras: dict = field(default_factory=dict)


class vSurge:
    """EasyDeL vSurge / oDriver API over AsyncEngine: compile(), start(), await generate(...), stop()."""

    def __init__(self, engine: Engine, vsurge_name: Optional[str] = None) -> None:
        self.engine = engine
        self.vsurge_name = vsurge_name or f"vsurge-{engine.model_name}"
        self._async: Optional[AsyncEngine] = None

    @classmethod
    def from_model(cls, model: str = "smollm2-135m-instruct", processor=None, *, max_prefill_length: int = 512,
                   prefill_lengths: Union[int, Sequence[int], None] = None, page_size: int = 16,
                   hbm_utilization: float = 0.9, max_concurrent_prefill: Optional[int] = None,
                   max_concurrent_decodes: int = 32, max_length: int = 2048, seed: int = 0,
                   vsurge_name: Optional[str] = None, progress: bool = True, **overrides) -> "vSurge":
        # surge mixes prefill chunks and decodes in one budget, so max_concurrent_prefill has no separate meaning.
        _warn_ignored("vSurge", {"max_concurrent_prefill": max_concurrent_prefill})
        if isinstance(prefill_lengths, int):
            prefill_lengths = [prefill_lengths]
        budget = max(max_prefill_length, max_concurrent_decodes)
        options = dict(max_num_seqs=max_concurrent_decodes, max_num_batched_tokens=budget, page_size=page_size,
                       hbm_utilization=hbm_utilization, max_model_len=max_length, seed=seed,
                       compile_at_startup=False, **overrides)
        if prefill_lengths:
            options["token_buckets"] = sorted(set(int(x) for x in prefill_lengths if x <= budget) | {budget})
        if isinstance(processor, str):
            options["tokenizer"] = processor
        engine = Engine(make_config(_model_source(model), **options), progress=progress)
        if processor is not None and not isinstance(processor, str):
            engine.tokenizer = processor
            engine.output_processor.tokenizer = processor
        return cls(engine, vsurge_name)

    create_odriver = from_model

    def compile(self) -> None:
        self.engine.runner.compile_all(progress=True)
        self.engine._num_compiles_after_warmup = self.engine.stats()["num_compiles"]

    def start(self) -> None:
        if self._async is None:
            self._async = AsyncEngine(self.engine)
        self._async.start()

    def stop(self) -> None:
        if self._async is not None:
            self._async.stop()

    @property
    def processor(self):
        return self.engine.tokenizer

    async def generate(self, prompts: Union[str, Sequence[str]], sampling_params=None, stream: bool = False):
        """stream=False: the list of final ReturnSample. stream=True: an async iterator of snapshot lists."""
        if self._async is None:
            self.start()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = (list(sampling_params) if isinstance(sampling_params, (list, tuple))
                  else [sampling_params or SamplingParams()] * len(prompts))
        if stream:
            return self._stream(prompts, params)
        results = await asyncio.gather(*(self._one(p, sp) for p, sp in zip(prompts, params)))
        return list(results)

    async def _one(self, prompt: str, params: SamplingParams) -> ReturnSample:
        started = time.perf_counter()
        final = await self._async.generate_full(prompt, params)
        return _to_sample(final, time.perf_counter() - started)

    async def _stream(self, prompts, params) -> AsyncIterator[list[Optional[ReturnSample]]]:
        started = time.perf_counter()
        snapshot: list[Optional[ReturnSample]] = [None] * len(prompts)
        queue: asyncio.Queue = asyncio.Queue()

        async def pump(i, prompt, sp):
            async for out in self._async.generate(prompt, sp):
                await queue.put((i, out))
            await queue.put((i, None))

        tasks = [asyncio.create_task(pump(i, p, sp)) for i, (p, sp) in enumerate(zip(prompts, params))]
        remaining = len(tasks)
        try:
            while remaining:
                i, out = await queue.get()
                if out is None:
                    remaining -= 1
                    continue
                snapshot[i] = _to_sample(out, time.perf_counter() - started)
                yield list(snapshot)
        finally:
            for task in tasks:
                task.cancel()


def _to_sample(output, elapsed: float) -> ReturnSample:
    completion = output.outputs[0]
    num = len(completion.token_ids)
    return ReturnSample(text=completion.text, token_ids=list(completion.token_ids), num_generated_tokens=num,
                        tokens_per_second=num / elapsed if elapsed > 0 else 0.0, time_spent_computing=elapsed,
                        finish_reason=completion.finish_reason, accumulated_text=completion.text)
