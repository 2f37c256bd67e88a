"""A fast CPU matmul for the few-token steps of decoding: surge's C++ kernel through XLA FFI.

In: x [..., K] (computed in float32; other float dtypes are cast) and a weight w, float32
or bfloat16, stored [K, N] as surge stores projections — or [N, K] with
``transpose_w=True``, so a tied lm_head reads the [vocab, hidden] embedding table in
place instead of a transposed copy.
Out: y [..., N] float32 = x @ w (x @ w.T when transposed), every product summed in
float32 (bfloat16 weights are widened in registers, never copied whole).

``pack`` rewrites a weight once, at load, into panels of 48 columns stored one after
another (a 1-D array; see csrc/matmul/panels.h; N a multiple of 16, so every instruction
set's vectors divide a panel): a thread then streams one contiguous run
of memory, and the kernel needs no copy of the weight per call. ``matmul`` reads a 1-D
weight as packed and takes N from ``n``.

A GGUF-quantized weight (surge.kernels.quantized: uint8 [N, K / B, block_bytes], B = 32 or the
K-quants' 256, rows = outputs, whichever orientation the caller names) goes to
``surge_cpu_quant_matmul``, which quantizes x's rows per block of 32 to int8 and sums int32
block dots under the weights' (sub-)block scales: nothing is dequantized.

One FFI target, ``surge_cpu_matmul`` in ``surge._C``, takes its shapes from the buffers:
any number of rows works without recompiling anything on the kernel's side, and the call
is usable inside ``jit``. When the target is missing (surge._C not built), the
default backend is not cpu, or w's dtype is neither float32 nor bfloat16, ``matmul``
falls back to ``jnp.dot(x, w, preferred_element_type=float32)`` and logs the reason once.
The kernel runs on the CPU kernels' one persistent thread pool (surge.kernels.native.set_num_threads
sets its size; by
default every core), whose helpers spin briefly between calls instead of sleeping, since
waking a sleeping thread takes about as long as a one-token matmul.
"""

from __future__ import annotations

import logging
import math
from typing import Optional

import jax
import jax.numpy as jnp

from surge.kernels import native, quantized

TARGET = "surge_cpu_matmul"
QUANT_TARGET = "surge_cpu_quant_matmul"
_WEIGHT_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

logger = logging.getLogger("surge")


_TARGET_REASON = native.unavailable_reason()
_QUANT_REASON = None if _TARGET_REASON is not None or QUANT_TARGET in native.TARGETS else (
    "surge._C is out of date (no surge_cpu_quant_matmul among its ffi_targets); rebuild it")
_logged_reasons: set = set()


def unavailable_reason() -> Optional[str]:
    """None when ``matmul`` runs the C++ kernel; otherwise why it falls back to jnp.dot."""
    if _TARGET_REASON is not None:
        return _TARGET_REASON
    platform = jax.default_backend()
    if platform != "cpu":
        return f"the kernel runs on jax's cpu platform, but the default backend is {platform}"
    return None


def available() -> bool:
    return unavailable_reason() is None


PANEL_COLUMNS = 48
PANEL_MULTIPLE = 16


def can_pack(w: jax.Array, *, transpose_w: bool = False) -> bool:
    """Whether ``pack`` takes this weight: 2-D float32/bfloat16 with N a multiple of 16."""
    if w.ndim != 2 or jnp.dtype(w.dtype) not in _WEIGHT_DTYPES:
        return False
    return (w.shape[0] if transpose_w else w.shape[1]) % PANEL_MULTIPLE == 0


