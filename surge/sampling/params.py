"""Per-request sampling parameters, with vLLM's names and defaults.

In: keyword arguments from Python callers or an OpenAI request body (where
``logit_bias`` keys arrive as strings). Out: a validated, mutable
``SamplingParams`` whose ``stop`` is always a list and whose ``logit_bias`` has
int keys. Every check raises ``ValueError`` naming the field and the value.

``structured_outputs`` (a ``surge.structured.StructuredOutputsParams`` or a
dict of its fields) constrains the output to a JSON schema, regex, choice or
grammar. The on-device sampler reads these through ``surge.sampling.tensors``; the
output side reads ``stop``, ``include_stop_str_in_output``,
``skip_special_tokens`` and ``logprobs``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from surge.config import MAX_LOGPROBS
from surge.structured.spec import StructuredOutputsParams

# Below this temperature a request is treated as greedy: dividing logits by a
# near-zero temperature overflows float32, and the result would be argmax anyway.
MIN_TEMPERATURE = 1e-5
# OpenAI's limits for logit_bias (MAX_LOGPROBS lives in surge.config, beside engine.max_logprobs).
MAX_LOGIT_BIAS_ENTRIES = 300
MAX_LOGIT_BIAS_VALUE = 100.0
# The sampler masks stop token ids (for min_tokens) in a fixed-width table.
MAX_STOP_TOKEN_IDS = 32
OUTPUT_KINDS = ("cumulative", "delta", "final_only")


@dataclass
class SamplingParams:
    # Completions to generate for the prompt.
    n: int = 1
    # Most tokens to generate per completion.
    max_tokens: int = 16
    # Softmax temperature; 0 means greedy (argmax).
    temperature: float = 1.0
    # Nucleus sampling: keep the smallest set of tokens whose probability reaches top_p.
    top_p: float = 1.0
    # Keep only the k most likely tokens; 0 or -1 turns it off.
    top_k: int = 0
    # Drop tokens whose probability is below min_p times the most likely token's.
    min_p: float = 0.0
    # Seed of this request's random stream; None lets the engine pick one.
    seed: Optional[int] = None
    # Strings that end the completion (not included in the text unless asked).
    stop: Union[str, List[str], None] = None
    # Token ids that end the completion, besides the model's EOS.
    stop_token_ids: List[int] = field(default_factory=list)
    # Keep generating after EOS (until max_tokens or another stop).
    ignore_eos: bool = False
    # EOS and stop_token_ids cannot be sampled before this many tokens.
    min_tokens: int = 0
    # Added to the logits of the given token ids before sampling, each in [-100, 100].
    logit_bias: Optional[Dict[int, float]] = None
    # Subtracted once from the logit of every token already generated.
    presence_penalty: float = 0.0
    # Subtracted from a token's logit once per time it was generated.
    frequency_penalty: float = 0.0
    # Tokens seen in the prompt or output: positive logits divided by it, negative multiplied.
    repetition_penalty: float = 1.0
    # Top log-probabilities to return per token besides the sampled one's; None = no logprobs.
    logprobs: Optional[int] = None
    # Log-probabilities of the prompt's tokens (the first is None) with this many alternatives; None = off.
    # A request asking for them computes its whole prompt (no prefix-cache reuse for it).
    prompt_logprobs: Optional[int] = None
    # Keep the matched stop string at the end of the text.
    include_stop_str_in_output: bool = False
    # Leave special tokens (EOS, chat markers) out of the text.
    skip_special_tokens: bool = True
    # Constrain the output (vLLM's spelling): a StructuredOutputsParams or a dict such as {"json": schema},
    # {"regex": ...}, {"choice": [...]}, {"grammar": ...} or {"json_object": True}.
    structured_outputs: Optional[StructuredOutputsParams] = None
    # What each streamed output holds: "cumulative" (all text and tokens so far, plus the delta),
    # "delta" (only what is new since the last output) or "final_only" (one output, when it finishes).
    output_kind: str = "cumulative"
    # False: this request never proposes draft tokens, even when engine.speculative.method is set
    # (its tokens are the same either way; only the speed differs).
    speculate: bool = True

    def __post_init__(self) -> None:
        self.n = _as_int("n", self.n)
        self.max_tokens = _as_int("max_tokens", self.max_tokens)
        self.top_k = _as_int("top_k", self.top_k)
        self.min_tokens = _as_int("min_tokens", self.min_tokens)
        self.temperature = _as_float("temperature", self.temperature)
        self.top_p = _as_float("top_p", self.top_p)
        self.min_p = _as_float("min_p", self.min_p)
        self.presence_penalty = _as_float("presence_penalty", self.presence_penalty)
        self.frequency_penalty = _as_float("frequency_penalty", self.frequency_penalty)
        self.repetition_penalty = _as_float("repetition_penalty", self.repetition_penalty)
        if self.seed is not None:
            self.seed = _as_int("seed", self.seed)
        if self.logprobs is not None:
            self.logprobs = _as_int("logprobs", self.logprobs)
        if self.prompt_logprobs is not None:
            self.prompt_logprobs = _as_int("prompt_logprobs", self.prompt_logprobs)
        self.stop = _normalize_stop(self.stop)
        self.stop_token_ids = _normalize_stop_token_ids(self.stop_token_ids)
        self.logit_bias = _normalize_logit_bias(self.logit_bias)
        try:
            self.structured_outputs = StructuredOutputsParams.of(self.structured_outputs)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"SamplingParams.structured_outputs: {exc}") from None
        self._validate_ranges()

    def _validate_ranges(self) -> None:
        _require(self.n >= 1, "n", self.n, "must be >= 1")
        _require(isinstance(self.speculate, bool), "speculate", self.speculate, "must be a bool")
        _require(self.output_kind in OUTPUT_KINDS, "output_kind", self.output_kind, f"must be one of {OUTPUT_KINDS}")
        _require(self.max_tokens >= 1, "max_tokens", self.max_tokens, "must be >= 1")
        _require(self.temperature >= 0, "temperature", self.temperature, "must be >= 0")
        _require(0 < self.top_p <= 1, "top_p", self.top_p, "must be in (0, 1]")
        _require(self.top_k >= -1, "top_k", self.top_k, "must be >= -1 (0 or -1 turns it off)")
        _require(0 <= self.min_p <= 1, "min_p", self.min_p, "must be in [0, 1]")
        _require(-2 <= self.presence_penalty <= 2, "presence_penalty", self.presence_penalty, "must be in [-2, 2]")
        _require(-2 <= self.frequency_penalty <= 2, "frequency_penalty", self.frequency_penalty,
                 "must be in [-2, 2]")
        _require(self.repetition_penalty > 0, "repetition_penalty", self.repetition_penalty, "must be > 0")
        _require(self.min_tokens >= 0, "min_tokens", self.min_tokens, "must be >= 0")
        _require(self.min_tokens <= self.max_tokens, "min_tokens", self.min_tokens,
                 f"must be <= max_tokens ({self.max_tokens})")
        if self.structured_outputs is not None:
            # Suppressing EOS where the grammar allows nothing else would leave no token to sample.
            _require(self.min_tokens == 0, "min_tokens", self.min_tokens,
                     "cannot be combined with structured_outputs (the grammar decides where the output ends)")
        if self.logprobs is not None:
            _require(0 <= self.logprobs <= MAX_LOGPROBS, "logprobs", self.logprobs,
                     f"must be in [0, {MAX_LOGPROBS}]")
        if self.prompt_logprobs is not None:
            _require(0 <= self.prompt_logprobs <= MAX_LOGPROBS, "prompt_logprobs", self.prompt_logprobs,
                     f"must be in [0, {MAX_LOGPROBS}]")

    @property
    def max_new_tokens(self) -> int:
        """EasyDeL's name of max_tokens (also accepted by the constructor)."""
        return self.max_tokens

    @property
    def is_greedy(self) -> bool:
        """Whether the sampled token is the argmax (temperature ~0 or top_k == 1)."""
        return self.temperature < MIN_TEMPERATURE or self.top_k == 1

    @property
    def uses_penalties(self) -> bool:
        """Whether the sampler needs this request's token history."""
        return self.presence_penalty != 0.0 or self.frequency_penalty != 0.0 or self.repetition_penalty != 1.0

    @property
    def uses_top_k_top_p_min_p(self) -> bool:
        """Whether a sampled (non-greedy) request truncates its distribution."""
        return self.top_k > 1 or self.top_p < 1.0 or self.min_p > 0.0

    def clone(self) -> "SamplingParams":
        """An independent copy (lists and dicts are copied too)."""
        return copy.deepcopy(self)

    def replace(self, **changes) -> "SamplingParams":
        """A validated copy with some fields changed."""
        return dataclasses.replace(self.clone(), **changes)


