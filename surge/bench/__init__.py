"""surge-bench modes: offline throughput, serving load, attention kernels, prefix caching.

In: a SurgeConfig whose `bench.mode` names the mode. Out: (result dict, summary
text), from the mode module's `run_<mode>(cfg)` and `format_<mode>(result)`.
"""

from __future__ import annotations

import importlib

from surge.config import SurgeConfig

MODES = ("offline", "serve", "attention", "prefix")


def run_benchmark(cfg: SurgeConfig) -> tuple[dict, str]:
    mode = cfg.bench.mode
    if mode not in MODES:
        raise ValueError(f"unknown bench.mode {mode!r}; choose one of {MODES}")
    module = importlib.import_module(f"surge.bench.{mode}")
    result = getattr(module, f"run_{mode}")(cfg)
    return result, getattr(module, f"format_{mode}")(result)
