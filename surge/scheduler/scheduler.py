"""The scheduler: which requests run this step, how many tokens each, on which pages.

In: requests (add / abort / finish) and, after each step, the sampled token ids.
Out: a SchedulerOutput per step, and per update the requests that advanced or
finished. Scheduling works on counters (vLLM v1): each request has
`num_tokens` known and `num_computed_tokens` in the cache; a step gives running
requests their missing tokens first (a decode is simply 1), then admits waiting
ones, all under one token budget, splitting long prompts into chunks (at most
`max_num_prefill_seqs` requests computing prompt tokens per step). When pages
run out, the policy's victim is preempted: its pages are freed and it waits to
recompute.

Counters advance when a step is scheduled (vLLM's `_update_after_schedule`):
`num_computed_tokens` covers the scheduled tokens and each sampling request
gains a token in flight (sampled on the device, id not yet on the host), so with async scheduling the next step can be
built before this one's ids arrive; `update` reconciles them. A request found
finished one step late (EOS, stop string, abort) has the extra step's token
dropped; one whose tokens in flight reach max_tokens (or the context), or
whose next step needs its ids on the host (grammar, penalties, draft
proposals), is not scheduled again until they arrive.

Speculative decoding (engine.speculative): a running request in decode may
carry draft tokens from the Speculator; it is scheduled for 1 + len(drafts)
tokens (with method=draft_model, `schedule` first asks the Speculator to run
the draft once for every running request that can propose; with a cost model the
Speculator prices each request's drafts against the step the running requests make
without them, `begin_step`; finishing,
aborting or preempting a request releases its draft state and pages).
`update` keeps the accepted drafts plus the target's next token,
finishes at the first stop among them (nothing after it is kept), and rolls
back the rejected positions: num_computed_tokens and the pages past them. With
a grammar, each kept token is consumed by it; tokens it forces end the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Optional

from surge.cache.block_manager import BlockManager
from surge.config import EngineConfig, SchedulerConfig
from surge.scheduler.output import ScheduledRequest, SchedulerOutput
from surge.scheduler.queues import make_queue
from surge.scheduler.request import Request, RequestStatus
from surge.spec_decode import Speculator, num_accepted
from surge.spec_decode.step_cost import StepCostModel

logger = logging.getLogger("surge")


@dataclass
class RequestUpdate:
    """What one step did to a request: tokens it gained and whether it finished."""

    request: Request
    new_token_ids: list[int]
    finished: bool


class Scheduler:
    def __init__(self, config: SchedulerConfig, engine: EngineConfig, block_manager: BlockManager,
                 max_model_len: int, sliding_window: Optional[int] = None,
                 speculator: Optional[Speculator] = None,
                 first_needed_key: Optional[Callable[[int], int]] = None) -> None:
        self.config = config
        # Set when every layer attends within this window: pages wholly behind it are given back.
        self.sliding_window = sliding_window
        # With it, position -> the earliest key any layer still reads (chunked layers read from their chunk's
        # start, which is past position - reach + 1): pages before that are given back.
        self.first_needed_key = first_needed_key
        self.max_num_seqs = engine.max_num_seqs
        self.max_num_batched_tokens = engine.max_num_batched_tokens
        self.max_model_len = max_model_len
        self.block_manager = block_manager
        self.waiting = make_queue(config.policy)
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0
        self.num_prompt_tokens = 0  # prompt tokens of admitted requests (each request counted once)
        self.num_generation_tokens = 0
        self.num_finished_requests = 0
        self.num_prefix_queried_tokens = 0
        self.num_prefix_hit_tokens = 0
        # Tokens sampled for a request that had already finished when they arrived (async scheduling).
        self.num_dropped_tokens = 0
        # method=draft_model brings its Speculator (with the draft's runner) from the engine builder.
        if speculator is None and engine.speculative.enabled:
            # Built alone (no engine timing its steps), its cost model stays unfed: acceptance decides.
            measured = engine.speculative.cost_model == "measured"
            speculator = Speculator(engine.speculative, cost_model=StepCostModel() if measured else None)
        self.speculator = speculator
        # n > 1 with prefix caching: siblings held until the first child's prompt pages are in the cache
        # (first child id -> its siblings), so the prompt is computed once, not n times.
        self._held_siblings: dict[str, list[Request]] = {}

    # ---- requests in and out -------------------------------------------------------------
    def add_request(self, request: Request) -> None:
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.add(request)

    def add_siblings(self, requests: list[Request]) -> None:
        """The children of one n > 1 request (same prompt). With prefix caching the first is queued and the
        others wait, off the queue, until its first token is sampled: its prompt pages are cached by then."""
        first, *siblings = requests
        for request in requests:
            if request.request_id in self.requests:
                raise ValueError(f"request id {request.request_id!r} is already in use")
        self.add_request(first)
        if siblings and self.block_manager.enable_prefix_caching:
            for sibling in siblings:
                self.requests[sibling.request_id] = sibling
            self._held_siblings[first.request_id] = siblings
        else:
            for sibling in siblings:
                self.add_request(sibling)

    def _release_siblings(self, first_id: str) -> None:
        for sibling in self._held_siblings.pop(first_id, ()):
            self.waiting.add(sibling)

    def finish(self, request_id: str, status: RequestStatus) -> Optional[Request]:
        """Finish a live request (abort, or a stop string found by the output side); frees its pages."""
        request = self.requests.pop(request_id, None)
        if request is None:
            return None
        self._release_siblings(request_id)  # a first child ending early: its siblings compute the prompt
        held = next((group for group in self._held_siblings.values() if request in group), None)
        if held is not None:
            held.remove(request)
        elif request.status == RequestStatus.RUNNING:
            self.running.remove(request)
            self.block_manager.free(request_id)
        else:
            self.waiting.remove(request)
        request.status = status
        self.num_finished_requests += 1
        if self.speculator is not None:
            self.speculator.release(request)
            self.speculator.finished(request, aborted=status == RequestStatus.FINISHED_ABORTED)
        return request

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting) + sum(len(group) for group in self._held_siblings.values())

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # ---- one step ------------------------------------------------------------------------
    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.max_num_batched_tokens
        scheduled_tokens: dict[str, int] = {}  # running requests scheduled so far this step -> their tokens
        prefill_ids: set[str] = set()
        max_prefills = self.config.max_num_prefill_seqs or self.max_num_seqs
        num_prefills = 0
        if self.speculator is not None:
            # Drafts are priced against the step the running requests make without them (a decode is 1 token).
            pending = [r.num_tokens_with_in_flight - r.num_computed_tokens for r in self.running]
            self.speculator.begin_step(min(sum(max(n, 1) for n in pending), budget), len(self.running))
            if self.speculator.draft is not None:
                self._prepare_drafts()

        for request in list(self.running):
            if budget <= 0:
                break
            if request.status != RequestStatus.RUNNING:  # preempted earlier in this loop
                continue
            if request.num_tokens_in_flight and (request.needs_host_tokens or self._ends_in_flight(request)
                                                 or self._wants_drafts(request)):
                continue
            num_new = self._num_new_tokens(request, budget)
            if num_new <= 0:
                continue
            is_prefill = request.num_tokens_with_in_flight - request.num_computed_tokens > 1
            if is_prefill and num_prefills >= max_prefills:
                continue
            drafts = self._drafts(request, num_new, budget - num_new)
            num_new += len(drafts)
            while self.block_manager.allocate(request.request_id, request.num_computed_tokens + num_new) is None:
                # The policy's victim among every running request, even one scheduled earlier in this step
                # (vLLM's rule): its tokens and prefill slot go back to this step's budget.
                victim = self.waiting.pick_victim(self.running)
                refund = scheduled_tokens.pop(victim.request_id, None)
                if refund is not None:
                    budget += refund
                    num_prefills -= victim.request_id in prefill_ids
                self._preempt(victim, out)
                if victim is request:
                    break
            if request.status != RequestStatus.RUNNING:
                continue
            self._add_scheduled(out, request, num_new, drafts)
            scheduled_tokens[request.request_id] = num_new
            if is_prefill:
                prefill_ids.add(request.request_id)
            budget -= num_new
            num_prefills += is_prefill

        # Admit waiting requests unless this step had to preempt (memory is tight).
        while (budget > 0 and not out.preempted_ids and len(self.running) < self.max_num_seqs
               and num_prefills < max_prefills):
            request = self.waiting.peek()
            if request is None or request.num_tokens_in_flight:  # preempted with a token still in flight
                break
            computed_pages: list[int] = []
            # Prompt log-probs come from the prefill's logits, so such a request computes its whole prompt.
            if request.num_computed_tokens == 0 and request.sampling_params.prompt_logprobs is None:
                computed_pages = self.block_manager.lookup_prefix(request.token_ids, request.cache_salt)
            num_computed = len(computed_pages) * self.block_manager.page_size
            num_new = min(request.num_tokens - num_computed, self._chunk_limit(budget))
            if num_new < request.num_tokens - num_computed and not self.config.enable_chunked_prefill:
                break
            if self.block_manager.allocate(request.request_id, num_computed + num_new, computed_pages) is None:
                break
            self.waiting.pop()
            if request.num_cached_tokens < 0:
                self.num_prompt_tokens += request.num_prompt_tokens
                request.num_cached_tokens = num_computed
                self.num_prefix_queried_tokens += request.num_tokens
                self.num_prefix_hit_tokens += num_computed
            request.num_computed_tokens = num_computed
            request.status = RequestStatus.RUNNING
            self.running.append(request)
            self._add_scheduled(out, request, num_new)
            budget -= num_new
            num_prefills += 1
        self._update_after_schedule(out)
        return out

    def _update_after_schedule(self, out: SchedulerOutput) -> None:
        for item in out.scheduled:
            item.request.num_computed_tokens += item.num_new_tokens
            item.request.num_tokens_in_flight += item.samples

    def update(self, out: SchedulerOutput, sampled_token_ids) -> list[RequestUpdate]:
        """Reconcile a finished step: the rows `out.sample_rows()[i]` of `sampled_token_ids` are request i's."""
        updates: list[RequestUpdate] = []
        for item, rows in zip(out.scheduled, out.sample_rows()):
            request = item.request
            if request.is_finished:  # finished or aborted while the step ran: its token is dropped
                self.num_dropped_tokens += item.samples
                continue
            if item.draft_token_ids:
                update = self._update_speculated(item, [int(sampled_token_ids[r]) for r in rows])
                if update is not None:
                    updates.append(update)
                continue
            if request.status == RequestStatus.RUNNING:  # (not when preempted while the step ran)
                end = item.num_computed_tokens + item.num_new_tokens
                self.block_manager.cache_full_pages(request.request_id, request.token_ids, end, request.cache_salt)
                if self.sliding_window is not None:
                    self._release_pages_behind_window(request, end)
            if not item.samples:
                continue
            request.num_tokens_in_flight -= 1
            new_token_ids = [int(sampled_token_ids[rows[-1]])]
            request.append_output_token(new_token_ids[0])
            stop = request.check_stop(self.max_model_len)
            if stop is None and request.grammar is not None:
                # Tokens the grammar forces join the request now and are computed in its next step.
                forced = request.grammar.accept(new_token_ids[0], request.num_tokens_left(self.max_model_len))
                for forced_id in forced:
                    request.append_output_token(forced_id)
                new_token_ids += forced
                stop = request.check_stop(self.max_model_len) if forced else None
            self.num_generation_tokens += len(new_token_ids)
            self._release_siblings(request.request_id)  # its prompt pages were cached above
            if stop is not None:
                self.finish(request.request_id, stop)
            updates.append(RequestUpdate(request, new_token_ids, stop is not None))
        return updates

    def _update_speculated(self, item, sampled: list[int]) -> Optional[RequestUpdate]:
        """Keep the accepted drafts and the target's token after them, up to the first stop; roll back the rest."""
        request, drafts = item.request, item.draft_token_ids
        accepted = num_accepted(drafts, sampled)
        request.num_tokens_in_flight -= 1
        new_token_ids: list[int] = []
        stop = None
        kept_drafts = accepted  # drafts kept whose KV this step computed
        for i, token_id in enumerate(sampled[:accepted + 1]):
            request.append_output_token(token_id)
            new_token_ids.append(token_id)
            stop = request.check_stop(self.max_model_len)
            if stop is not None:
                break
            if request.grammar is not None:
                # As without drafts: tokens the grammar forces join now; the run ends there (the positions
                # after it were verified without them).
                forced = request.grammar.accept(token_id, request.num_tokens_left(self.max_model_len))
                if forced:
                    for forced_id in forced:
                        request.append_output_token(forced_id)
                    new_token_ids += forced
                    stop = request.check_stop(self.max_model_len)
                    kept_drafts = min(i + 1, accepted)
                    break
        self.speculator.record(request, len(drafts), accepted)
        self.num_generation_tokens += len(new_token_ids)
        if request.status == RequestStatus.RUNNING:  # (not when preempted while the step ran)
            request.num_computed_tokens -= len(drafts) - kept_drafts
            end = min(request.num_computed_tokens, request.num_tokens)
            self.block_manager.cache_full_pages(request.request_id, request.token_ids, end, request.cache_salt)
            self.block_manager.release_trailing_pages(request.request_id, request.num_computed_tokens)
            if self.sliding_window is not None:
                self._release_pages_behind_window(request, end)
        if stop is not None:
            self.finish(request.request_id, stop)
        return RequestUpdate(request, new_token_ids, stop is not None)

    # ---- helpers -------------------------------------------------------------------------
    def _wants_drafts(self, request: Request) -> bool:
        return self.speculator is not None and self.speculator.wants_host_tokens(request)

    def _drafts(self, request: Request, num_new: int, budget_left: int) -> list[int]:
        """Draft tokens for a request past its prompt whose step reaches its last token, every token on the
        host (a decode, or tokens a grammar forced plus the last); [] otherwise."""
        if (self.speculator is None or request.num_tokens_in_flight
                or request.num_computed_tokens + num_new != request.num_tokens
                or request.num_computed_tokens < request.num_prompt_tokens):
            return []
        # Every emitted token (accepted drafts + one) must fit max_tokens and the context.
        limit = min(budget_left, request.num_tokens_left(self.max_model_len) - 1)
        return self.speculator.propose(request, limit)

    def _prepare_drafts(self) -> None:
        """Draft model: one batched proposal for every running request that can carry drafts this step."""
        candidates = [r for r in self.running if r.status == RequestStatus.RUNNING and not r.num_tokens_in_flight
                      and r.num_tokens - r.num_computed_tokens == 1]
        self.speculator.prepare(candidates, [r.num_tokens_left(self.max_model_len) - 1 for r in candidates])

    def _release_pages_behind_window(self, request: Request, num_computed: int) -> None:
        # The next token (position num_computed) and every later one attend keys at positions
        # > position - window, so pages that end before that are never read again.
        if self.first_needed_key is not None:
            first_needed = self.first_needed_key(num_computed)
        else:
            first_needed = num_computed - self.sliding_window + 1
        if first_needed >= self.block_manager.page_size:
            self.block_manager.release_leading_pages(request.request_id, first_needed // self.block_manager.page_size)

    def _chunk_limit(self, budget: int) -> int:
        threshold = self.config.long_prefill_token_threshold
        return min(budget, threshold) if threshold > 0 else budget

    def _num_new_tokens(self, request: Request, budget: int) -> int:
        return min(request.num_tokens_with_in_flight - request.num_computed_tokens, self._chunk_limit(budget))

    def _ends_in_flight(self, request: Request) -> bool:
        return request.will_finish_by_length or request.num_tokens_with_in_flight >= self.max_model_len

    def _add_scheduled(self, out: SchedulerOutput, request: Request, num_new: int, drafts: list[int] = ()) -> None:
        samples = request.num_computed_tokens + num_new - len(drafts) == request.num_tokens_with_in_flight
        out.scheduled.append(ScheduledRequest(request, request.num_computed_tokens, num_new,
                                              self.block_manager.pages(request.request_id), samples,
                                              list(drafts)))
        out.num_batched_tokens += num_new

    def _preempt(self, request: Request, out: SchedulerOutput) -> None:
        self.running.remove(request)
        self.block_manager.free(request.request_id)
        if self.speculator is not None:
            self.speculator.release(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.add_preempted(request)
        out.preempted_ids.append(request.request_id)
        # A request scheduled earlier in this step and then preempted must not run.
        out.scheduled = [s for s in out.scheduled if s.request is not request]
        out.num_batched_tokens = sum(s.num_new_tokens for s in out.scheduled)
        logger.debug("preempted %s (%d preemptions so far)", request.request_id, self.num_preemptions)
