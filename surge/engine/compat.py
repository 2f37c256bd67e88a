"""eSurge and vSurge/oDriver spellings: thin aliases over the one Engine.

In: the constructor arguments of EasyDeL's eSurge and vSurge/oDriver, each mapped
onto a surge config key (a model is a catalogue name, an HF directory or a .gguf
path; `tokenizer=` / `processor=` may also be a transformers tokenizer object).
Out: the same Engine / AsyncEngine, with their method names, and vSurge's
`ReturnSample` results.

eSurge argument            surge config key
  max_model_len, max_num_seqs, max_num_batched_tokens, page_size, hbm_utilization,
  enable_prefix_caching    the keys of the same name
  cache_config             the whole `cache` section (a surge.config.CacheConfig)
  min_input_pad            smallest token bucket: a step of fewer tokens is padded to it
  use_aot_forward          engine.compile_at_startup (False: compile each bucket on first use)
  runner_verbose           engine.log_level=DEBUG
  esurge_name              the engine's name (`esurge_name`), shown in logs
vSurge / oDriver argument
  max_concurrent_decodes   engine.max_num_seqs (the slots)
  max_concurrent_prefill   scheduler.max_num_prefill_seqs (requests computing prompt tokens per step)
  max_prefill_length       scheduler.long_prefill_token_threshold (the prefill chunk; longer prompts
                           are chunked, never truncated) and the step's token budget
  prefill_lengths          engine.token_buckets (plus the budget)
  max_length, seed         engine.max_model_len, engine.seed
Every argument listed has an effect; anything else must be a surge config key.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Optional, Sequence, Union

from surge.config import CacheConfig, make_config
from surge.engine.async_engine import AsyncEngine
from surge.engine.streams import merge
from surge.engine.engine import Engine
from surge.runner.buckets import powers_of_two
from surge.sampling.params import SamplingParams

logger = logging.getLogger("surge")


def _model_source(model) -> str:
    if isinstance(model, str):
        return model
    raise ValueError(f"model must be a catalogue name, an HF directory or a .gguf path (got {type(model).__name__}); "
                     "surge loads its own weights")


def _cache_options(cache_config, explicit: dict) -> dict:
    """cache.* overrides from a CacheConfig, refusing an explicit argument that contradicts it."""
    if cache_config is None:
        return {k: v for k, v in explicit.items() if v is not None}
    if not isinstance(cache_config, CacheConfig):
        raise ValueError(f"cache_config must be a surge CacheConfig (from surge.esurge import CacheConfig), "
                         f"got {type(cache_config).__name__}")
    options = {f"cache.{f.name}": getattr(cache_config, f.name) for f in dataclasses.fields(CacheConfig)}
    for name, value in explicit.items():
        if value is None:
            continue
        if value != options[f"cache.{name}"]:
            raise ValueError(f"{name}={value!r} contradicts cache_config.{name}={options[f'cache.{name}']!r}; "
                             f"give it in one place")
    return options


class eSurge(Engine):
    """EasyDeL eSurge's constructor over surge's Engine (same generate / stream / add_request / step / abort)."""

    def __init__(self, model: str = "smollm2-135m-instruct", tokenizer=None, *, max_model_len: int = 2048,
                 max_num_seqs: int = 32, hbm_utilization: Optional[float] = None, page_size: Optional[int] = None,
                 enable_prefix_caching: Optional[bool] = None, max_num_batched_tokens: Optional[int] = None,
                 esurge_name: Optional[str] = None, dtype: str = "auto", backend: str = "auto",
                 num_pages: Optional[int] = None, scheduling_policy: str = "fcfs", runner_verbose: bool = False,
                 min_input_pad: Optional[int] = None, use_aot_forward: bool = True,
                 cache_config: Optional[CacheConfig] = None, progress: bool = True, **overrides) -> None:
        if isinstance(tokenizer, str):
            overrides["tokenizer"] = tokenizer
        budget = max_num_batched_tokens if max_num_batched_tokens is not None else max(512, max_num_seqs)
        options = dict(max_model_len=max_model_len, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget,
                       dtype=dtype, backend=backend, scheduling_policy=scheduling_policy,
                       compile_at_startup=use_aot_forward, **overrides)
        options.update(_cache_options(cache_config, dict(
            hbm_utilization=hbm_utilization, page_size=page_size, enable_prefix_caching=enable_prefix_caching,
            num_pages=num_pages)))
        if min_input_pad is not None:
            if min_input_pad < 1 or min_input_pad > budget:
                raise ValueError(f"min_input_pad={min_input_pad} must be in [1, max_num_batched_tokens={budget}]")
            if "token_buckets" in options:
                raise ValueError("give min_input_pad or token_buckets, not both")
            options["token_buckets"] = powers_of_two(min_input_pad, budget)
        if runner_verbose:
            options["engine.log_level"] = "DEBUG"
        super().__init__(make_config(_model_source(model), **options), progress=progress,
                         tokenizer=None if isinstance(tokenizer, str) else tokenizer)
        self.esurge_name = esurge_name or f"esurge-{self.model_name}"
        logger.info("eSurge %r ready (%s)", self.esurge_name, self.model_name)


@dataclass
class ReturnSample:
    """vSurge's per-prompt result; while streaming, `text` is the cumulative text so far."""

    text: str
    token_ids: list[int]
    num_generated_tokens: int
    tokens_per_second: float
    time_spent_computing: float
    finish_reason: Optional[str] = None
    accumulated_text: str = ""
    extras: dict = field(default_factory=dict)


