"""Rotary position embeddings (rotate-half convention, as transformers' Llama family).

In: a ModelArchConfig (theta, head_dim, optional llama3 scaling) and int32
positions [T]. Out: cos and sin tables [T, head_dim] in float32, and
``apply_rope`` rotating q or k [T, heads, head_dim] with them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from surge.models.arch import ModelArchConfig, RopeScaling


def inverse_frequencies(arch: ModelArchConfig) -> np.ndarray:
    """float32[head_dim // 2], computed in float32 like transformers so positions map to the same angles."""
    exponents = np.arange(0, arch.head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(arch.head_dim)
    inv_freq = (np.float32(1.0) / np.power(np.float32(arch.rope_theta), exponents)).astype(np.float32)
    if arch.rope_scaling is not None:
        inv_freq = _llama3_scale(inv_freq, arch.rope_scaling)
    return inv_freq


def _llama3_scale(inv_freq: np.ndarray, scaling: RopeScaling) -> np.ndarray:
    # Long wavelengths (beyond the original context / low_freq_factor) are slowed by `factor`,
    # short ones (below original context / high_freq_factor) kept, and the band in between
    # interpolated linearly in the ratio original_context / wavelength.
    original = scaling.original_max_position_embeddings
    wavelength = np.float32(2 * math.pi) / inv_freq
    long_limit = original / scaling.low_freq_factor
    short_limit = original / scaling.high_freq_factor
    scaled = np.where(wavelength > long_limit, inv_freq / scaling.factor, inv_freq)
    blend = (original / wavelength - scaling.low_freq_factor) / (scaling.high_freq_factor - scaling.low_freq_factor)
    blended = (1 - blend) * scaled / scaling.factor + blend * scaled
    in_band = (wavelength >= short_limit) & (wavelength <= long_limit)
    return np.where(in_band, blended, scaled).astype(np.float32)


def rope_tables(inv_freq, positions, xp=jnp) -> tuple:
    """cos, sin float32[T, head_dim] for the given positions, with jax.numpy or (xp=np) numpy.

    The engine builds them with numpy on the host, as a step input: computed inside the
    step, XLA fuses cos/sin into every layer's rotation and evaluates them again per head
    and per layer (most of the rotation's cost on a CPU).
    """
    angles = xp.asarray(positions).astype(xp.float32)[:, None] * xp.asarray(inv_freq, xp.float32)[None, :]
    angles = xp.concatenate([angles, angles], axis=-1)
    return xp.cos(angles), xp.sin(angles)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate x [T, heads, head_dim] (computed in float32, returned in x's dtype)."""
    half = x.shape[-1] // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)
