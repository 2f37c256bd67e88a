"""Engine: the synchronous public API over scheduler, runner and output side.

In: prompts (text or token ids) with SamplingParams, via add_request / generate /
stream. Out: RequestOutput objects (shaped by SamplingParams.output_kind: cumulative or
delta text and token ids, finish reasons, metrics). One `step()` = schedule ->
dispatch -> reconcile -> emit. With `engine.async_scheduling` the step reconciled
is the previous one: step N+1 is built and dispatched before step N's ids reach
the host, so the device runs N+1 while the host updates, detokenizes and emits
N; off, each step is dispatched and reconciled in turn (the same tokens).
Requests and aborts may arrive from other threads (the AsyncEngine's event
loop): they go through an inbox that `step()` drains, so the step itself never
waits on a caller. With engine.data_parallel_size = D the engine holds D replicas
(surge.parallel), each with its own scheduler, page pool and runner on its own
devices; a new request is placed on one (surge.parallel.placement) and one step
schedules and dispatches every replica before it waits on any, so they compute
at the same time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from typing import Iterable, Iterator, Optional, Sequence, Union

from surge.config import SurgeConfig, make_config
from surge.engine.builder import EngineParts, build_engine_parts
from surge.engine.input_processor import InputProcessor, NewRequest, PromptLike
from surge.engine.loop_clock import LoopClock
from surge.engine.outputs import RequestOutput
from surge.engine.replica_stats import engine_stats, replica_stats
from surge.engine.stats import EngineStats
from surge.parallel.placement import ReplicaRouter
from surge.runner import compile_counter
from surge.sampling.params import SamplingParams
from surge.scheduler.request import RequestStatus
from surge.structured.compiler import GrammarCompiler
from surge.structured.waiting import WaitingForGrammar

logger = logging.getLogger("surge")


class Engine:
    def __init__(self, config: Optional[SurgeConfig] = None, *, progress: bool = True, tokenizer=None,
                 **overrides) -> None:
        """`tokenizer`: a tokenizer object (encode/decode) to use instead of the model's own or model.tokenizer."""
        self.config = config if config is not None else make_config(**overrides)
        parts: EngineParts = build_engine_parts(self.config, progress=progress, tokenizer=tokenizer)
        self.arch = parts.arch
        self.max_model_len = parts.max_model_len
        self.replicas = parts.replicas
        # Which replica each request joins (least loaded, prefix-cache affinity); one replica: always 0.
        self.router = ReplicaRouter(self.replicas, affinity_slack=self.config.engine.data_parallel_affinity_slack)
        # Replica 0's parts: the engine's only ones unless engine.data_parallel_size > 1.
        self.block_manager = parts.block_manager
        self.scheduler = parts.scheduler
        self.runner = parts.runner
        self.output_processor = parts.output_processor
        self.kv_plan = parts.kv_plan
        self.backend_name = parts.backend_name
        self.dtype = parts.dtype  # model.dtype resolved: "float32", "bfloat16" or "quantized"
        self.model_name = self.config.model.served_name or self.config.model.name
        self._num_compiles_after_warmup = compile_counter.num_compiles()
        self._inbox_lock = threading.Lock()
        self._inbox: deque = deque()
        self._live: dict[str, list[str]] = {}  # request id -> its child sequence ids
        self._pending_outputs: list[RequestOutput] = []
        self._num_steps = 0
        self.async_scheduling = self.config.engine.async_scheduling
        # The steps dispatched and not reconciled yet (async scheduling): [(Replica, SchedulerOutput, PendingStep)].
        self._in_flight: Optional[list] = None
        # Host time per step and the device's idle gap between steps. One replica: its clock is the engine's.
        # More: the engine's clock times the loop (host, waits) and each replica's its own device's gaps.
        self._loop_clock = self.replicas[0].loop_clock if len(self.replicas) == 1 else LoopClock()
        self.grammar_compiler = GrammarCompiler(parts.tokenizer, self.arch.vocab_size, parts.eos_token_ids,
                                                num_workers=self.config.engine.structured_output_compile_workers)
        self._waiting_for_grammar = WaitingForGrammar(self.config.engine.structured_output_fast_forward)
        # The input side: validates, tokenizes once, names, seeds and fans out requests (any thread).
        self.input_processor = InputProcessor(parts.tokenizer, self.arch.vocab_size, self.max_model_len,
                                              parts.eos_token_ids, seed=self.config.engine.seed,
                                              grammar_compiler=self.grammar_compiler)

    @property
    def tokenizer(self):
        """The one tokenizer: the input side encodes prompts with it, the output side decodes with it."""
        return self.input_processor.tokenizer

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self.input_processor.eos_token_ids

    @classmethod
    def from_pretrained(cls, model: str = "smollm2-135m-instruct", *, progress: bool = True, **overrides) -> "Engine":
        """Build an engine from a catalogue name, an HF directory or a .gguf file, with short-name overrides."""
        return cls(make_config(model, **overrides), progress=progress)

    # ---- requests in ---------------------------------------------------------------------
    def add_request(self, prompt: Optional[PromptLike] = None, sampling_params: Optional[SamplingParams] = None, *,
                    request_id: Optional[str] = None, prompt_token_ids: Optional[Sequence[int]] = None,
                    priority: int = 0, cache_salt: Optional[str] = None,
                    arrival_time: Optional[float] = None) -> str:
        """Queue a request; returns its id. Bad input raises ValueError and leaves the engine untouched."""
        new = self.input_processor.process(prompt, sampling_params, request_id=request_id,
                                           prompt_token_ids=prompt_token_ids, priority=priority,
                                           cache_salt=cache_salt, arrival_time=arrival_time)
        with self._inbox_lock:
            if new.request_id in self._live:
                raise ValueError(f"request id {new.request_id!r} is already in use")
            self._live[new.request_id] = new.child_ids
            self._inbox.append(("add", new))
        return new.request_id

    def new_request_id(self) -> str:
        """A fresh id of the form add_request gives when none is passed."""
        return self.input_processor.new_request_id()

    def compile_grammar(self, spec):
        """The future CompiledGrammar of a StructuredOutputsParams (raises GrammarError when it fails)."""
        return self.grammar_compiler.submit(spec)

    def abort(self, request_id: str) -> None:
        """Stop a request and free its pages; its stream ends with finish_reason 'abort'."""
        with self._inbox_lock:
            if request_id not in self._live:
                raise ValueError(f"unknown request id {request_id!r} (finished, aborted or never added)")
            self._inbox.append(("abort", request_id))

    def _drain_inbox(self) -> None:
        with self._inbox_lock:
            items = list(self._inbox)
            self._inbox.clear()
        for kind, item in items:
            if kind == "add":
                self._register_outputs(item)
                if item.grammar is None:
                    self._add_to_replica(item.request_id, item.children)
                else:  # it waits in the queue, not the batch, until its grammar is compiled
                    self._waiting_for_grammar.add(item.request_id, item.children, item.grammar)
                continue
            request_id = item
            with self._inbox_lock:
                children = self._live.pop(request_id, [])
            self._waiting_for_grammar.discard(request_id)
            index = self.router.replica_of(request_id)
            if index is not None:  # placed (not still waiting for its grammar)
                for child_id in children:
                    self.replicas[index].scheduler.finish(child_id, RequestStatus.FINISHED_ABORTED)
                self.router.forget(request_id)
            final = self.output_processor.abort(request_id)
            if final is not None:
                self._pending_outputs.append(final)

    def _register_outputs(self, new: NewRequest) -> None:
        """The output side learns of a request on the engine thread, before it can produce anything."""
        for index, child in enumerate(new.children):
            self.output_processor.add_request(child.request_id, new.prompt, new.prompt_token_ids, new.params,
                                              new.arrival_time,
                                              parent_id=new.request_id if new.is_fanned_out else None, index=index)

    def _add_to_replica(self, request_id: str, children: list) -> None:
        """Place one user request (all its n sequences, so they share its prompt's pages) on a replica."""
        first = children[0]
        index = self.router.place(request_id, first.prompt_token_ids, first.cache_salt)
        self.replicas[index].scheduler.add_siblings(children)

    def _admit_compiled(self) -> None:
        ready = self._waiting_for_grammar.take_ready()
        for request_id, requests in zip(ready.admitted_ids, ready.admitted):
            self._add_to_replica(request_id, requests)
        for request_id, message in ready.failed:
            logger.warning("request %s: %s", request_id, message)
            with self._inbox_lock:
                self._live.pop(request_id, None)
            final = self.output_processor.abort(request_id)
            if final is not None:
                final.error = message
                self._pending_outputs.append(final)

    # ---- one step ------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        """Run one engine iteration; returns the outputs that changed (deltas and finished requests)."""
        clocks = self._step_clocks()
        for clock in clocks:
            clock.start_step()
        try:
            return self._step()
        finally:
            busy = self.has_unfinished_requests()
            for clock in clocks:
                clock.end_step(busy=busy)
            if self.async_scheduling:
                for replica in self.replicas:
                    if replica.scheduler.speculator is not None:
                        # What a request that waits for its token on the host exposes per step (the overlap
                        # it gives up): the engine loop's host time, which every replica's requests wait on.
                        replica.scheduler.speculator.observe_host(self._loop_clock.last_host_seconds)

    def _step_clocks(self) -> list[LoopClock]:
        """The engine's loop clock, and each replica's own when there are several."""
        if len(self.replicas) == 1:
            return [self._loop_clock]
        return [self._loop_clock] + [replica.loop_clock for replica in self.replicas]

    def _step(self) -> list[RequestOutput]:
        self._drain_inbox()
        self._admit_compiled()
        scheduled = [(replica, replica.scheduler.schedule()) for replica in self.replicas]
        if (all(out.is_empty for _, out in scheduled) and self._in_flight is None and len(self._waiting_for_grammar)
                and not self._pending_outputs):
            self._loop_clock.end_step(busy=False)  # waiting on a grammar compile is not loop time
            self._waiting_for_grammar.wait(timeout=0.01)  # nothing to run until a grammar is ready
            return []
        dispatched = []
        # Every replica's step is dispatched before any is waited on: replicas on separate devices run together.
        for replica, out in scheduled:
            for item in out.scheduled:
                if item.num_computed_tokens == item.request.num_cached_tokens:  # first chunk of this admission
                    self.output_processor.record_scheduled(item.request.request_id,
                                                           num_cached_tokens=item.request.num_cached_tokens)
            if not out.is_empty:
                replica.loop_clock.before_dispatch()
                pending = replica.runner.execute(out)
                replica.loop_clock.dispatched(pending)
                dispatched.append((replica, out, pending))
        if dispatched:
            self._num_steps += 1
        if self.async_scheduling:
            finished_steps, self._in_flight = self._in_flight, dispatched or None
        else:
            finished_steps = dispatched or None
        return self._reconcile(finished_steps)

    def _settle(self) -> None:
        """Reconcile the steps in flight now; their outputs are returned by the next `step()`."""
        if self._in_flight is not None:
            finished_steps, self._in_flight = self._in_flight, None
            self._pending_outputs = self._reconcile(finished_steps)

    def _reconcile(self, finished_steps) -> list[RequestOutput]:
        """Wait for each replica's dispatched step, advance its scheduler by its tokens and build the outputs."""
        outputs, self._pending_outputs = self._pending_outputs, []
        for replica, out, pending in finished_steps or ():
            result = self._wait(replica, pending)
            seconds = replica.loop_clock.last_step_seconds
            speculator = replica.scheduler.speculator
            if seconds is not None and speculator is not None:  # speculation priced by this replica's step timings
                speculator.observe_step(out.num_batched_tokens, out.num_draft_tokens > 0, seconds)
            for request_id, (position, entries) in result.prompt_logprobs.items():
                self.output_processor.record_prompt_logprobs(request_id, position, entries)
            updates = replica.scheduler.update(out, result.token_ids)
            outputs.extend(self._emit(replica, updates, result))
        return outputs

    def _wait(self, replica, pending):
        """A replica's step results, timed on its clock (its device's gaps) and on the engine's (the loop)."""
        if replica.loop_clock is self._loop_clock:
            return self._loop_clock.wait(pending)
        waited_before = replica.loop_clock.wait_seconds
        result = replica.loop_clock.wait(pending)
        self._loop_clock.count_wait(replica.loop_clock.wait_seconds - waited_before)
        return result

    def _emit(self, replica, updates, result) -> list[RequestOutput]:
        outputs = []
        for update in updates:
            request = update.request
            logprobs = None
            if result is not None and request.request_id in result.logprobs:
                # One entry per emitted token: a speculating request's rows are its positions in order.
                logprobs = result.logprobs[request.request_id][:len(update.new_token_ids)]
            output, stop_hit = self.output_processor.process(
                request.request_id, update.new_token_ids, request.finish_reason, request.stop_reason, logprobs)
            if stop_hit and not request.is_finished:
                replica.scheduler.finish(request.request_id, RequestStatus.FINISHED_STOPPED)
            if output is not None:
                outputs.append(output)
                if output.finished:
                    with self._inbox_lock:
                        self._live.pop(output.request_id, None)
                    self.router.forget(output.request_id)
        return outputs

    def has_unfinished_requests(self) -> bool:
        with self._inbox_lock:
            return (bool(self._inbox) or bool(self._live) or bool(self._pending_outputs)
                    or self._in_flight is not None)

    # ---- convenience APIs ----------------------------------------------------------------
    def generate(self, prompts: Union[PromptLike, Sequence[PromptLike], None] = None,
                 sampling_params: Union[SamplingParams, Sequence[SamplingParams], None] = None, *,
                 prompt_token_ids: Optional[Sequence[Sequence[int]]] = None, use_tqdm: bool = True,
                 priority: Union[int, Sequence[int]] = 0) -> list[RequestOutput]:
        """Run every prompt to completion; outputs come back in input order."""
        if prompt_token_ids is not None:
            inputs: list = [list(ids) for ids in prompt_token_ids]
        elif isinstance(prompts, str):
            inputs = [prompts]
        elif prompts is None:
            raise ValueError("give prompts or prompt_token_ids")
        else:
            inputs = list(prompts)
        params_list = (list(sampling_params) if isinstance(sampling_params, (list, tuple))
                       else [sampling_params or SamplingParams()] * len(inputs))
        if len(params_list) != len(inputs):
            raise ValueError(f"{len(params_list)} sampling params for {len(inputs)} prompts")
        priorities = list(priority) if isinstance(priority, (list, tuple)) else [priority] * len(inputs)
        # Only the final outputs are returned: the engine builds nothing for the steps in between.
        params_list = [dataclasses.replace(sp or SamplingParams(), output_kind="final_only") for sp in params_list]
        ids = [self.add_request(p if isinstance(p, str) else None, sp,
                                prompt_token_ids=None if isinstance(p, str) else p, priority=pr)
               for p, sp, pr in zip(inputs, params_list, priorities)]
        finished: dict[str, RequestOutput] = {}
        from tqdm.auto import tqdm

        with tqdm(total=len(ids), desc="generating", unit="req", disable=not use_tqdm or len(ids) < 2) as bar:
            while len(finished) < len(ids):
                for output in self.step():
                    if output.finished:
                        finished[output.request_id] = output
                        bar.update(1)
        failed = [finished[i] for i in ids if finished[i].error is not None]
        if failed:
            raise ValueError(f"request {failed[0].request_id}: {failed[0].error}")
        return [finished[i] for i in ids]

    def stream(self, prompt: Optional[PromptLike] = None, sampling_params: Optional[SamplingParams] = None,
               **kwargs) -> Iterator[RequestOutput]:
        """Yield this request's outputs as they come (each with delta_text); closing early aborts it."""
        request_id = self.add_request(prompt, sampling_params, **kwargs)
        done = False
        try:
            while not done:
                for output in self.step():
                    if output.request_id == request_id:
                        done = output.finished
                        yield output
        finally:
            if not done:
                try:
                    self.abort(request_id)
                except ValueError:  # it finished in the meantime
                    pass
                self._drain_inbox()
                self._settle()
                # Nobody reads this stream any more: drop its final "abort" output.
                self._pending_outputs = [o for o in self._pending_outputs if o.request_id != request_id]

    def apply_chat_template(self, messages: list[dict], tools: Optional[list] = None,
                            add_generation_prompt: bool = True, **kwargs) -> str:
        return self.tokenizer.apply_chat_template(messages, tools=tools, tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **kwargs)

    def start_monitoring(self, prometheus_port: int = 9090, enable_console: bool = False, **kwargs):
        """Serve Prometheus metrics on `prometheus_port` and, optionally, a live console table."""
        from surge.monitoring.monitor import start_monitoring

        return start_monitoring(self, prometheus_port=prometheus_port, enable_console=enable_console, **kwargs)

    def reset_prefix_cache(self) -> bool:
        """Drop every replica's cached prefixes; False when some replica refused (a request holds pages)."""
        return all([replica.block_manager.reset_prefix_cache() for replica in self.replicas])

    def stats(self) -> EngineStats:
        """A snapshot of the engine's gauges and counters (surge.engine.stats); `.to_dict()` for the flat form.
        With data-parallel replicas the per-replica figures are their sums (surge.engine.replica_stats)."""
        return engine_stats(self.replica_stats(), self._engine_wide_stats(),
                            step_device_wait_seconds=self._loop_clock.wait_seconds)

    def replica_stats(self) -> tuple[EngineStats, ...]:
        """Each data-parallel replica's own EngineStats, in replica order (one unless data parallel): its pages,
        queues, prefix cache, tokens and device waits; the engine-wide fields are the engine's."""
        engine_wide = {**self._engine_wide_stats(), "num_waiting_for_grammar": 0}  # not placed yet
        return tuple(replica_stats(replica, engine_wide) for replica in self.replicas)

    def _engine_wide_stats(self) -> dict:
        num_compiles = compile_counter.num_compiles()
        return dict(
            num_waiting_for_grammar=len(self._waiting_for_grammar),
            num_grammar_compiles=self.grammar_compiler.num_compiles,
            num_grammar_cache_hits=self.grammar_compiler.num_cache_hits,
            num_compiles=num_compiles,
            num_compiles_since_warmup=num_compiles - self._num_compiles_after_warmup,
            num_steps=self._num_steps,
            step_host_seconds=self._loop_clock.host_seconds,
            backend=self.backend_name,
            max_model_len=self.max_model_len,
        )
