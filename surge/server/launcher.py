"""Run an `eSurgeApiServer` under uvicorn: bind first, build the engine meanwhile, drain on SIGTERM.

In: the server, host and port (0 picks a free port). Out: a bound socket
(`surge-serve listening on http://HOST:PORT` is printed as soon as it is, so
scripts can read the port), the engine built in a background thread while
`/health` answers 503, one `surge-serve ready` line once it serves, and on
SIGTERM / Ctrl-C: stop accepting, abort every request in flight (their streams
end at once), wait for the responses to finish, stop the engine loop, return
normally (exit code 0). If the engine fails to build, the server stops and
`serve` raises `EngineStartError`.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from typing import Optional

import uvicorn

from surge.engine.stats import EngineStats

logger = logging.getLogger("surge")

# Seconds the in-flight responses get to end after their requests were aborted.
GRACEFUL_TIMEOUT_S = 10


class EngineStartError(RuntimeError):
    """The engine could not be built (bad model, config, or out of memory); the message says which."""


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind {host}:{port}: {exc.strerror} (set server.port, or 0 for a free "
                                 "port)") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


class _DrainingServer(uvicorn.Server):
    """uvicorn's server that aborts the engine's requests in flight before its graceful shutdown."""

    def __init__(self, config: uvicorn.Config, api_server) -> None:
        super().__init__(config)
        self.api_server = api_server

    async def shutdown(self, sockets=None) -> None:
        host = self.api_server.host
        host.draining = True
        aborted = await host.abort_all()
        if aborted:
            logger.info("shutting down: aborted %d request(s) in flight", aborted)
        await super().shutdown(sockets=sockets)


def serve(api_server, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "info",
          access_log: bool = False, announce=print) -> None:
    """Serve until a signal; see the module docstring."""
    sock = bind_socket(host, port)
    bound_port = sock.getsockname()[1]
    url = f"http://{host if ':' not in host else f'[{host}]'}:{bound_port}"
    announce(f"surge-serve listening on {url}", flush=True)
    config = uvicorn.Config(api_server.app, log_level=log_level, access_log=access_log, lifespan="off",
                            timeout_graceful_shutdown=GRACEFUL_TIMEOUT_S, timeout_keep_alive=30)
    server = _DrainingServer(config, api_server)
    api_server.uvicorn_server = server
    build_thread = api_server.start_engine()
    failure: dict[str, str] = {}
    threading.Thread(target=_watch_start, args=(api_server, server, url, announce, failure), daemon=True,
                     name="surge-start-watch").start()
    # uvicorn re-raises the signal that stopped it once it is done; answer that with a clean return.
    # (Signals reach only the main thread; elsewhere uvicorn installs no handlers either.)
    in_main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)} if in_main else {}
    try:
        server.run(sockets=[sock])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sock.close()
        api_server.stop()
    if "error" in failure:
        raise EngineStartError(failure["error"])
    if in_main and build_thread is not None and build_thread.is_alive():
        # Stopped while the engine was still compiling: that thread cannot be interrupted, so leave now.
        logger.info("stopped during start-up; exiting without waiting for the engine build")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _watch_start(api_server, server: uvicorn.Server, url: str, announce, failure: dict) -> None:
    """Announce readiness, or stop the server if the engine could not be built."""
    host = api_server.host
    while not server.should_exit:
        if host.error is not None:
            failure["error"] = host.error
            announce(f"surge-serve: the engine failed to start: {host.error}", file=sys.stderr, flush=True)
            server.should_exit = True
            return
        if host.ready:
            engine = host.engine
            stats = _safe_stats(engine)
            pages, backend = (stats.pages.num_total_pages, stats.backend) if stats is not None else ("?", "?")
            announce(f"surge-serve ready on {url}: model {api_server.model_name}, max_model_len "
                     f"{engine.max_model_len}, {pages} KV pages, backend {backend}", flush=True)
            return
        threading.Event().wait(0.1)


def _safe_stats(engine) -> Optional[EngineStats]:
    try:
        return engine.stats()
    except Exception:
        return None


def run_forever(api_server, host: str, port: int, **kwargs) -> Optional[int]:
    """`serve` for command-line use: returns an exit code (0 after a signal, 1 if the engine failed)."""
    try:
        serve(api_server, host, port, **kwargs)
    except EngineStartError:
        return 1
    return 0


__all__ = ["EngineStartError", "bind_socket", "run_forever", "serve"]
