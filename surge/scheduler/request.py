"""A request as the scheduler sees it: token ids and counters, no text.

In: prompt token ids and SamplingParams from the engine. Out: the state the
scheduler advances each step (`num_computed_tokens`, appended output tokens,
status, finish reason). There is no prefill or decode phase: a request simply
has `num_tokens` known tokens of which `num_computed_tokens` are in the KV cache.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

from surge.sampling.params import SamplingParams


class FinishReason(enum.StrEnum):
    """Why a completion ended — the one spelling the scheduler, the output side and the server share.

    The values are OpenAI's / vLLM's strings (a member equals its string and prints as it).
    """

    STOP = "stop"  # EOS, a stop token id or a stop string
    LENGTH = "length"  # max_tokens or the context
    ABORT = "abort"  # aborted, disconnected, or refused before it ran


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = FinishReason.STOP.value
    FINISHED_LENGTH = FinishReason.LENGTH.value
    FINISHED_ABORTED = FinishReason.ABORT.value

    @property
    def is_finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclass(eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    seed: int = 0
    priority: int = 0
    cache_salt: Optional[str] = None
    arrival_time: float = field(default_factory=time.monotonic)
    # Prompt followed by generated tokens; only the first num_computed_tokens have KV in the cache.
    token_ids: list[int] = field(init=False)
    num_computed_tokens: int = 0
    # Tokens sampled by steps still running (async scheduling): their positions are scheduled and
    # counted in num_computed_tokens, their ids are not in token_ids yet.
    num_tokens_in_flight: int = 0
    # Prompt tokens found in the prefix cache when the request was first scheduled.
    num_cached_tokens: int = -1
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: Union[int, str, None] = None
    first_scheduled_time: Optional[float] = None
    # Where the request stands in its grammar (surge.structured.GrammarState) when its output is
    # constrained: accept(token, max_forced) consumes each sampled token and returns the tokens it forces.
    grammar: Optional[object] = None
    # Speculative decoding's per-request state (surge.spec_decode.adaptive.AdaptiveK), made on first use.
    spec_state: Optional[object] = None

    def __post_init__(self) -> None:
        self.token_ids = list(self.prompt_token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_tokens_with_in_flight(self) -> int:
        return len(self.token_ids) + self.num_tokens_in_flight

    @property
    def needs_host_tokens(self) -> bool:
        """Its next step needs every earlier token on the host (grammar masks, penalty history)."""
        return self.grammar is not None or self.sampling_params.uses_penalties

    @property
    def will_finish_by_length(self) -> bool:
        """The tokens in flight reach max_tokens: nothing after them may be scheduled."""
        return self.num_output_tokens + self.num_tokens_in_flight >= self.sampling_params.max_tokens

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> Sequence[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def is_finished(self) -> bool:
        return self.status.is_finished

    @property
    def finish_reason(self) -> Optional[FinishReason]:
        return FinishReason(self.status.value) if self.status.is_finished else None

    def append_output_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def num_tokens_left(self, max_model_len: int) -> int:
        """Tokens the request may still gain before max_tokens or the context ends it."""
        return min(self.sampling_params.max_tokens - self.num_output_tokens, max_model_len - self.num_tokens)

    def check_stop(self, max_model_len: int) -> Optional[RequestStatus]:
        """Token-level stops after the last appended token (stop strings are the output side's job)."""
        params = self.sampling_params
        last = self.token_ids[-1]
        num_output = self.num_output_tokens
        if num_output >= params.min_tokens:
            if not params.ignore_eos and last in self.eos_token_ids:
                self.stop_reason = None
                return RequestStatus.FINISHED_STOPPED
            if last in params.stop_token_ids:
                self.stop_reason = last
                return RequestStatus.FINISHED_STOPPED
        if num_output >= params.max_tokens or self.num_tokens >= max_model_len:
            return RequestStatus.FINISHED_LENGTH
        if self.grammar is not None and self.grammar.is_finished and params.ignore_eos:
            return RequestStatus.FINISHED_STOPPED  # the grammar admits nothing more, not even the ignored EOS
        return None
