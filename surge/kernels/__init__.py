"""Kernel backends (the ops layer: projections, activation, attention) behind one registry (see registry.py)."""

from surge.kernels.registry import BackendUnavailable, available, get_backend, resolve

__all__ = ["BackendUnavailable", "available", "get_backend", "resolve"]
