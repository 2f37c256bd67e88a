"""The speculator the scheduler consults: which requests propose, their drafts, and what was accepted.

In: the engine's SpeculativeConfig (and for method=draft_model the DraftModelProposer); per running
request in decode, its token ids and the most drafts that fit (budget, max_tokens, context). Out: draft
token ids (at most k), whether a request needs its tokens on the host before its next step (it will
propose), and the metrics. The draft model proposes for all of a step's requests in one device call:
the scheduler calls `prepare` with them before it walks the running requests, then `propose` hands
out each request's share (cut to what fits); `release` frees a request's draft state and pages. A request speculates when
its SamplingParams allow it (`speculate`) and it uses no penalties (their histories are per sampled
position, which verification rows do not carry). With a grammar, drafts (of every method) are cut at the
first token it refuses (and after one that ends it or makes it force tokens); the runner masks each
verified position with the grammar's state after the drafts before it.

With a cost model (engine.speculative.cost_model=measured; the engine feeds it step timings), each step
starts with `begin_step` and a request's drafts must also pay their price in that step
(surge.spec_decode.cost_rule): a request whose next token is still on the device asks for it only when
drafts would pay even after the overlap it gives up, and the drafts found are cut to the most that pay.
"""

from __future__ import annotations

from typing import Optional

from surge.config import SpeculativeConfig
from surge.spec_decode.adaptive import AdaptiveK
from surge.spec_decode.cost_rule import CostRule
from surge.spec_decode.metrics import SpecDecodeMetrics
from surge.spec_decode.ngram import propose_ngram
from surge.spec_decode.stats import SpecDecodeStats
from surge.spec_decode.step_cost import StepCostModel
from surge.spec_decode.suffix import SuffixProposer


