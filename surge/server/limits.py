"""How much work one request may ask of the server: the `server.*` bounds the handlers enforce.

In: `server.max_request_bytes`, `server.max_prompt_tokens` and `server.default_max_tokens` (config or
`eSurgeApiServer` arguments). Out: one frozen `RequestLimits` passed down to the body-size guard
(`body_limit.py`) and, with the engine's own limits, to `request_params.EngineLimits`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_TOKENS = 1024


@dataclass(frozen=True)
class RequestLimits:
    # Largest request body; a larger one gets 413 before any of it is parsed.
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    # Longest prompt in tokens; 0 = the model's context (engine.max_model_len).
    max_prompt_tokens: int = 0
    # A chat request without max_tokens generates at most this many (and never past the context); 0 = no cap.
    default_max_tokens: int = DEFAULT_MAX_TOKENS

    def __post_init__(self) -> None:
        if self.max_request_bytes < 1:
            raise ValueError(f"server.max_request_bytes={self.max_request_bytes}: must be >= 1")
        if self.max_prompt_tokens < 0:
            raise ValueError(f"server.max_prompt_tokens={self.max_prompt_tokens}: must be >= 0 (0 = the context)")
        if self.default_max_tokens < 0:
            raise ValueError(f"server.default_max_tokens={self.default_max_tokens}: must be >= 0 (0 = no cap)")
