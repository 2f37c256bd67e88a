"""Counts XLA compilations in this process, so tests can assert none happen while serving.

In: JAX's monitoring events. Out: `num_compiles()`, the backend compilations so far.
"""

from __future__ import annotations

import threading

import jax

_lock = threading.Lock()
_count = 0
_installed = False
_EVENT = "/jax/core/compile/backend_compile_duration"


def _on_event(event: str, duration: float, **kwargs) -> None:
    global _count
    if event == _EVENT:
        with _lock:
            _count += 1


def install() -> None:
    global _installed
    with _lock:
        if not _installed:
            jax.monitoring.register_event_duration_secs_listener(_on_event)
            _installed = True


def num_compiles() -> int:
    return _count
