"""Sampling: per-request parameters, their per-step host tensors, and the on-device sampler.

``SamplingParams`` is cheap to import; the JAX parts (``SamplingTensors``,
``build_sampling_tensors``, ``sample``) load on first access so that
``import surge.sampling`` does not initialise JAX. ``TokenLogprobs`` is the
one shape of log-probs from the sampler to the server (``logprobs.py``).
"""

from __future__ import annotations

import importlib

from surge.sampling.params import SamplingParams

_LAZY = {
    "SamplingRow": "surge.sampling.tensors",
    "SamplingTensors": "surge.sampling.tensors",
    "build_sampling_tensors": "surge.sampling.tensors",
    "SamplerOutput": "surge.sampling.sampler",
    "sample": "surge.sampling.sampler",
    "process_logits": "surge.sampling.sampler",
    "Logprob": "surge.sampling.logprobs",
    "TokenLogprobs": "surge.sampling.logprobs",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'surge.sampling' has no attribute {name!r}")


__all__ = ["SamplingParams", *sorted(_LAZY)]