class vSurge:
    """EasyDeL vSurge / oDriver API over AsyncEngine: compile(), start(), generate(...), stop().

    `generate(..., stream=False)` is awaited for the list of final ReturnSample;
    `generate(..., stream=True)` is iterated with `async for`, yielding one list of
    ReturnSample (one per prompt, cumulative text) per update.
    """

    def __init__(self, engine: Engine, vsurge_name: Optional[str] = None) -> None:
        self.engine = engine
        self.vsurge_name = vsurge_name or self.driver_name
        self._async: Optional[AsyncEngine] = None

    @classmethod
    def from_model(cls, model: str = "smollm2-135m-instruct", processor=None, *, max_prefill_length: int = 512,
                   prefill_lengths: Union[int, Sequence[int], None] = None, page_size: int = 16,
                   hbm_utilization: float = 0.9, max_concurrent_prefill: Optional[int] = None,
                   max_concurrent_decodes: int = 32, max_length: int = 2048, seed: int = 0,
                   vsurge_name: Optional[str] = None, progress: bool = True, **overrides) -> "vSurge":
        if isinstance(prefill_lengths, int):
            prefill_lengths = [prefill_lengths]
        budget = max(max_prefill_length, max_concurrent_decodes)
        options = dict(max_num_seqs=max_concurrent_decodes, max_num_batched_tokens=budget, page_size=page_size,
                       hbm_utilization=hbm_utilization, max_model_len=max_length, seed=seed,
                       long_prefill_token_threshold=max_prefill_length, compile_at_startup=False, **overrides)
        if max_concurrent_prefill is not None:
            if max_concurrent_prefill < 1:
                raise ValueError(f"max_concurrent_prefill={max_concurrent_prefill} must be >= 1")
            options["max_num_prefill_seqs"] = max_concurrent_prefill
        if prefill_lengths:
            options["token_buckets"] = sorted(set(int(x) for x in prefill_lengths if x <= budget) | {budget})
        if isinstance(processor, str):
            options["tokenizer"] = processor
        engine = Engine(make_config(_model_source(model), **options), progress=progress,
                        tokenizer=None if isinstance(processor, str) else processor)
        return cls(engine, vsurge_name)

    create_odriver = from_model

    # ---- the oDriver's face ------------------------------------------------------------------
    @property
    def driver_name(self) -> str:
        return f"odriver-{self.engine.model_name}"

    @property
    def processor(self):
        return self.engine.tokenizer

    @property
    def num_used_slots(self) -> int:
        """Sequences in flight (running), out of get_total_concurrent_requests()."""
        return sum(replica.scheduler.num_running for replica in self.engine.replicas)

    def get_total_concurrent_requests(self) -> int:
        """The slots: most sequences decoding at once (max_concurrent_decodes), over every replica."""
        return sum(replica.scheduler.max_num_seqs for replica in self.engine.replicas)

    def submit_request(self, prompt: str, sampling_params: Optional[SamplingParams] = None) -> "asyncio.Task":
        """Queue one prompt from inside a running event loop; the task's result is its final ReturnSample."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError("submit_request needs a running asyncio event loop (call it from async code)") from None
        if self._async is None:
            self.start()
        return asyncio.ensure_future(self._one(prompt, sampling_params or SamplingParams()))

    # ---- lifecycle ---------------------------------------------------------------------------
    def compile(self) -> None:
        for replica in self.engine.replicas:
            replica.runner.compile_all(progress=True)
        self.engine._num_compiles_after_warmup = self.engine.stats().num_compiles

    def start(self) -> None:
        if self._async is None:
            self._async = AsyncEngine(self.engine)
        self._async.start()

    def stop(self) -> None:
        if self._async is not None:
            self._async.stop()

    # ---- generation --------------------------------------------------------------------------
    def generate(self, prompts: Union[str, Sequence[str]], sampling_params=None, stream: bool = False):
        """stream=False: a coroutine of the final ReturnSample list. stream=True: an async iterator of lists."""
        if self._async is None:
            self.start()
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        params = (list(sampling_params) if isinstance(sampling_params, (list, tuple))
                  else [sampling_params or SamplingParams()] * len(prompts))
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} sampling params for {len(prompts)} prompts")
        return self._stream(prompts, params) if stream else self._gather(prompts, params)

    async def _gather(self, prompts, params) -> list[ReturnSample]:
        return list(await asyncio.gather(*(self._one(p, sp) for p, sp in zip(prompts, params))))

    async def _one(self, prompt: str, params: SamplingParams) -> ReturnSample:
        started = time.perf_counter()
        final = await self._async.generate_full(prompt, params)
        return _to_sample(final, time.perf_counter() - started)

    async def _stream(self, prompts, params) -> AsyncIterator[list[ReturnSample]]:
        started = time.perf_counter()
        snapshot = [ReturnSample(text="", token_ids=[], num_generated_tokens=0, tokens_per_second=0.0,
                                 time_spent_computing=0.0) for _ in prompts]
        # Every request is added (and validated) before the first snapshot; closing this generator aborts the rest.
        streams = []
        try:
            for prompt, sp in zip(prompts, params):
                streams.append(self._async.generate(prompt, sp))
        except BaseException:
            for stream in streams:
                await stream.aclose()
            raise
        merged = merge(streams)
        try:
            async for i, out in merged:
                snapshot[i] = _to_sample(out, time.perf_counter() - started)
                yield list(snapshot)
        finally:
            await merged.aclose()


def _to_sample(output, elapsed: float) -> ReturnSample:
    completion = output.outputs[0]
    num = len(completion.token_ids)
    return ReturnSample(text=completion.text, token_ids=list(completion.token_ids), num_generated_tokens=num,
                        tokens_per_second=num / elapsed if elapsed > 0 else 0.0, time_spent_computing=elapsed,
                        finish_reason=completion.finish_reason, accumulated_text=completion.text)
