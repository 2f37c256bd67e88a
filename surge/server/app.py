"""The OpenAI-compatible server: `eSurgeApiServer` and its FastAPI app.

In: an `Engine` or `AsyncEngine` (or a factory that builds one in the
background, as `surge-serve` does), API keys, and server options. Out: `.app`
(the FastAPI application) with `POST /v1/chat/completions`,
`POST /v1/completions`, `GET /v1/models`, `GET /health` (503 until the engine
is ready) and `GET /metrics` (Prometheus text); `.generate_api_key(label=...)`;
`.fire(host, port)` to serve until SIGTERM / Ctrl-C (or `.shutdown()` from another thread).

Every failure answers with an OpenAI error body (`errors.py`) — unknown routes,
wrong methods and unexpected exceptions included — so a client always gets
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from surge.engine.stats import EngineStats
from surge.server.auth import ApiKeyStore, ApiKeysSpec
from surge.server.body_limit import BodyLimit
from surge.server.chat_completions import create_chat_completion
from surge.server.completions import create_completion
from surge.server.context import ServerContext, invalid_body
from surge.server.engine_host import EngineHost
from surge.server.errors import OpenAIError, unavailable
from surge.server.json_body import SafeJsonRoute
from surge.server.limits import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_MAX_TOKENS, RequestLimits
from surge.server.metrics import CONTENT_TYPE, ServerMetrics
from surge.server import openapi
from surge.server.openapi import answers, error_responses
from surge.server.protocol import (ChatCompletion, ChatCompletionRequest, Completion, CompletionRequest, HealthStatus,
                                   ModelCard, ModelList)
from surge.server.services import ProtocolServices

logger = logging.getLogger("surge")


class eSurgeApiServer:
    """OpenAI-compatible HTTP server over one surge engine (eSurge's name and arguments)."""

    def __init__(self, engine=None, *, require_api_key: bool = False, api_keys: ApiKeysSpec = None,
                 api_keys_file: str = "", max_queue: int = 1024, isolate_prefix_cache_per_key: bool = False,
                 served_model_name: Optional[str] = None, model_aliases: Sequence[str] = (),
                 engine_factory: Optional[Callable[[], object]] = None, max_model_len: Optional[int] = None,
                 enable_console_monitor: bool = False, responses_store: str = "sqlite",
                 responses_store_path: str = "", responses_store_max: int = 10000,
                 reasoning_parser: str = "none", max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
                 max_prompt_tokens: int = 0, default_max_tokens: int = DEFAULT_MAX_TOKENS,
                 metrics_require_api_key: bool = True) -> None:
        if engine is None and engine_factory is None:
            raise ValueError("eSurgeApiServer needs an engine (Engine or AsyncEngine) or an engine_factory")
        self.keys = ApiKeyStore(api_keys, require=require_api_key, keys_file=api_keys_file)
        if require_api_key and not len(self.keys):
            logger.warning("require_api_key is set but no keys are registered: every request will get a 401 "
                           "until generate_api_key() adds one")
        self.host = EngineHost(max_queue=max_queue)
        inner = getattr(engine, "engine", engine)
        self.model_name = served_model_name or (getattr(inner, "model_name", None) if inner is not None else None) \
            or "surge"
        length = max_model_len or getattr(inner, "max_model_len", None) or 8192
        self.metrics = ServerMetrics(self.model_name, self._stats, max_model_len=length,
                                     replica_stats_fn=self._replica_stats)
        for label in self.keys.labels:
            self.metrics.register_key_label(label)
        self.context = ServerContext(self.host, self.keys, self.metrics, self.model_name, aliases=model_aliases,
                                     isolate_prefix_cache_per_key=isolate_prefix_cache_per_key,
                                     reasoning_parser=reasoning_parser,
                                     request_limits=RequestLimits(max_request_bytes, max_prompt_tokens,
                                                                  default_max_tokens),
                                     metrics_require_api_key=metrics_require_api_key)
        self.enable_console_monitor = enable_console_monitor
        self.monitor = None
        self.uvicorn_server = None  # set while fire() serves
        self.services = ProtocolServices(self.context, responses_store, responses_store_max, responses_store_path)
        self.app = build_app(self.context, self.services)
        self._engine_factory = engine_factory
        if engine is not None:
            self.host.set_engine(engine)

    @classmethod
    def from_config(cls, cfg, engine=None) -> "eSurgeApiServer":
        """A server for a SurgeConfig; without `engine`, `start_engine()` builds it from `cfg` in the background."""
        from surge.engine.engine import Engine

        server = cfg.server
        return cls(engine, require_api_key=server.require_api_key, api_keys=list(server.api_keys),
                   api_keys_file=server.api_keys_file, max_queue=server.max_queue,
                   isolate_prefix_cache_per_key=server.isolate_prefix_cache_per_key,
                   served_model_name=cfg.model.served_name or cfg.model.name, model_aliases=(cfg.model.name,),
                   engine_factory=(lambda: Engine(cfg)) if engine is None else None,
                   max_model_len=cfg.engine.max_model_len or None,
                   enable_console_monitor=server.enable_console_monitor, responses_store=server.responses_store,
                   responses_store_path=server.responses_store_path,
                   responses_store_max=server.responses_store_max, reasoning_parser=server.reasoning_parser,
                   # Read with their defaults, so a config without these keys still builds a server.
                   max_request_bytes=getattr(server, "max_request_bytes", DEFAULT_MAX_REQUEST_BYTES),
                   max_prompt_tokens=getattr(server, "max_prompt_tokens", 0),
                   default_max_tokens=getattr(server, "default_max_tokens", DEFAULT_MAX_TOKENS),
                   metrics_require_api_key=getattr(server, "metrics_require_api_key", True))

    def _stats(self) -> Optional[EngineStats]:
        return self.host.engine.stats() if self.host.ready else None

    def _replica_stats(self) -> tuple:
        return self.host.engine.replica_stats() if self.host.ready else ()

    def generate_api_key(self, label: Optional[str] = None) -> str:
        """Register and return a new key; its usage shows in /metrics under `label`."""
        key = self.keys.generate(label)
        self.metrics.register_key_label(self.keys.lookup(key))
        return key

    def start_engine(self):
        """Build the engine in a background thread if it was given as a factory; returns that thread or None."""
        if self.enable_console_monitor:
            self.host.on_ready(self._start_console)
        if self._engine_factory is None or self.host.async_engine is not None or self.host.building:
            return None
        return self.host.build_in_background(self._engine_factory)

    def _start_console(self, engine) -> None:
        from surge.monitoring.monitor import start_monitoring

        self.monitor = start_monitoring(engine, prometheus_port=None, enable_console=True, metrics=self.metrics,
                                        model_name=self.model_name)

    def shutdown(self) -> None:
        """Ask a running fire() to drain and return (what SIGTERM does); usable from another thread."""
        if self.uvicorn_server is not None:
            self.uvicorn_server.should_exit = True

    def stop(self) -> None:
        if self.monitor is not None:
            self.monitor.stop()
        self.host.stop()
        self.context.workers.shutdown()

    def fire(self, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
             access_log: bool = False) -> None:
        """Serve until SIGTERM or Ctrl-C: then stop accepting, abort requests in flight, stop the engine."""
        from surge.server.launcher import serve

        serve(self, host=host, port=port, log_level=log_level, access_log=access_log)


def build_app(ctx: ServerContext, services: Optional[ProtocolServices] = None) -> FastAPI:
    from surge import __version__

    app = FastAPI(title="surge", description="OpenAI-compatible API over a surge engine", version=__version__,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.router.route_class = SafeJsonRoute

    def error_for(path: str, error: OpenAIError) -> JSONResponse:
        return services.error_response_for(path, error) if services is not None else error.response()

    app.add_middleware(BodyLimit, max_bytes=ctx.request_limits.max_request_bytes, respond=error_for)

    @app.exception_handler(OpenAIError)
    async def openai_error(_: Request, exc: OpenAIError) -> JSONResponse:
        return exc.response()


    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return OpenAIError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None,
                           error_type="not_found_error" if exc.status_code == 404 else "invalid_request_error"
                           ).response(headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # The key is checked before the body's problems are told (FastAPI validates bodies first).
        try:
            ctx.authorize(request)
            error = invalid_body(exc.errors())
        except OpenAIError as denied:
            error = denied
        return error_for(request.url.path, error)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unexpected error answering %s %s", request.method, request.url.path)
        return OpenAIError(500, f"internal error: {type(exc).__name__}: {exc}").response()

    @app.post("/v1/chat/completions", responses=answers(ChatCompletion, streams=True))
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        return await create_chat_completion(ctx, body, request)

    @app.post("/v1/completions", responses=answers(Completion, streams=True))
    async def completions(body: CompletionRequest, request: Request) -> Response:
        return await create_completion(ctx, body, request)

    @app.get("/v1/models", responses=answers(ModelList))
    async def models(request: Request) -> JSONResponse:
        ctx.authorize(request)
        engine = ctx.host.engine
        card = ModelCard(id=ctx.model_name, max_model_len=engine.max_model_len if engine is not None else None)
        return JSONResponse(ModelList(data=[card]).model_dump())

    @app.get("/v1/models/{name:path}", responses=answers(ModelCard))
    async def model(name: str, request: Request) -> JSONResponse:
        ctx.authorize(request)
        ctx.check_model(name)
        engine = ctx.host.engine
        card = ModelCard(id=ctx.model_name, max_model_len=engine.max_model_len if engine is not None else None)
        return JSONResponse(card.model_dump())

    if services is not None:
        services.register(app)

    @app.get("/health", responses=answers(HealthStatus))
    async def health() -> JSONResponse:
        ok, message = ctx.host.status()
        if ok:
            return JSONResponse({"status": "ok", "model": ctx.model_name})
        return unavailable(message, code="draining" if ctx.host.draining else "not_ready").response()

    @app.get("/metrics", response_class=PlainTextResponse, responses=error_responses())
    async def metrics(request: Request) -> Response:
        if ctx.metrics_require_api_key:
            ctx.authorize(request)  # a 401 only when keys are required
        return Response(ctx.metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi_json(request: Request) -> JSONResponse:
        ctx.authorize(request)
        return JSONResponse(app.openapi())

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        ctx.authorize(request)
        # The browser fetches the schema without headers: a key given as ?api_key= is passed on to it.
        key = request.query_params.get("api_key")
        url = "/openapi.json" + (f"?{urlencode({'api_key': key})}" if key else "")
        return get_swagger_ui_html(openapi_url=url, title="surge API")

    openapi.install(app)
    return app
