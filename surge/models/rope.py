"""Rotary position embeddings (rotate-half convention, as transformers' Llama family).

In: a ModelArchConfig (theta, rotary dims, optional llama3 / linear / longrope
scaling, a second base for local layers) and int32 positions [T]. Out:
``rope_inputs``, one (cos, sin) pair of float32[T, rope_dim] tables per RoPE the
layers use (``arch.layer_rope`` picks one), and ``apply_rope`` rotating the first
rope_dim dims of q or k [T, heads, head_dim] with a pair.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from surge.models.arch import LinearRopeScaling, LongRopeScaling, ModelArchConfig, RopeScaling


def inverse_frequencies(arch: ModelArchConfig) -> np.ndarray:
    """float32[rope_dim // 2] of the main RoPE (longrope: its short factors), computed in float32 like
    transformers so positions map to the same angles."""
    scaling = arch.rope_scaling
    if isinstance(scaling, LongRopeScaling):
        return _base_inverse_frequencies(arch.rope_theta, arch.rope_dim, scaling.short_factor)
    inv_freq = _base_inverse_frequencies(arch.rope_theta, arch.rope_dim)
    if isinstance(scaling, RopeScaling):
        inv_freq = _llama3_scale(inv_freq, scaling)
    elif isinstance(scaling, LinearRopeScaling):
        inv_freq = (inv_freq / np.float32(scaling.factor)).astype(np.float32)
    return inv_freq


def _base_inverse_frequencies(theta: float, dim: int, divisors=None) -> np.ndarray:
    exponents = np.arange(0, dim, 2, dtype=np.int64).astype(np.float32) / np.float32(dim)
    base = np.power(np.float32(theta), exponents)
    if divisors is not None:
        if len(divisors) != dim // 2:
            raise ValueError(f"longrope has {len(divisors)} factors for {dim // 2} rotary frequencies")
        base = np.asarray(divisors, np.float32) * base
    return (np.float32(1.0) / base).astype(np.float32)


def rope_inputs(arch: ModelArchConfig, positions, xp=jnp) -> tuple:
    """((cos, sin), ...) float32[T, rope_dim]: the main RoPE, then (Gemma 3) the local layers' one."""
    scaling = arch.rope_scaling
    if isinstance(scaling, LongRopeScaling):
        main = _long_rope_tables(arch, scaling, positions, xp)
    else:
        main = rope_tables(inverse_frequencies(arch), positions, xp)
    if arch.local_rope_theta is None:
        return (main,)
    return main, rope_tables(_base_inverse_frequencies(arch.local_rope_theta, arch.rope_dim), positions, xp)


def host_rope_inputs_fn(arch: ModelArchConfig):
    """positions (numpy int32[T]) -> ``rope_inputs(arch, positions, xp=np)``, with the frequencies (which
    depend on the arch only) computed once instead of on every call: the runner calls it every step."""
    if isinstance(arch.rope_scaling, LongRopeScaling):
        return functools.partial(rope_inputs, arch, xp=np)  # its frequencies are chosen per token
    frequencies = [inverse_frequencies(arch)]
    if arch.local_rope_theta is not None:
        frequencies.append(_base_inverse_frequencies(arch.local_rope_theta, arch.rope_dim))

    def host_rope_inputs(positions) -> tuple:
        return tuple(rope_tables(inv_freq, positions, np) for inv_freq in frequencies)

    return host_rope_inputs


def _long_rope_tables(arch: ModelArchConfig, scaling: LongRopeScaling, positions, xp) -> tuple:
    # Per token: the short factors below the original context, the long ones from there on (transformers
    # switches for a whole forward pass once it runs past the original context; per token, a request's
    # earlier keys keep the rotation they were cached with).
    short = inverse_frequencies(arch)
    long = _base_inverse_frequencies(arch.rope_theta, arch.rope_dim, scaling.long_factor)
    positions = xp.asarray(positions)
    is_long = (positions >= scaling.original_max_position_embeddings)[:, None]
    inv_freq = xp.where(is_long, xp.asarray(long)[None, :], xp.asarray(short)[None, :])
    angles = positions.astype(xp.float32)[:, None] * inv_freq.astype(xp.float32)
    angles = xp.concatenate([angles, angles], axis=-1)
    factor = xp.float32(scaling.attention_factor)
    return xp.cos(angles) * factor, xp.sin(angles) * factor


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
    """Rotate the first cos.shape[-1] dims of x [T, heads, head_dim] (in float32, returned in x's dtype)."""
    rope_dim = cos.shape[-1]
    if rope_dim < x.shape[-1]:
        return jnp.concatenate([apply_rope(x[..., :rope_dim], cos, sin), x[..., rope_dim:]], axis=-1)
    half = rope_dim // 2
    x32 = x.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * cos[:, None, :] + rotated * sin[:, None, :]).astype(x.dtype)


def apply_rope_interleaved(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """Rotate adjacent pairs (x[2i], x[2i+1]) by frequency i (Llama 4's complex form); same tables."""
    half = cos.shape[-1] // 2
    x32 = x.astype(jnp.float32).reshape(*x.shape[:-1], half, 2)
    c, s = cos[:, None, :half], sin[:, None, :half]
    even, odd = x32[..., 0], x32[..., 1]
    return jnp.stack([even * c - odd * s, even * s + odd * c], axis=-1).reshape(x.shape).astype(x.dtype)
