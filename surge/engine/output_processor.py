"""From sampled token ids to ``RequestOutput`` objects for the caller.

In: after each engine step, per request (or per child of an n>1 request) the
new token ids, the finish reason the scheduler decided (EOS, stop token id,
max_tokens), and the sampler's ``TokenLogprobs`` when asked for. Out: a
``RequestOutput`` of the user request shaped by SamplingParams.output_kind
(cumulative text and tokens plus the new ``delta_text``; only the delta; or
one output at the end), plus whether a stop string was hit (the engine must then
finish the request with finish_reason "stop"; tokens after the one that
completed the stop string are dropped).

Each completion runs its tokens through an ``IncrementalDetokenizer`` and a
``StopStringMatcher``, so a stop string (or a part of one) never reaches a
delta. The token that ended a completion by EOS or a stop token id is kept in
``token_ids`` but left out of the text unless ``include_stop_str_in_output``.
Children of an n>1 request share the parent id; the parent's output lists one
completion per child and finishes when all of them have.

Cost per report is O(new tokens), however long the completion: the detokenizer
slides a short window, the stop matcher looks at held-back plus new text only,
and cumulative fields are O(1) snapshots of append-only records
(surge.engine.growing), joined only when a caller reads them. Log-probs stay
the runner's ``TokenLogprobs``; this side only fills in each token's text.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

from surge.engine.detokenizer import IncrementalDetokenizer
from surge.engine.growing import ListPrefix, TextLog
from surge.engine.outputs import CompletionOutput, RequestMetrics, RequestOutput
from surge.engine.stop_strings import StopStringMatcher
from surge.sampling.logprobs import TokenLogprobs
from surge.sampling.params import SamplingParams
from surge.scheduler.request import FinishReason


@dataclass
class _Completion:
    """One child: its detokenizer, stop matcher, append-only records and how much was reported."""

    request_id: str
    index: int
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    matcher: StopStringMatcher
    token_ids: List[int] = field(default_factory=list)
    logprobs: Optional[List[TokenLogprobs]] = None
    cumulative_logprob: Optional[float] = None
    text: TextLog = field(default_factory=TextLog)
    finish_reason: Optional[FinishReason] = None
    stop_reason: Union[str, int, None] = None
    # Tokens and text pieces already handed to the caller (the rest is the next delta).
    num_reported_tokens: int = 0
    num_reported_pieces: int = 0

    @property
    def has_unreported_text(self) -> bool:
        return self.text.num_pieces > self.num_reported_pieces


@dataclass
class _Parent:
    """One user request: n completions sharing a prompt and metrics."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: List[int]
    num_children: int
    metrics: RequestMetrics
    children: Dict[int, _Completion] = field(default_factory=dict)
    # Per prompt position (the first always None), when prompt log-probs were asked for.
    prompt_logprobs: Optional[List[Optional[TokenLogprobs]]] = None
    # The copy handed out with outputs, remade only after prompt_logprobs changed.
    prompt_logprobs_snapshot: Optional[List[Optional[TokenLogprobs]]] = None

    def finished(self) -> bool:
        return len(self.children) == self.num_children and all(
            c.finish_reason is not None for c in self.children.values())


