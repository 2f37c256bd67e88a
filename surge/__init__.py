"""surge: an LLM inference and serving engine on JAX.

Public names are imported lazily so that `import surge` stays cheap (no JAX
initialisation until an engine is built).
"""

from __future__ import annotations

import importlib

from surge.hf_logging import silence_torch_advice

__version__ = "0.1.0"

silence_torch_advice()  # before anything imports transformers (surge needs its tokenizers, not PyTorch)

_LAZY = {
    "Engine": "surge.engine.engine",
    "AsyncEngine": "surge.engine.async_engine",
    "SamplingParams": "surge.sampling.params",
    "RequestOutput": "surge.engine.outputs",
    "CompletionOutput": "surge.engine.outputs",
    "EngineStats": "surge.engine.stats",
    "eSurge": "surge.engine.compat",
    "vSurge": "surge.engine.compat",
    "ReturnSample": "surge.engine.compat",
    "eSurgeApiServer": "surge.server.app",
    "make_config": "surge.config",
    "SurgeConfig": "surge.config",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'surge' has no attribute {name!r}")


__all__ = sorted(_LAZY)