def pack(w: jax.Array, *, transpose_w: bool = False) -> jax.Array:
    """w [K, N] (or [N, K] with transpose_w) -> 1-D panels: each run of 48 columns as [K, width]."""
    if not can_pack(w, transpose_w=transpose_w):
        raise ValueError(f"cpu matmul: cannot pack a weight of shape {w.shape} and dtype {w.dtype} "
                         "(2-D float32/bfloat16 with N a multiple of 16 only)")
    kn = w.T if transpose_w else w
    k, n = kn.shape
    full = n - n % PANEL_COLUMNS
    parts = [kn[:, :full].reshape(k, full // PANEL_COLUMNS, PANEL_COLUMNS).transpose(1, 0, 2).reshape(-1)]
    if full < n:
        parts.append(kn[:, full:].reshape(-1))
    return jnp.concatenate(parts) if len(parts) > 1 else parts[0]


def matmul(x: jax.Array, w: jax.Array, *, transpose_w: bool = False, n: Optional[int] = None) -> jax.Array:
    """y [..., N] float32 = x @ w for w [K, N], or x @ w.T for w [N, K] with transpose_w.

    A 1-D w is a packed weight (``pack``): N is ``n``, or w.size // K when not given. A
    quantized w (surge.kernels.quantized) holds its output rows: y = x @ rows.T either way.
    """
    if quantized.is_quantized(w):
        return _matmul_quantized(x, w)
    if w.ndim == 1:
        return _matmul_packed(x, w, n)
    if w.ndim != 2:
        raise ValueError(f"cpu matmul: w must be 2-D ({'[N, K]' if transpose_w else '[K, N]'}), got {w.shape}")
    k, n = (w.shape[1], w.shape[0]) if transpose_w else w.shape
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"cpu matmul: x must be [..., {k}] to match w {w.shape} "
                         f"(transpose_w={transpose_w}), got {x.shape}")
    reason = unavailable_reason()
    if reason is None and jnp.dtype(w.dtype) not in _WEIGHT_DTYPES:
        reason = f"w has dtype {w.dtype}; the kernel reads float32 or bfloat16"
    if reason is not None:
        _log_fallback(reason)
        return jnp.dot(x, w.T if transpose_w else w, preferred_element_type=jnp.float32)
    return _call_kernel(x, w, k, n, transpose_w=bool(transpose_w), panels=False)


def _matmul_packed(x: jax.Array, w: jax.Array, n: Optional[int]) -> jax.Array:
    k = x.shape[-1] if x.ndim >= 1 else 0
    if k == 0 or w.size % k or (n is not None and n * k != w.size):
        raise ValueError(f"cpu matmul: packed w of {w.size} elements does not hold [K={k}, N={n}] "
                         f"for x of shape {x.shape}")
    n = n if n is not None else w.size // k
    if n % PANEL_MULTIPLE:
        raise ValueError(f"cpu matmul: a packed w holds N a multiple of 16; w of {w.size} elements with "
                         f"x of shape {x.shape} gives N = {n}")
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cpu matmul: a packed weight needs the C++ kernel, which is unavailable: {reason}")
    return _call_kernel(x, w, k, n, transpose_w=False, panels=True)


def _matmul_quantized(x: jax.Array, w: jax.Array) -> jax.Array:
    k, n = quantized.in_features(w), int(w.shape[0])
    if x.ndim < 1 or x.shape[-1] != k:
        raise ValueError(f"cpu matmul: x must be [..., {k}] to match the {quantized.quant_type(w)} weight "
                         f"{tuple(w.shape)} (K = {w.shape[1]} blocks of {k // int(w.shape[1])}), got {x.shape}")
    reason = unavailable_reason()
    if reason is None and _QUANT_REASON is not None:
        reason = _QUANT_REASON
    if reason is not None:
        _log_fallback(reason)
        return jnp.dot(x.astype(jnp.float32), quantized.dequantize(w).T, preferred_element_type=jnp.float32)
    rows = x.reshape(math.prod(x.shape[:-1]), k).astype(jnp.float32)
    call = jax.ffi.ffi_call(QUANT_TARGET, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                            vmap_method="sequential")
    return call(rows, w).reshape(*x.shape[:-1], n)


GROUPED_TARGET = "surge_cpu_grouped_matmul"


def can_pack_experts(w: jax.Array) -> bool:
    """Whether ``pack_experts`` takes this stack: [E, K, N] float32/bfloat16 with N a multiple of 16."""
    return w.ndim == 3 and jnp.dtype(w.dtype) in _WEIGHT_DTYPES and w.shape[2] % PANEL_MULTIPLE == 0


def pack_experts(w: jax.Array) -> jax.Array:
    """Experts' weights [E, K, N] -> [E, K * N], each expert's [K, N] packed into panels (``pack``)."""
    if not can_pack_experts(w):
        raise ValueError(f"cpu matmul: cannot pack an expert stack of shape {w.shape} and dtype {w.dtype} "
                         "([E, K, N] float32/bfloat16 with N a multiple of 16 only)")
    return jnp.stack([pack(w[e]) for e in range(w.shape[0])])


def grouped_matmul(x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> Optional[jax.Array]:
    """y [M, N] float32: rows of x [M, K] grouped by expert (group g = the next group_sizes[g] rows) times
    that expert's weight, w [E, K, N] or packed [E, K * N] (``pack_experts``); rows past the groups: zeros.

    Each expert's rows go through the C++ matmul against that expert's weights only. None when the
    kernel cannot run here (the caller then uses its own loop), or for a quantized stack.
    """
    if unavailable_reason() is not None or jnp.dtype(w.dtype) not in _WEIGHT_DTYPES or w.ndim not in (2, 3):
        return None
    num_rows, k = x.shape
    if w.ndim == 3:
        if w.shape[1] != k:
            raise ValueError(f"cpu grouped matmul: w {w.shape} must be [E, K={k}, N] for x of shape {x.shape}")
        n = w.shape[2]
    else:
        if w.shape[1] % k:
            raise ValueError(f"cpu grouped matmul: packed w {w.shape} does not hold [K={k}, N] per expert")
        n = w.shape[1] // k
    call = jax.ffi.ffi_call(GROUPED_TARGET, jax.ShapeDtypeStruct((num_rows, n), jnp.float32),
                            vmap_method="sequential")
    return call(x.astype(jnp.float32), w, group_sizes.astype(jnp.int32), panels=w.ndim == 2)


def _call_kernel(x: jax.Array, w: jax.Array, k: int, n: int, *, transpose_w: bool, panels: bool) -> jax.Array:
    """The FFI call on x's rows flattened to [M, K] float32; y comes back shaped [..., N]."""
    rows = x.reshape(math.prod(x.shape[:-1]), k).astype(jnp.float32)
    call = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((rows.shape[0], n), jnp.float32),
                            vmap_method="sequential")
    return call(rows, w, transpose_w=transpose_w, panels=panels).reshape(*x.shape[:-1], n)


def _log_fallback(reason: str) -> None:
    if reason not in _logged_reasons:
        _logged_reasons.add(reason)
        logger.warning("surge cpu matmul falls back to jnp.dot: %s", reason)
