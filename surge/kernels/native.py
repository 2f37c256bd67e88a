"""surge._C, loaded once: every FFI target registered with jax, and the kernels' one thread pool.

At import this module loads the native module, registers every XLA FFI target it exports
(``surge._C.ffi_targets()``: paged attention, matmul, grouped matmul, quantized matmul,
SiLU-and-multiply) with jax's cpu platform, once, and records why not when it cannot
(``unavailable_reason``). Every user of a CPU kernel (surge.kernels.cpu, surge.kernels.cpu_matmul)
imports this module instead of probing surge._C itself.

The kernels share one persistent thread pool: ``set_num_threads`` sizes it (the calling thread
included; 0 = every core) and ``get_num_threads`` reads the size in force.
"""

from __future__ import annotations

import types
from typing import FrozenSet, Optional, Tuple

import jax


def _load() -> Tuple[Optional[types.ModuleType], Optional[str], FrozenSet[str]]:
    try:
        from surge import _C
    except ImportError as exc:
        return None, f"the native module surge._C is not built ({exc}); run `pip install -e .`", frozenset()
    if not hasattr(_C, "ffi_targets"):
        return None, "surge._C is out of date (no ffi_targets); rebuild it with `pip install -e .`", frozenset()
    targets = _C.ffi_targets()
    for name, capsule in targets.items():
        jax.ffi.register_ffi_target(name, capsule, platform="cpu")
    return _C, None, frozenset(targets)


_C, _REASON, TARGETS = _load()


def unavailable_reason() -> Optional[str]:
    """None when surge._C is loaded and its targets registered; otherwise why not."""
    return _REASON


def module() -> types.ModuleType:
    """surge._C; RuntimeError saying why when it cannot be loaded."""
    if _C is None:
        raise RuntimeError(_REASON)
    return _C


def set_num_threads(num_threads: int) -> None:
    """Threads of the CPU kernels' pool (process-wide), the calling thread included; 0 = every core.

    ValueError for a negative count.
    """
    module().set_num_threads(int(num_threads))


def get_num_threads() -> int:
    """Threads the CPU kernels' pool uses now (the core count when set to 0)."""
    return module().get_num_threads()
