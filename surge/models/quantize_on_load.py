"""Quantize a float checkpoint's matrices to GGUF Q8_0 as they load (model.quantize=q8_0).

In: any checkpoint that hands out float tensors by Hugging Face name (a safetensors directory).
Out: ``Q8_0Checkpoint``, the same checkpoint plus ``get_quantized(name)``: a 2-D tensor [N, K]
with K a multiple of 32 as Q8_0 blocks, uint8 [N, K / 32, 34] (surge.kernels.quantized), the
form build_model keeps for projections and the embedding when asked to keep weights
quantized; None for anything else (norms, biases, ragged K), which then loads as floats.

Per block of 32 weights: d = max|w| / 127 (stored as float16), q = w * (1 / d) rounded half away
from zero, as int8 — llama.cpp's reference rule (the gguf package's Q8_0 quantizer gives the same
bytes); the weight then reads back as float16(d) * q.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from surge.kernels.quantized import BLOCK

QUANTIZE_TYPES = ("none", "q8_0")


def quantize_q8_0(weight: np.ndarray) -> np.ndarray:
    """float [N, K] (K a multiple of 32) -> uint8 [N, K / 32, 34]: per block float16 d, then 32 int8."""
    if weight.ndim != 2 or weight.shape[1] % BLOCK:
        raise ValueError(f"Q8_0 quantizes [N, K] with K a multiple of {BLOCK}, got shape {weight.shape}")
    rows, k = weight.shape
    blocks = np.asarray(weight, np.float32).reshape(rows, k // BLOCK, BLOCK)
    d = np.abs(blocks).max(axis=-1) / np.float32(127)
    inverse = np.divide(np.float32(1), d, out=np.zeros_like(d), where=d != 0)
    scaled = blocks * inverse[..., None]
    q = np.clip(np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5)), -127, 127).astype(np.int8)
    out = np.empty((rows, k // BLOCK, 2 + BLOCK), np.uint8)
    out[..., :2] = d.astype(np.float16).view(np.uint8).reshape(rows, k // BLOCK, 2)
    out[..., 2:] = q.view(np.uint8)
    return out


class Q8_0Checkpoint:
    """A float checkpoint whose matrices are also handed out as Q8_0 blocks (``get_quantized``)."""

    def __init__(self, base):
        self.base = base

    def names(self):
        return self.base.names()

    def location(self, name: str) -> str:
        return self.base.location(name)

    def shape(self, name: str) -> tuple:
        return self.base.shape(name)

    def get(self, name: str) -> np.ndarray:
        return self.base.get(name)

    def get_quantized(self, name: str) -> Optional[np.ndarray]:
        shape = tuple(self.base.shape(name))
        if len(shape) != 2 or shape[1] % BLOCK:
            return None
        return quantize_q8_0(np.asarray(self.base.get(name), np.float32))