def _accepting_max_new_tokens(init):
    """Wrap the dataclass __init__ so that EasyDeL's `max_new_tokens=` sets max_tokens."""

    @functools.wraps(init)
    def __init__(self, *args, max_new_tokens: Optional[int] = None, **kwargs) -> None:
        if max_new_tokens is not None:
            given = args[1] if len(args) > 1 else kwargs.get("max_tokens")
            if given is not None and given != max_new_tokens:
                raise ValueError(f"SamplingParams: max_new_tokens={max_new_tokens!r} and max_tokens={given!r} "
                                 "differ; they are the same setting, give one of them")
            if len(args) <= 1:
                kwargs["max_tokens"] = max_new_tokens
        init(self, *args, **kwargs)

    return __init__


SamplingParams.__init__ = _accepting_max_new_tokens(SamplingParams.__init__)


def _require(ok: bool, name: str, value, message: str) -> None:
    if not ok:
        raise ValueError(f"SamplingParams.{name}={value!r}: {message}")


def _as_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"SamplingParams.{name}={value!r}: must be an integer")
    return int(value)


def _as_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"SamplingParams.{name}={value!r}: must be a number")
    number = float(value)
    if number != number:
        raise ValueError(f"SamplingParams.{name}={value!r}: must not be NaN")
    return number


