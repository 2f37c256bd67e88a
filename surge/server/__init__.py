"""surge's OpenAI-compatible server: FastAPI app, API keys, Prometheus metrics, console monitor.

`eSurgeApiServer` is imported lazily, so that `surge.server.monitoring` (which
`Engine.start_monitoring` uses) does not pull in FastAPI.
"""

from __future__ import annotations


def __getattr__(name: str):
    if name == "eSurgeApiServer":
        from surge.server.app import eSurgeApiServer

        return eSurgeApiServer
    raise AttributeError(f"module 'surge.server' has no attribute {name!r}")


__all__ = ["eSurgeApiServer"]
