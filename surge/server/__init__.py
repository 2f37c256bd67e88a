"""surge's OpenAI-compatible server: FastAPI app, API keys, Prometheus metrics.

`eSurgeApiServer` is imported lazily, so that importing a server module (e.g. `surge.server.auth`)
does not pull in FastAPI and the engine.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "eSurgeApiServer":
        from surge.server.app import eSurgeApiServer

        return eSurgeApiServer
    raise AttributeError(f"module 'surge.server' has no attribute {name!r}")


__all__ = ["eSurgeApiServer"]
