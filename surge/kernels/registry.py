"""One registry for the kernel backends.

In: a backend name from ``backend.name`` (auto | reference | cpu | triton | pallas).
Out: a KernelBackend instance. Entries are imported lazily, so a backend whose
package is missing (jax_triton on a CPU machine) costs nothing until named.

``auto`` is resolved here and only here: tpu -> pallas, gpu -> triton, cpu -> cpu,
falling back to ``reference`` with a logged reason. A backend named explicitly
that cannot run fails with the reason.
"""

from __future__ import annotations

import importlib
import logging
from typing import Dict, Optional

import jax

from surge.kernels.base import KernelBackend

logger = logging.getLogger("surge")

# name -> "module:Class"; the name equals conf/backend/<name>.yaml.
_ENTRIES: Dict[str, str] = {
    "reference": "surge.kernels.reference:ReferenceBackend",
    "cpu": "surge.kernels.cpu:CpuBackend",
    "triton": "surge.kernels.triton:TritonBackend",
    "pallas": "surge.kernels.pallas:PallasBackend",
}

_AUTO_BY_PLATFORM = {"tpu": "pallas", "gpu": "triton", "cuda": "triton", "rocm": "triton", "cpu": "cpu"}


class BackendUnavailable(RuntimeError):
    """A named backend cannot run on this machine."""


def names() -> list[str]:
    return list(_ENTRIES)


def _load(name: str) -> type[KernelBackend]:
    if name not in _ENTRIES:
        raise BackendUnavailable(f"unknown kernel backend {name!r}; choose auto or one of {names()}")
    module_name, class_name = _ENTRIES[name].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise BackendUnavailable(f"kernel backend {name!r} cannot be imported: {exc}") from exc
    return getattr(module, class_name)


def unavailable_reason(name: str, config=None) -> Optional[str]:
    try:
        cls = _load(name)
    except BackendUnavailable as exc:
        return str(exc)
    return cls.unavailable_reason(config)


def available() -> Dict[str, Optional[str]]:
    """Every registered backend with None if it can run here, else the reason it cannot."""
    return {name: unavailable_reason(name) for name in _ENTRIES}


def resolve(name: str, config=None) -> str:
    """The concrete backend name `name` stands for on this machine."""
    if name != "auto":
        reason = unavailable_reason(name, config)
        if reason is not None:
            raise BackendUnavailable(f"kernel backend {name!r} is unavailable here: {reason}")
        return name
    platform = jax.default_backend()
    preferred = _AUTO_BY_PLATFORM.get(platform, "reference")
    reason = unavailable_reason(preferred, config)
    if reason is None:
        return preferred
    logger.info("backend=auto: %s is unavailable on %s (%s); using reference", preferred, platform, reason)
    return "reference"


def get_backend(config) -> KernelBackend:
    """Instantiate the backend for a BackendConfig (or a bare name)."""
    name = config if isinstance(config, str) else config.name
    resolved = resolve(name, None if isinstance(config, str) else config)
    return _load(resolved)(None if isinstance(config, str) else config)
