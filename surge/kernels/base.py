"""The contract of a kernel backend: the ops layer every model runs on.

In: per layer, the new tokens' q [T, H, hd], k and v [T, KV, hd], that layer's KV
cache (a tuple ``(k_pages, v_pages)`` in the backend's own layout), the shared
AttentionMetadata and the layer's AttentionSpec (built once by the model). Out:
attention output [T, H, hd] and the updated cache.

A backend also supplies the model's projections (`matmul`): jnp.dot by default,
a native kernel where XLA leaves speed on the table (the cpu backend's GEMM), and
the mixture-of-experts grouped projection (`grouped_matmul`: jax.lax.ragged_dot).

A backend writes the new K/V into the pages named by ``slot_mapping`` first, then
attends: token t of sequence s sees the keys of s at positions <= positions[t]
(and > positions[t] - sliding_window when a window is set; and, with a chunk_size,
only keys in its own chunk: >= positions[t] // chunk_size * chunk_size), causal and GQA
(query head h reads KV head h // (H // KV)). Scores are ``q.k * scale``, soft-capped
as ``cap * tanh(s / cap)`` when ``logit_soft_cap`` is set, softmaxed in float32.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import ClassVar, Optional, Tuple

import jax
import jax.numpy as jnp

from surge.kernels import quantized
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.registry import NoOptions

KVCache = Tuple[jax.Array, jax.Array]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class AttentionSpec:
    """What one layer's attention computes, besides its inputs: static, hashable, checked once.

    A model builds one per layer; every backend reads it the same way. Registered as a static
    pytree (no leaves), so it may be passed into a jitted function as an argument: equal specs
    reuse one compilation.
    """

    # Multiplier of q.k (usually head_dim ** -0.5).
    scale: float
    # A token sees the keys of its last this-many positions, its own included; None = full causal attention.
    sliding_window: Optional[int] = None
    # Scores become cap * tanh(score / cap) before the softmax (Gemma 2); None = no cap.
    logit_soft_cap: Optional[float] = None
    # Chunked local attention (Llama 4): a token sees only keys of its own chunk of this many positions.
    chunk_size: Optional[int] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", float(self.scale))
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"AttentionSpec.scale={self.scale} must be a positive finite number")
        for field, value in (("sliding_window", self.sliding_window), ("chunk_size", self.chunk_size)):
            if value is not None and (isinstance(value, bool) or int(value) != value or value <= 0):
                raise ValueError(f"AttentionSpec.{field}={value!r} must be a positive integer or None")
            if value is not None:
                object.__setattr__(self, field, int(value))
        if self.logit_soft_cap is not None:
            if not (math.isfinite(self.logit_soft_cap) and self.logit_soft_cap > 0):
                raise ValueError(f"AttentionSpec.logit_soft_cap={self.logit_soft_cap} must be positive or None")
            object.__setattr__(self, "logit_soft_cap", float(self.logit_soft_cap))


class KernelBackend(abc.ABC):
    """Base class; subclasses implement kv_cache_shape and attention (registry.register_backend names them)."""

    name: ClassVar[str] = ""  # set by registry.register_backend, as is options_type
    options_type: ClassVar[type] = NoOptions
    # Whether `matmul` multiplies GGUF-quantized weights (surge.kernels.quantized) in their quantized form.
    # model.dtype=auto keeps a GGUF file's quantization only on such a backend; on the others (whose
    # `matmul` dequantizes the blocks at every use) auto loads the platform's float dtype instead.
    multiplies_quantized: ClassVar[bool] = False

    def __init__(self, options=None) -> None:
        """`options`: an instance of the backend's options dataclass (default: its defaults)."""
        options = self.options_type() if options is None else options
        if not isinstance(options, self.options_type):
            raise TypeError(f"{type(self).__name__} takes {self.options_type.__name__}, not {type(options).__name__}")
        self.options = options

    @classmethod
    def unavailable_reason(cls, options=None) -> Optional[str]:
        """None when the backend can run here (with these options, default: its defaults), else why not."""
        return None

    def matmul(self, x: jax.Array, w: jax.Array, *, transpose_w: bool = False, out_dtype=None) -> jax.Array:
        """x @ w (x @ w.T with transpose_w), accumulated in float32, returned in out_dtype (default x's).

        A GGUF-quantized w (surge.kernels.quantized, rows = outputs) is dequantized here and
        multiplied as x @ rows.T; backends with a quantized kernel override this.
        """
        if quantized.is_quantized(w):
            w, transpose_w = quantized.dequantize(w).astype(x.dtype), True
        dims = (((x.ndim - 1,), (1 if transpose_w else 0,)), ((), ()))
        y = jax.lax.dot_general(x, w, dims, preferred_element_type=jnp.float32)
        return y.astype(out_dtype or x.dtype)

    def grouped_matmul(self, x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """Rows of x [M, in] grouped by expert (group g = the next group_sizes[g] rows) times w[g] [in, out].

        The mixture-of-experts projection: each row meets only its own expert's weights
        (jax.lax.ragged_dot; rows past sum(group_sizes) come back as zeros). Float32
        accumulation, returned in x's dtype.
        """
        y = jax.lax.ragged_dot(x.astype(w.dtype), w, group_sizes, preferred_element_type=jnp.float32)
        return y.astype(x.dtype)

    def silu_and_mul(self, gate_up: jax.Array) -> jax.Array:
        """[..., 2 I] (gate, then up) -> [..., I] silu(gate) * up: a gated MLP's activation."""
        gate, up = jnp.split(gate_up, 2, axis=-1)
        return jax.nn.silu(gate) * up

    def compute_dtype(self, weight_dtype):
        """The dtype of the activations between layers for weights of `weight_dtype` (default: the same)."""
        return jnp.dtype(weight_dtype)

    def prepare_model(self, model) -> None:
        """Rewrites the model's projection weights, once at load, into the layout `matmul` reads best.

        Default: unchanged. Called before the engine sizes its cache, so the weights'
        memory is counted as they will be held.
        """

    @abc.abstractmethod
    def kv_cache_shape(self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int) -> tuple:
        """Shape of each of a layer's K and V page arrays."""

    @abc.abstractmethod
    def attention(self, q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: KVCache, md: AttentionMetadata,
                  spec: AttentionSpec) -> Tuple[jax.Array, KVCache]:
        """Write k/v at md.slot_mapping, then attend as `spec` says; returns (out [T, H, hd], updated cache)."""
