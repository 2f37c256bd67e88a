"""What a request hands back to its caller: vLLM-shaped output objects.

In: filled by ``OutputProcessor`` after each engine step. Out: ``RequestOutput``
(one per user request, aggregating its ``n`` completions), each holding
``CompletionOutput`` objects with cumulative ``text`` and ``token_ids`` plus
the ``delta_text`` / ``delta_token_ids`` that appeared since that completion
was last reported, ``RequestMetrics`` timings, and per-token log-probs as
``TokenLogprobs`` (surge.sampling.logprobs; each also reads as vLLM's dict
token id -> ``Logprob``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Union

from surge.sampling.logprobs import Logprob, TokenLogprobs
from surge.scheduler.request import FinishReason

FINISH_REASONS = tuple(FinishReason)


class CompletionOutput:
    """One completion of a request (index 0..n-1).

    With SamplingParams.output_kind "cumulative" (and "final_only") ``text``, ``token_ids`` and
    ``logprobs`` hold everything so far; the engine hands them as O(1) snapshots (surge.engine.growing)
    and the text is joined when first read. With "delta" they hold only what is new since the last
    report, like ``delta_text`` / ``delta_token_ids``.
    """

    def __init__(self, index: int, text="", token_ids: Sequence[int] = (), finish_reason: Optional[str] = None,
                 stop_reason: Union[str, int, None] = None, logprobs: Optional[Sequence[TokenLogprobs]] = None,
                 cumulative_logprob: Optional[float] = None, delta_text: str = "",
                 delta_token_ids: Sequence[int] = ()) -> None:
        self.index = index
        self._text = text
        self.token_ids = token_ids
        # None while running, else a FinishReason: "stop" (EOS, stop token or stop string), "length" (max_tokens
        # or context) or "abort".
        self.finish_reason = finish_reason
        # The stop string or stop token id that ended it; None for EOS, length and abort.
        self.stop_reason = stop_reason
        # One TokenLogprobs per token of token_ids (sampled token plus the top alternatives, texts decoded), when
        # logprobs were asked for.
        self.logprobs = logprobs
        # Sum of the sampled tokens' log-probabilities, when logprobs were asked for.
        self.cumulative_logprob = cumulative_logprob
        # New since this completion was last reported; the last len(delta_token_ids) logprobs entries belong to it.
        self.delta_text = delta_text
        self.delta_token_ids = delta_token_ids

    @property
    def text(self) -> str:
        if not isinstance(self._text, str):
            self._text = str(self._text)
        return self._text

    @text.setter
    def text(self, value) -> None:
        self._text = value

    def finished(self) -> bool:
        return self.finish_reason is not None

    def _fields(self) -> tuple:
        return (self.index, self.text, list(self.token_ids), self.finish_reason, self.stop_reason,
                None if self.logprobs is None else list(self.logprobs), self.cumulative_logprob, self.delta_text,
                list(self.delta_token_ids))

    def __eq__(self, other) -> bool:
        if not isinstance(other, CompletionOutput):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None

    def __repr__(self) -> str:
        return (f"CompletionOutput(index={self.index}, text={self.text!r}, token_ids={list(self.token_ids)}, "
                f"finish_reason={self.finish_reason!r}, stop_reason={self.stop_reason!r})")


@dataclass
class RequestMetrics:
    """Wall-clock times (the engine's clock, seconds) and token counts of one request."""

    arrival_time: float
    first_scheduled_time: Optional[float] = None
    first_token_time: Optional[float] = None
    last_token_time: Optional[float] = None
    finished_time: Optional[float] = None
    num_prompt_tokens: int = 0
    num_generation_tokens: int = 0
    num_cached_tokens: int = 0

    @property
    def time_to_first_token(self) -> Optional[float]:
        if self.first_token_time is None:
            return None
        return self.first_token_time - self.arrival_time

    @property
    def e2e_latency(self) -> Optional[float]:
        if self.finished_time is None:
            return None
        return self.finished_time - self.arrival_time


@dataclass
class RequestOutput:
    """The state of one user request after a step: every completion, cumulative, plus the latest delta."""

    request_id: str
    prompt: Optional[str]
    prompt_token_ids: List[int]
    outputs: List[CompletionOutput]
    finished: bool
    metrics: RequestMetrics
    # The new text of the completion whose update produced this output ("" when none).
    delta_text: str = ""
    # Why the request ended before it ran (finish_reason "abort"), e.g. a grammar that does not compile.
    error: Optional[str] = None
    # With SamplingParams.prompt_logprobs: one entry per prompt token, None for the first (and for positions
    # not computed yet); each a TokenLogprobs (the prompt token plus the top alternatives, texts decoded).
    prompt_logprobs: Optional[List[Optional[TokenLogprobs]]] = None

    @property
    def num_cached_tokens(self) -> int:
        return self.metrics.num_cached_tokens


__all__ = ["CompletionOutput", "FINISH_REASONS", "FinishReason", "Logprob", "RequestMetrics", "RequestOutput",
           "TokenLogprobs"]
