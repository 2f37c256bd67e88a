"""From an OpenAI request body to the engine's `SamplingParams`.

In: a parsed `ChatCompletionRequest` or `CompletionRequest`, the prompt's
token count and the engine's limits (max_model_len, vocabulary size, widest
logprobs). Out: validated `SamplingParams`, or an `OpenAIError` (400) that
names the field and the limit. OpenAI's defaults apply: temperature 1,
top_p 1, max_tokens 16 for completions (OpenAI's default) and, for chat, what
fits in the context after the prompt capped by `server.default_max_tokens`.
A prompt longer than `server.max_prompt_tokens` (default: the context) is a
400, and so is a number the float32 sampler cannot hold.
Structured-output fields map through `structured_request.py`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Optional, Union

from surge.sampling.params import SamplingParams
from surge.server.errors import OpenAIError, bad_request
from surge.server.protocol import ChatCompletionRequest, CompletionRequest
from surge.server.structured_request import structured_outputs_of

MAX_N = 128
# OpenAI's default max_tokens for /v1/completions.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# The largest float32: a sampling number beyond it would overflow on the device.
MAX_FLOAT32 = 3.4028234663852886e38
# Seeds are folded into the range the on-device random streams take.
SEED_MODULUS = 2**31


@dataclass(frozen=True)
class EngineLimits:
    max_model_len: int
    vocab_size: int
    max_logprobs: int
    max_prompt_tokens: int = 0  # server.max_prompt_tokens; 0 = max_model_len
    default_max_tokens: int = 0  # server.default_max_tokens: chat's cap when max_tokens is left out; 0 = none


def check_prompt_length(prompt_len: int, limits: EngineLimits, what: str = "prompt") -> None:
    """A 400 when the prompt is longer than server.max_prompt_tokens (set below the context)."""
    # At or above the context, the context-length 400 below says it better.
    if 0 < limits.max_prompt_tokens < limits.max_model_len and prompt_len > limits.max_prompt_tokens:
        raise bad_request(f"the {what} has {prompt_len} tokens; this server takes at most {limits.max_prompt_tokens} "
                          f"(server.max_prompt_tokens)", param="messages" if what == "messages" else "prompt",
                          code="context_length_exceeded")


def context_length_error(prompt_len: int, limits: EngineLimits, requested: Optional[int] = None,
                         what: str = "prompt") -> OpenAIError:
    if requested is None:
        message = (f"This model's maximum context length is {limits.max_model_len} tokens, and the {what} has "
                   f"{prompt_len} tokens: there is no room for even one generated token. Shorten the {what} "
                   f"(or start the server with a larger engine.max_model_len).")
        return bad_request(message, param="messages" if what == "messages" else "prompt",
                           code="context_length_exceeded")
    message = (f"This model's maximum context length is {limits.max_model_len} tokens. However, you requested "
               f"{prompt_len + requested} tokens ({prompt_len} in the {what}, {requested} in the completion). "
               f"Reduce the length of the {what} or of max_tokens (at most {limits.max_model_len - prompt_len} "
               f"here).")
    return bad_request(message, param="max_tokens", code="context_length_exceeded")


def prompt_limit(limits: EngineLimits) -> int:
    """The most tokens a prompt may have and still be served (room for one generated token)."""
    longest = limits.max_model_len - 1
    return min(longest, limits.max_prompt_tokens) if limits.max_prompt_tokens else longest


def prompt_too_long(num_tokens: int, limits: EngineLimits, what: str = "prompt") -> OpenAIError:
    """The 400 for a prompt of `num_tokens` over `prompt_limit(limits)`."""
    try:
        resolve_max_tokens(1, num_tokens, limits, what)
    except OpenAIError as exc:
        return exc
    raise AssertionError(f"a {num_tokens}-token prompt fits {limits}")


def resolve_max_tokens(requested: Optional[int], prompt_len: int, limits: EngineLimits, what: str,
                       default: Optional[int] = None) -> int:
    """`requested`, or when it is None `default` (all the room left, when None), never past the context."""
    check_prompt_length(prompt_len, limits, what)
    room = limits.max_model_len - prompt_len
    if room < 1:
        raise context_length_error(prompt_len, limits, what=what)
    if requested is None:
        return room if default is None else min(room, default)
    if requested < 1:
        raise bad_request(f"max_tokens={requested}: must be >= 1", param="max_tokens")
    if requested > room:
        raise context_length_error(prompt_len, limits, requested, what=what)
    return requested


def chat_sampling_params(req: ChatCompletionRequest, prompt_len: int, limits: EngineLimits,
                         tool_grammar=None) -> SamplingParams:
    """`tool_grammar`: the StructuredOutputsParams that tool_choice asks for (see surge.server.chat)."""
    if req.max_tokens is not None and req.max_completion_tokens is not None and \
            req.max_tokens != req.max_completion_tokens:
        raise bad_request(f"max_tokens={req.max_tokens} and max_completion_tokens={req.max_completion_tokens} "
                          "disagree: give one of them", param="max_completion_tokens")
    requested = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if req.top_logprobs is not None and not req.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    default = limits.default_max_tokens or None
    params = _build(req, resolve_max_tokens(requested, prompt_len, limits, "messages", default), logprobs, limits,
                    logprobs_param="top_logprobs", structured_outputs=structured_outputs_of(req, tool_grammar))
    params.prompt_logprobs = _prompt_logprobs(req.prompt_logprobs, limits)
    return params


def _prompt_logprobs(value: Optional[int], limits: EngineLimits) -> Optional[int]:
    if value is not None and not 0 <= value <= limits.max_logprobs:
        raise bad_request(f"prompt_logprobs={value}: must be between 0 and {limits.max_logprobs} "
                          "(engine.max_logprobs)", param="prompt_logprobs")
    return value


def completion_sampling_params(req: CompletionRequest, prompt_len: int, limits: EngineLimits) -> SamplingParams:
    if req.best_of is not None and req.best_of != req.n:
        raise bad_request(f"best_of={req.best_of}: only best_of == n is supported (n={req.n})", param="best_of")
    if req.suffix:
        raise bad_request("suffix is not supported by this server", param="suffix")
    if req.max_tokens == 0 and not req.echo:
        raise bad_request("max_tokens=0 is only allowed with echo=true (to score the prompt)", param="max_tokens")
    # max_tokens=0 with echo: one token is sampled with the prefill (free) and left out of the answer.
    requested = 1 if req.max_tokens == 0 else req.max_tokens
    params = _build(req, resolve_max_tokens(requested, prompt_len, limits, "prompt",
                                            COMPLETIONS_DEFAULT_MAX_TOKENS), req.logprobs, limits,
                    logprobs_param="logprobs", structured_outputs=structured_outputs_of(req))
    # echo with logprobs scores the prompt too, as evaluation harnesses expect.
    wanted = [k for k in (_prompt_logprobs(req.prompt_logprobs, limits), req.logprobs if req.echo else None)
              if k is not None]
    params.prompt_logprobs = max(wanted) if wanted else None
    return params


def _build(req: Union[ChatCompletionRequest, CompletionRequest], max_tokens: int, logprobs: Optional[int],
           limits: EngineLimits, logprobs_param: str, structured_outputs=None) -> SamplingParams:
    if not 1 <= req.n <= MAX_N:
        raise bad_request(f"n={req.n}: must be between 1 and {MAX_N}", param="n")
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty"):
        value = getattr(req, name)
        if value is not None and not (math.isfinite(value) and abs(value) <= MAX_FLOAT32):
            raise bad_request(f"{name}={value}: must be a finite number within float32 range "
                              f"(|{name}| <= {MAX_FLOAT32:.4g})", param=name)
    if logprobs is not None and not 0 <= logprobs <= limits.max_logprobs:
        raise bad_request(f"{logprobs_param}={logprobs}: must be between 0 and {limits.max_logprobs} "
                          f"(engine.max_logprobs)", param=logprobs_param)
    _check_token_ids("stop_token_ids", req.stop_token_ids or [], limits.vocab_size)
    if req.logit_bias:
        for key, bias in req.logit_bias.items():
            if not re.fullmatch(r"\d+", key.strip()):
                raise bad_request(f"logit_bias key {key!r} is not a token id", param="logit_bias")
            if not (math.isfinite(bias) and abs(bias) <= MAX_FLOAT32):
                raise bad_request(f"logit_bias[{key}]={bias}: must be a finite number within float32 range",
                                  param="logit_bias")
        _check_token_ids("logit_bias", [int(k) for k in req.logit_bias], limits.vocab_size)
    if req.min_tokens > max_tokens:
        raise bad_request(f"min_tokens={req.min_tokens} is more than max_tokens={max_tokens}", param="min_tokens")
    seed = None if req.seed is None else req.seed % SEED_MODULUS
    try:
        return SamplingParams(
            n=req.n, max_tokens=max_tokens,
            temperature=1.0 if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p,
            top_k=0 if req.top_k is None else req.top_k,
            min_p=0.0 if req.min_p is None else req.min_p,
            seed=seed, stop=req.stop, stop_token_ids=list(req.stop_token_ids or []), ignore_eos=req.ignore_eos,
            min_tokens=req.min_tokens, logit_bias=req.logit_bias,
            presence_penalty=0.0 if req.presence_penalty is None else req.presence_penalty,
            frequency_penalty=0.0 if req.frequency_penalty is None else req.frequency_penalty,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            logprobs=logprobs, include_stop_str_in_output=req.include_stop_str_in_output,
            skip_special_tokens=req.skip_special_tokens, structured_outputs=structured_outputs)
    except ValueError as exc:
        raise bad_request(str(exc), param=_param_of(str(exc))) from None


def _check_token_ids(param: str, token_ids: list[int], vocab_size: int) -> None:
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise bad_request(f"{param}: token ids {bad[:5]} are outside the vocabulary [0, {vocab_size})", param=param)


def _param_of(message: str) -> Optional[str]:
    match = re.match(r"SamplingParams\.(\w+)", message)
    return match.group(1) if match else None
