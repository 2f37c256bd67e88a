"""JAX's persistent compilation cache, pointed at surge's cache directory.

In: the engine config's `compilation_cache` switch. Out: compiled step programs
are written to `$SURGE_CACHE/xla` and reused by the next start-up with the same
model, buckets and backend, so a restart does not pay for compilation again.
"""

from __future__ import annotations

import os

import jax

from surge.paths import cache_dir


def enable_compilation_cache() -> str:
    path = os.path.join(cache_dir(), "xla")
    if jax.config.jax_compilation_cache_dir not in (None, path):
        return jax.config.jax_compilation_cache_dir  # the user chose one; keep it
    os.makedirs(path, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
