"""What a request hands back to its caller: vLLM-shaped output objects.

In: filled by ``OutputProcessor`` after each engine step. Out: ``RequestOutput``
(one per user request, aggregating its ``n`` completions), each holding
``CompletionOutput`` objects with cumulative ``text`` and ``token_ids`` plus
the ``delta_text`` / ``delta_token_ids`` that appeared since that completion
was last reported, ``RequestMetrics`` timings, and per-token ``Logprob`` dicts.
``SampledLogprobs`` is the engine-side input: what the sampler returned for
one generated token.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

FINISH_REASONS = ("stop", "length", "abort")


@dataclass
class Logprob:
    """Log-probability of one token, its rank in the model's distribution (1 = most likely), and its text."""

    logprob: float
    rank: Optional[int] = None
    decoded_token: Optional[str] = None


class SampledLogprobs(NamedTuple):
    """Sampler output for one generated token (one row of ``SamplerOutput``)."""

    logprob: float
    rank: int
    top_ids: Sequence[int]
    top_logprobs: Sequence[float]


@dataclass
class CompletionOutput:
    """One completion of a request (index 0..n-1)."""

    index: int
    text: str
    token_ids: List[int]
    # None while running; "stop" (EOS, stop token or stop string), "length" (max_tokens or context) or "abort".
    finish_reason: Optional[str] = None
    # The stop string or stop token id that ended it; None for EOS, length and abort.
    stop_reason: Union[str, int, None] = None
    # One dict per token of token_ids (sampled token plus the top alternatives), when logprobs were asked for.
    logprobs: Optional[List[Dict[int, Logprob]]] = None
    # Sum of the sampled tokens' log-probabilities, when logprobs were asked for.
    cumulative_logprob: Optional[float] = None
    # New since this completion was last reported; the last len(delta_token_ids) logprobs entries belong to it.
    delta_text: str = ""
    delta_token_ids: List[int] = field(default_factory=list)

    def finished(self) -> bool:
        return self.finish_reason is not None


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
    # not computed yet); each a dict token id -> Logprob (the prompt token plus the top alternatives).
    prompt_logprobs: Optional[List[Optional[Dict[int, Logprob]]]] = None

    @property
    def num_cached_tokens(self) -> int:
        return self.metrics.num_cached_tokens


__all__ = ["CompletionOutput", "FINISH_REASONS", "Logprob", "RequestMetrics", "RequestOutput", "SampledLogprobs"]
