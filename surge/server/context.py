"""What every OpenAI handler shares: auth, body parsing, model names, limits, tracked engine streams.

In: the HTTP request (headers, query, body bytes) and the server's parts —
the `EngineHost`, the `ApiKeyStore`, the `ServerMetrics`. Out: a `Principal`
(the caller's key label and prefix-cache salt) or a 401; a 400 naming the field
of a body that does not validate; the served model name or a 404; and, per
accepted prompt, a stream of `RequestOutput`s that feeds the metrics and the
caller's per-key usage, and aborts the request if it is left early.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

from starlette.requests import Request

from surge.engine.outputs import FinishReason
from surge.server.auth import ApiKeyStore, presented_key
from surge.server.engine_host import EngineHost
from surge.server.errors import OpenAIError, bad_request, unauthorized
from surge.server.limits import RequestLimits
from surge.server.metrics import ServerMetrics
from surge.server.request_params import EngineLimits
from surge.server.structured_request import wait_until_compiled
from surge.server.workers import WorkerPool

logger = logging.getLogger("surge")

# Model names every server answers to besides its own (eSurge's examples use "default").
MODEL_ALIASES = ("default",)


@dataclass(frozen=True)
class Principal:
    label: Optional[str]  # the registered key's label; None for an unregistered or absent key
    cache_salt: Optional[str]  # set when prefix caches are isolated per key
    owner: str = "anonymous"  # a hash of the presented key: whose stored responses this caller sees


def invalid_body(errors: Sequence[dict]) -> OpenAIError:
    """The 400 for the pydantic validation errors of a request body (FastAPI-validated or an adapter's)."""
    first = errors[0]
    location = ".".join(str(part) for part in first["loc"] if part != "body")
    if first["type"] == "json_invalid":
        return bad_request(f"the request body is not valid JSON: {first['msg']}", code="invalid_json")
    if first["type"] == "missing" and not location:
        return bad_request("the request body is empty: send a JSON object", code="invalid_json")
    if first["type"] in ("model_type", "model_attributes_type", "dict_type") and not location:
        return bad_request("the request body must be a JSON object", code="invalid_json")
    more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
    return bad_request(f"{location or 'body'}: {first['msg']}{more}", param=location or None,
                       code="invalid_type" if first["type"].endswith("_type") else "invalid_value")


class ServerContext:
    def __init__(self, host: EngineHost, keys: ApiKeyStore, metrics: ServerMetrics, model_name: str,
                 aliases: Sequence[str] = (), isolate_prefix_cache_per_key: bool = False,
                 reasoning_parser: str = "none", request_limits: Optional[RequestLimits] = None,
                 metrics_require_api_key: bool = True) -> None:
        self.host = host
        self.keys = keys
        self.metrics = metrics
        self.model_name = model_name
        self.accepted_names = {model_name, *aliases, *MODEL_ALIASES}
        self.isolate_prefix_cache_per_key = isolate_prefix_cache_per_key
        self.reasoning_parser = reasoning_parser  # server.reasoning_parser: none | deepseek_r1 | qwen3
        self.request_limits = request_limits or RequestLimits()
        # With keys required, /metrics (and /openapi.json, /docs) need one too unless this is false.
        self.metrics_require_api_key = metrics_require_api_key
        self.workers = WorkerPool()  # tokenizing and templating, off the event loop

    # ---- request checks ------------------------------------------------------------------------
    def authorize(self, request: Request) -> Principal:
        key = presented_key(request.headers, request.query_params)
        label = self.keys.lookup(key)
        if self.keys.require and label is None:
            reason = "no API key was given" if key is None else "the API key is not valid"
            raise unauthorized(f"{reason}: send it as 'Authorization: Bearer <key>', 'X-API-Key: <key>' or "
                               "'?api_key=<key>'")
        salt = None
        if self.isolate_prefix_cache_per_key and key is not None and label is not None:
            salt = hashlib.sha256(b"surge-prefix-cache:" + key.encode()).hexdigest()[:32]
        owner = hashlib.sha256(b"surge-owner:" + key.encode()).hexdigest()[:32] if key else "anonymous"
        return Principal(label=label, cache_salt=salt, owner=owner)

    def check_model(self, name: Optional[str]) -> None:
        if name and name not in self.accepted_names:
            raise OpenAIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}' "
                                   "(see GET /v1/models)", param="model", code="model_not_found")

    def limits(self) -> EngineLimits:
        engine = self.host.engine
        vocab = getattr(getattr(engine, "arch", None), "vocab_size", None) or len(engine.tokenizer)
        return EngineLimits(max_model_len=engine.max_model_len, vocab_size=vocab,
                            max_logprobs=engine.config.engine.max_logprobs,
                            max_prompt_tokens=self.request_limits.max_prompt_tokens,
                            default_max_tokens=self.request_limits.default_max_tokens)

    def require_ready(self):
        try:
            return self.host.require_ready()
        except OpenAIError as exc:
            self.metrics.reject(exc.code or "not_ready")
            raise

    # ---- engine streams ------------------------------------------------------------------------
    async def open_streams(self, prompts: Sequence[list[int]], params, *, request_id: str, priority: int,
                           principal: Principal, cache_salt: Optional[str]) -> list["TrackedStream"]:
        """Add one engine request per prompt; all or none (a 400 or 503 closes those already added)."""
        # A salt the client sends narrows sharing further; it never lifts the per-key isolation.
        salts = [s for s in (principal.cache_salt, cache_salt) if s]
        salt = ":".join(salts) if salts else None
        self.host.check_servable(len(prompts), params.n, max(len(p) for p in prompts), params.max_tokens)
        await wait_until_compiled(self.host.engine, params.structured_outputs)
        opened: list = []
        try:
            for i, prompt_ids in enumerate(prompts):
                stream_id = request_id if len(prompts) == 1 else f"{request_id}-{i}"
                timer = self.metrics.timer()
                try:
                    stream = await self.host.open_stream(prompt_ids, params, request_id=stream_id,
                                                         priority=priority, cache_salt=salt)
                except ValueError as exc:
                    raise bad_request(str(exc), param="prompt") from None
                opened.append(TrackedStream(stream, timer, self.metrics, principal.label))
        except BaseException as exc:
            if isinstance(exc, OpenAIError) and exc.status == 503:
                self.metrics.reject(exc.code or "overloaded")
            await close_all(opened)
            raise
        return opened



class TrackedStream:
    """An `EngineStream` whose outputs feed the metrics; `aclose()` (idempotent) records and aborts."""

    def __init__(self, stream, timer, metrics: ServerMetrics, key_label: Optional[str]) -> None:
        self._stream = stream
        self._timer = timer
        self._metrics = metrics
        self._key_label = key_label
        self._last = None
        self._closed = False

    def __aiter__(self) -> "TrackedStream":
        return self

    async def __anext__(self):
        output = await self._stream.__anext__()
        self._timer.on_output(output)
        self._last = output
        return output

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._last is not None:
            self._metrics.observe_finished(self._last, self._timer, self._key_label)
        else:
            self._metrics.request_success.labels(self._metrics.model_name, FinishReason.ABORT).inc()
        await self._stream.aclose()


async def close_all(streams: Sequence) -> None:
    """Close every stream (aborting unfinished requests), even if some closing fails."""
    for stream in streams:
        try:
            await stream.aclose()
        except Exception:
            logger.exception("closing an engine stream failed")