class Speculator:
    def __init__(self, config: SpeculativeConfig, draft=None, cost_model: Optional[StepCostModel] = None) -> None:
        """`cost_model`: step timings to price drafts by (None = acceptance alone decides); needs cost_model=measured."""
        if not config.enabled:
            raise ValueError("Speculator needs engine.speculative.method other than 'none'")
        if (config.method == "draft_model") != (draft is not None):
            raise ValueError(f"engine.speculative.method={config.method}: a draft-model proposer is needed exactly "
                             f"when the method is draft_model (got {type(draft).__name__})")
        if (cost_model is not None) != (config.cost_model == "measured"):
            raise ValueError(f"engine.speculative.cost_model={config.cost_model}: a StepCostModel is needed exactly "
                             f"when it is 'measured' (got {type(cost_model).__name__})")
        self.config = config
        self.cost_model = cost_model
        self.cost_rule = CostRule(cost_model) if cost_model is not None else None
        self.k = config.num_speculative_tokens
        self.draft = draft
        self._prepared: dict[str, list[int]] = {}
        self.metrics = SpecDecodeMetrics(config.method, self.k)
        self.suffix = (SuffixProposer(config.suffix_max_tokens, config.suffix_min_match, config.suffix_max_match)
                       if config.method == "suffix" else None)

    def applies_to(self, request) -> bool:
        params = request.sampling_params
        return params.speculate and not params.uses_penalties

    def _state(self, request) -> AdaptiveK:
        if request.spec_state is None:
            request.spec_state = AdaptiveK(self.config.adaptive_min_accepted, self.config.adaptive_backoff_steps)
        return request.spec_state

    def begin_step(self, num_base_tokens: int, num_seqs: int) -> None:
        """A step is being scheduled with about this many tokens and sequences before any drafts."""
        if self.cost_rule is not None:
            self.cost_rule.begin_step(num_base_tokens, num_seqs)

    def wants_host_tokens(self, request) -> bool:
        """Whether the request would propose at its next step (so its last token must be on the host)."""
        if not (self.applies_to(request) and self._state(request).proposes(request.num_output_tokens)):
            return False
        if self.cost_rule is None:
            return True
        state = self._state(request)
        pays = self.cost_rule.drafts_that_pay(self.k, lambda d: state.expected_accepted(d, looked_up=False),
                                              extra_seconds=self.cost_rule.sync_seconds())
        if not pays and self.cost_rule.token_value() is not None:  # (unmeasured: this step measures, no pause)
            state.priced_out(request.num_output_tokens)
        return pays > 0

    def _may_propose(self, request) -> bool:
        """As wants_host_tokens, with the token already on the host (no overlap left to lose, no price yet)."""
        return self.applies_to(request) and self._state(request).proposes(request.num_output_tokens)

    def _may_pay(self, request, num_drafts: int) -> bool:
        """Whether drafts found for the request could pay in this step (the draft model runs only for those)."""
        if self.cost_rule is None:
            return True
        state = self._state(request)
        return self.cost_rule.drafts_that_pay(num_drafts, lambda d: state.expected_accepted(d, looked_up=True)) > 0

    def _cut_to_price(self, request, drafts: list[int]) -> list[int]:
        if self.cost_rule is None or not drafts:
            return drafts
        state = self._state(request)
        num = self.cost_rule.drafts_that_pay(len(drafts), lambda d: state.expected_accepted(d, looked_up=True))
        if num == 0 and self.cost_rule.token_value() is not None:
            state.priced_out(request.num_output_tokens)
        self.cost_rule.commit(num)
        return drafts[:num]

    def prepare(self, requests, limits) -> None:
        """Draft model: run the draft once for every request that will ask `propose` this step."""
        self._prepared = {}
        if self.draft is not None:
            chosen = [(r, n) for r, n in zip(requests, limits) if n > 0 and self._may_propose(r)
                      and self._may_pay(r, min(self.k, n))]
            if chosen:
                self._prepared = self.draft.propose([r for r, _ in chosen], [n for _, n in chosen])

    def propose(self, request, max_drafts: int) -> list[int]:
        """Drafts for a request whose tokens are all on the host and whose step runs up to its last token."""
        if max_drafts <= 0 or not self._may_propose(request):
            return []
        k = min(self.k, max_drafts)
        if self.draft is not None:
            # A request the draft did not take this step (pool or budget full) proposes nothing, uncounted.
            drafts = self._prepared.pop(request.request_id, [])[:k]
            drafts = request.grammar.legal_drafts(drafts) if drafts and request.grammar is not None else drafts
            return self._cut_to_price(request, drafts)
        if self.suffix is not None:
            drafts = self.suffix.propose(request.token_ids, k)
        else:
            drafts = propose_ngram(request.token_ids, k, self.config.prompt_lookup_min, self.config.prompt_lookup_max)
        if drafts and request.grammar is not None:
            drafts = request.grammar.legal_drafts(drafts)
        # Nothing found is neither a success nor a failure; it lowers what the next attempt is expected to bring.
        self._state(request).record_lookup(bool(drafts))
        return self._cut_to_price(request, drafts)

    def record(self, request, num_drafts: int, num_accepted: int) -> None:
        self.metrics.record(num_drafts, num_accepted)
        self._state(request).record(request.num_output_tokens, num_drafts, num_accepted)

    def observe_step(self, num_tokens: int, with_drafts: bool, seconds: float) -> None:
        """A step of `num_tokens` scheduled tokens took `seconds` on the device (the engine's measurement)."""
        if self.cost_model is not None:
            self.cost_model.observe_step(num_tokens, with_drafts, seconds)

    def observe_host(self, seconds: float) -> None:
        """An iteration of the async loop spent `seconds` on the host (what a request waiting for its token exposes)."""
        if self.cost_model is not None:
            self.cost_model.observe_host(seconds)

    def finished(self, request, aborted: bool) -> None:
        """A request ended: suffix decoding indexes its output (not an aborted one's)."""
        if self.suffix is not None and not aborted:
            self.suffix.add_finished(request.prompt_token_ids, request.output_token_ids)

    def release(self, request) -> None:
        """The request finished, was aborted or preempted: drop its draft state (and draft pages)."""
        self._prepared.pop(request.request_id, None)
        if self.draft is not None:
            self.draft.release(request.request_id)

    def stats(self) -> SpecDecodeStats:
        return self.metrics.stats(suffix=self.suffix.stats() if self.suffix is not None else None,
                                  draft=self.draft.stats() if self.draft is not None else None)


__all__ = ["Speculator"]