class OutputProcessor:
    def __init__(self, tokenizer, clock: Callable[[], float] = time.time) -> None:
        self.tokenizer = tokenizer
        self.clock = clock
        self._parents: Dict[str, _Parent] = {}
        self._completions: Dict[str, Tuple[_Parent, _Completion]] = {}
        self._token_text: Dict[int, str] = {}

    # ---- registration ---------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt: Optional[str], prompt_token_ids: Sequence[int],
                    params: SamplingParams, arrival_time: Optional[float] = None, parent_id: Optional[str] = None,
                    index: int = 0) -> None:
        """Register a request, or child ``index`` of ``parent_id`` (children of one parent share its params.n)."""
        if request_id in self._completions:
            raise ValueError(f"request_id={request_id!r} is already registered")
        parent_key = request_id if parent_id is None else parent_id
        parent = self._parents.get(parent_key)
        if parent is None:
            num_children = params.n if parent_id is not None else 1
            arrival = self.clock() if arrival_time is None else arrival_time
            parent = _Parent(parent_key, prompt, list(prompt_token_ids), num_children,
                             RequestMetrics(arrival_time=arrival, num_prompt_tokens=len(prompt_token_ids)))
            if params.prompt_logprobs is not None:
                parent.prompt_logprobs = [None] * len(prompt_token_ids)
            self._parents[parent_key] = parent
        if not 0 <= index < parent.num_children:
            raise ValueError(f"index={index} is outside 0..{parent.num_children - 1} for request {parent_key!r}")
        if index in parent.children:
            raise ValueError(f"index={index} of request {parent_key!r} is already registered")
        wants_logprobs = params.logprobs is not None
        completion = _Completion(
            request_id=request_id, index=index, params=params,
            detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.skip_special_tokens),
            matcher=StopStringMatcher(params.stop, params.include_stop_str_in_output),
            logprobs=[] if wants_logprobs else None, cumulative_logprob=0.0 if wants_logprobs else None)
        parent.children[index] = completion
        self._completions[request_id] = (parent, completion)

    def record_scheduled(self, request_id: str, now: Optional[float] = None, num_cached_tokens: int = 0) -> None:
        """Note the first time the request was scheduled and how many prompt tokens the prefix cache served."""
        entry = self._completions.get(request_id)
        if entry is None:
            return
        metrics = entry[0].metrics
        if metrics.first_scheduled_time is None:
            metrics.first_scheduled_time = self.clock() if now is None else now
            metrics.num_cached_tokens = num_cached_tokens

    # ---- per step -------------------------------------------------------------------------------

    def record_prompt_logprobs(self, request_id: str, position: int, entries: Sequence[TokenLogprobs]) -> None:
        """Store the log-probs of prompt tokens ``position``, ``position + 1``, ... of ``request_id``."""
        entry = self._completions.get(request_id)
        if entry is None or entry[0].prompt_logprobs is None:
            return
        parent, child = entry
        num_top = child.params.prompt_logprobs
        for offset, scored in enumerate(entries):
            index = position + offset
            parent.prompt_logprobs[index] = self._with_texts(scored, parent.prompt_token_ids[index], num_top)
        parent.prompt_logprobs_snapshot = None

    def process(self, request_id: str, new_token_ids: Sequence[int], finish_reason: Optional[FinishReason],
                stop_reason: Union[str, int, None] = None,
                logprobs: Optional[Sequence[TokenLogprobs]] = None) -> Tuple[Optional[RequestOutput], bool]:
        """Consume one step's tokens of ``request_id``; return (output to report or None, stop string hit)."""
        entry = self._completions.get(request_id)
        if entry is None:
            return None, False
        parent, child = entry
        if child.finish_reason is not None:
            return None, False
        if finish_reason is not None:
            try:
                finish_reason = FinishReason(finish_reason)
            except ValueError:
                raise ValueError(f"finish_reason={finish_reason!r} is not one of None, "
                                 + ", ".join(repr(r.value) for r in FinishReason)) from None
        if logprobs is not None and len(logprobs) != len(new_token_ids):
            raise ValueError(f"logprobs has {len(logprobs)} entries for {len(new_token_ids)} new tokens")
        now = self.clock()
        metrics = parent.metrics
        if new_token_ids:
            if metrics.first_token_time is None:
                metrics.first_token_time = now
            metrics.last_token_time = now

        # A stop token (EOS or stop_token_ids) ends the completion without adding its text.
        ends_on_stop_token = finish_reason == FinishReason.STOP and not isinstance(stop_reason, str) and bool(new_token_ids)
        hide_last = ends_on_stop_token and not child.params.include_stop_str_in_output
        stop_string_hit = False
        for position, token in enumerate(new_token_ids):
            self._append_token(child, token, None if logprobs is None else logprobs[position])
            if hide_last and position == len(new_token_ids) - 1:
                break
            emitted, matched = child.matcher.push(child.detokenizer.push([token]))
            child.text.append(emitted)
            if matched is not None:
                stop_string_hit = True
                finish_reason, stop_reason = FinishReason.STOP, matched
                break
        if finish_reason is not None and not stop_string_hit:
            self._release_held_text(child)
            if child.matcher.matched is not None:
                # Held-back text completed a stop string; the engine is finishing the request anyway.
                finish_reason, stop_reason = FinishReason.STOP, child.matcher.matched
        if finish_reason is not None:
            self._finish(parent, child, finish_reason, stop_reason, now)
        return self._report(parent, [child]), stop_string_hit

    def abort(self, request_id: str) -> Optional[RequestOutput]:
        """Finish a request (a user request id finishes all its children) with finish_reason "abort"."""
        parent = self._parents.get(request_id)
        if parent is not None:
            children = list(parent.children.values())
            # Children never registered (an n>1 request aborted before all were added) are not waited for.
            parent.num_children = len(parent.children)
        elif request_id in self._completions:
            parent, child = self._completions[request_id]
            children = [child]
        else:
            return None
        now = self.clock()
        aborted = [child for child in children if child.finish_reason is None]
        for child in aborted:
            self._release_held_text(child)
            self._finish(parent, child, FinishReason.ABORT, None, now)
        if not aborted:
            return None
        return self._report(parent, aborted)

    # ---- queries --------------------------------------------------------------------------------

    def has_unfinished(self) -> bool:
        return bool(self._parents)

    def num_unfinished(self) -> int:
        return len(self._parents)

    def child_ids(self, request_id: str) -> List[str]:
        """Engine ids of the completions of a user request (itself when n == 1)."""
        parent = self._parents.get(request_id)
        if parent is None:
            return [request_id] if request_id in self._completions else []
        return [child.request_id for _, child in sorted(parent.children.items())]

    # ---- internals ------------------------------------------------------------------------------

    def _append_token(self, child: _Completion, token: int, sampled: Optional[TokenLogprobs]) -> None:
        child.token_ids.append(int(token))
        if sampled is not None and child.logprobs is not None:
            child.logprobs.append(self._with_texts(sampled, int(token), child.params.logprobs))
            child.cumulative_logprob += sampled.logprob

    def _with_texts(self, entry: TokenLogprobs, token: int, num_top: int) -> TokenLogprobs:
        """``entry`` with the request's top ``num_top`` alternatives and every token's text."""
        if entry.token_id != token:
            raise ValueError(f"logprobs entry for token {entry.token_id} given for token {token}")
        if len(entry.top) > num_top:
            entry = TokenLogprobs(entry.token_id, entry.logprob, entry.rank, entry.top[:num_top])
        return entry.with_texts(self._decode_token)

    def _decode_token(self, token: int) -> str:
        text = self._token_text.get(token)
        if text is None:
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            self._token_text[token] = text
        return text

    def _release_held_text(self, child: _Completion) -> None:
        emitted, _ = child.matcher.push(child.detokenizer.flush())
        child.text.append(emitted + (child.matcher.flush() if child.matcher.matched is None else ""))

    def _finish(self, parent: _Parent, child: _Completion, finish_reason: FinishReason, stop_reason, now: float) -> None:
        child.finish_reason = finish_reason
        child.stop_reason = stop_reason
        if parent.finished():
            parent.metrics.finished_time = now

    def _report(self, parent: _Parent, changed: List[_Completion]) -> Optional[RequestOutput]:
        if not any(c.has_unreported_text or c.finish_reason is not None for c in changed):
            return None  # tokens without text yet (held back) are reported with the next text
        finished = parent.finished()
        kind = changed[0].params.output_kind
        if kind == "final_only":
            if not finished:
                return None
            changed = list(parent.children.values())
        parent.metrics.num_generation_tokens = sum(len(c.token_ids) for c in parent.children.values())
        deltas = {id(c): self._take_delta(c) for c in changed}
        outputs = [self._completion_output(c, kind, deltas.get(id(c))) for _, c in sorted(parent.children.items())]
        if finished:
            self._forget(parent)
        if parent.prompt_logprobs is not None and parent.prompt_logprobs_snapshot is None:
            parent.prompt_logprobs_snapshot = list(parent.prompt_logprobs)
        return RequestOutput(request_id=parent.request_id, prompt=parent.prompt,
                             prompt_token_ids=parent.prompt_token_ids, outputs=outputs, finished=finished,
                             metrics=RequestMetrics(**vars(parent.metrics)),
                             delta_text="".join(text for text, _ in deltas.values()),
                             prompt_logprobs=parent.prompt_logprobs_snapshot)

    @staticmethod
    def _take_delta(child: _Completion) -> Tuple[str, List[int]]:
        """The text and token ids not reported yet; they count as reported from now on."""
        pieces = child.text.num_pieces
        delta_text = child.text.slice(child.num_reported_pieces, pieces)
        delta_ids = child.token_ids[child.num_reported_tokens:]
        child.num_reported_pieces, child.num_reported_tokens = pieces, len(child.token_ids)
        return delta_text, delta_ids

    @staticmethod
    def _completion_output(child: _Completion, kind: str, delta: Optional[Tuple[str, List[int]]]) -> CompletionOutput:
        delta_text, delta_ids = delta if delta is not None else ("", [])
        if kind == "delta":
            logprobs = None if child.logprobs is None else child.logprobs[len(child.token_ids) - len(delta_ids):]
            return CompletionOutput(index=child.index, text=delta_text, token_ids=delta_ids,
                                    finish_reason=child.finish_reason, stop_reason=child.stop_reason,
                                    logprobs=logprobs, cumulative_logprob=child.cumulative_logprob,
                                    delta_text=delta_text, delta_token_ids=delta_ids)
        return CompletionOutput(
            index=child.index, text=child.text.prefix(), token_ids=ListPrefix(child.token_ids, len(child.token_ids)),
            finish_reason=child.finish_reason, stop_reason=child.stop_reason,
            logprobs=None if child.logprobs is None else ListPrefix(child.logprobs, len(child.logprobs)),
            cumulative_logprob=child.cumulative_logprob, delta_text=delta_text, delta_token_ids=delta_ids)

    def _forget(self, parent: _Parent) -> None:
        self._parents.pop(parent.request_id, None)
        for child in parent.children.values():
            self._completions.pop(child.request_id, None)


__all__ = ["OutputProcessor"]