def _normalize_stop(stop) -> List[str]:
    if stop is None:
        return []
    strings = [stop] if isinstance(stop, str) else list(stop)
    for text in strings:
        if not isinstance(text, str) or not text:
            raise ValueError(f"SamplingParams.stop={stop!r}: every stop string must be a non-empty str")
    return strings


def _normalize_stop_token_ids(ids) -> List[int]:
    if ids is None:
        return []
    if isinstance(ids, int):
        ids = [ids]
    normalized = [_as_int("stop_token_ids", token) for token in ids]
    for token in normalized:
        _require(token >= 0, "stop_token_ids", ids, f"token id {token} must be >= 0")
    _require(len(normalized) <= MAX_STOP_TOKEN_IDS, "stop_token_ids", ids,
             f"at most {MAX_STOP_TOKEN_IDS} ids are supported, got {len(normalized)}")
    return normalized


def _normalize_logit_bias(bias) -> Optional[Dict[int, float]]:
    if bias is None:
        return None
    if not isinstance(bias, dict):
        raise ValueError(f"SamplingParams.logit_bias={bias!r}: must be a dict of token id -> bias")
    _require(len(bias) <= MAX_LOGIT_BIAS_ENTRIES, "logit_bias", f"<{len(bias)} entries>",
             f"at most {MAX_LOGIT_BIAS_ENTRIES} entries are allowed")
    normalized: Dict[int, float] = {}
    for key, value in bias.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise ValueError(f"SamplingParams.logit_bias: key {key!r} is not a token id") from None
        _require(token >= 0, "logit_bias", bias, f"token id {token} must be >= 0")
        amount = _as_float(f"logit_bias[{key!r}]", value)
        _require(-MAX_LOGIT_BIAS_VALUE <= amount <= MAX_LOGIT_BIAS_VALUE, f"logit_bias[{key!r}]", value,
                 f"must be in [-{MAX_LOGIT_BIAS_VALUE:g}, {MAX_LOGIT_BIAS_VALUE:g}]")
        normalized[token] = amount
    return normalized


__all__ = ["MAX_LOGIT_BIAS_ENTRIES", "MAX_LOGPROBS", "MAX_STOP_TOKEN_IDS", "MIN_TEMPERATURE", "OUTPUT_KINDS", "SamplingParams"]
