"""One Flax NNX decoder for every supported family (Llama, Qwen2/3, Mistral, Gemma 2/3, Phi-3, and the
mixture-of-experts Mixtral, Qwen2-MoE, Qwen3-MoE, and Llama 4 text), its differences read from the
ModelArchConfig.

In: token ids int32[T] of a ragged batch, its AttentionMetadata, one
``(k_pages, v_pages)`` cache per layer, the rows whose logits are wanted
int32[S], and the kernel backend. Out: float32 logits [S, vocab] and the
per-layer caches with this step's K/V written.

Projections go through the backend's `matmul` (jnp.dot, or a native GEMM on CPU).
Weights are stored as the matmul consumes them: [in, out], q/k/v fused into one
projection and gate/up into another, one set of arrays per layer, and the layers
run as a plain Python loop (unrolled under jit). Activations take the backend's
compute dtype (the weights' dtype, or float32 on the cpu backend); RMSNorm statistics
and the attention softmax are computed in float32; logits are returned in float32.
A MoE layer's MLP is surge.models.moe.MoEBlock; everything else a family needs
(GeGLU, (1 + w) norms, sandwich norms, embedding scale, soft caps, per-layer window,
chunk and RoPE, NoPE layers and their query temperature) is a branch on a static
arch field, so it costs nothing when unused.

Under tensor parallelism (surge.parallel.tensor_parallel) each device runs this same code inside
``shard_map`` on its own shard: the layers' head counts are then the shard's, ``tp_axis`` names the
mesh axis, and three collectives (surge.parallel.collectives) join the shards: a psum after o_proj
and after down_proj, a psum of the vocabulary-split embedding lookup, and an all-gather of the
vocabulary-split logits. With ``tp_axis`` None (one device) they are no-ops.
"""

from __future__ import annotations

from typing import Callable, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from surge.kernels import quantized
from surge.kernels.base import AttentionSpec, KernelBackend, KVCache
from surge.kernels.metadata import AttentionMetadata
from surge.models.arch import ModelArchConfig
from surge.models.moe import MoEBlock, gated_activation
from surge.models.rope import apply_rope, apply_rope_interleaved, host_rope_inputs_fn, rope_inputs
from surge.parallel.collectives import embed_lookup, gather_vocab, reduce_partial

_INIT_STD = 0.02


def _normal(rngs: nnx.Rngs, shape: tuple, dtype) -> nnx.Param:
    return nnx.Param((jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype))


class RMSNorm(nnx.Module):
    """x / rms(x) * weight; with unit_offset (Gemma) * (1 + weight), multiplied in float32."""

    def __init__(self, size: int, eps: float, *, dtype, unit_offset: bool = False):
        self.weight = nnx.Param(jnp.ones((size,), dtype))
        self.eps = eps
        self.unit_offset = unit_offset

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        if self.unit_offset:
            return (normed * (1.0 + self.weight[...].astype(jnp.float32))).astype(x.dtype)
        return normed.astype(x.dtype) * self.weight[...]


def _norm(arch: ModelArchConfig, size: int, dtype) -> RMSNorm:
    return RMSNorm(size, arch.rms_norm_eps, dtype=dtype, unit_offset=arch.norm_unit_offset)


def soft_cap(x: jax.Array, cap: Optional[float]) -> jax.Array:
    return x if cap is None else cap * jnp.tanh(x / cap)


def _weightless_rms_norm(x: jax.Array, eps: float) -> jax.Array:
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)).astype(x.dtype)


class DecoderLayer(nnx.Module):
    def __init__(self, arch: ModelArchConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        hidden, head_dim = arch.hidden_size, arch.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, head_dim
        self.rope_index = arch.layer_rope(layer)
        self.uses_rope = arch.layer_uses_rope(layer)
        self.rope_interleaved = arch.rope_interleaved
        # Llama 4: weightless q/k norms on RoPE layers, a position-dependent query temperature on NoPE layers.
        self.qk_l2_norm_eps = arch.rms_norm_eps if arch.qk_l2_norm and self.uses_rope else None
        self.attn_temperature = arch.attn_temperature if not self.uses_rope else None
        self.attention_spec = AttentionSpec(
            scale=arch.attention_scale if arch.attention_scale is not None else head_dim ** -0.5,
            sliding_window=arch.layer_window(layer), logit_soft_cap=arch.attn_logit_soft_cap,
            chunk_size=arch.layer_chunk(layer))
        self.hidden_act = arch.hidden_act
        # The mesh axis this layer's projections are split over (a shard's layer inside shard_map); None = whole.
        self.tp_axis: Optional[str] = None
        self.input_norm = _norm(arch, hidden, dtype)
        self.qkv_proj = _normal(rngs, (hidden, arch.qkv_size), dtype)
        self.qkv_bias = nnx.Param(jnp.zeros((arch.qkv_size,), dtype)) if arch.qkv_bias else None
        self.q_norm = _norm(arch, head_dim, dtype) if arch.qk_norm else None
        self.k_norm = _norm(arch, head_dim, dtype) if arch.qk_norm else None
        self.o_proj = _normal(rngs, (arch.num_heads * head_dim, hidden), dtype)
        self.o_bias = nnx.Param(jnp.zeros((hidden,), dtype)) if arch.o_bias else None
        # Sandwich norms (Gemma 2/3): on the attention output and on the MLP output, before each residual.
        self.attn_out_norm = _norm(arch, hidden, dtype) if arch.sandwich_norms else None
        self.mlp_out_norm = _norm(arch, hidden, dtype) if arch.sandwich_norms else None
        # The norm before the MLP (HF's post_attention_layernorm, or pre_feedforward_layernorm with sandwich norms).
        self.post_attention_norm = _norm(arch, hidden, dtype)
        self.moe = MoEBlock(arch, dtype=dtype, rngs=rngs) if arch.layer_is_moe(layer) else None
        dense = self.moe is None
        self.gate_up_proj = _normal(rngs, (hidden, 2 * arch.intermediate_size), dtype) if dense else None
        self.down_proj = _normal(rngs, (arch.intermediate_size, hidden), dtype) if dense else None

    def __call__(self, x: jax.Array, rope: tuple, md: AttentionMetadata,
                 kv_cache: KVCache, backend: KernelBackend) -> Tuple[jax.Array, KVCache]:
        num_tokens = x.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv = backend.matmul(self.input_norm(x), self.qkv_proj[...])
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias[...]
        q = qkv[:, :q_size].reshape(num_tokens, self.num_heads, self.head_dim)
        k = qkv[:, q_size:q_size + kv_size].reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = qkv[:, q_size + kv_size:].reshape(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = self._position(q, k, rope, md.positions)
        attn, kv_cache = backend.attention(q, k, v, kv_cache, md, self.attention_spec)
        out = reduce_partial(backend.matmul(attn.reshape(num_tokens, q_size), self.o_proj[...]), self.tp_axis)
        if self.o_bias is not None:
            out = out + self.o_bias[...]
        if self.attn_out_norm is not None:
            out = self.attn_out_norm(out)
        x = x + out
        h = self.post_attention_norm(x)
        if self.moe is not None:
            out = self.moe(h, backend)
        else:
            gate_up = backend.matmul(h, self.gate_up_proj[...])
            out = backend.matmul(gated_activation(gate_up, self.hidden_act, backend), self.down_proj[...])
            out = reduce_partial(out, self.tp_axis)
        if self.mlp_out_norm is not None:
            out = self.mlp_out_norm(out)
        return x + out, kv_cache


    def _position(self, q: jax.Array, k: jax.Array, rope: tuple, positions: jax.Array) -> Tuple[jax.Array, jax.Array]:
        """q/k norms, RoPE (or none), then Llama 4's weightless norms or its NoPE query temperature."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.uses_rope:
            cos, sin = rope[self.rope_index]
            rotate = apply_rope_interleaved if self.rope_interleaved else apply_rope
            q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if self.qk_l2_norm_eps is not None:
            q, k = _weightless_rms_norm(q, self.qk_l2_norm_eps), _weightless_rms_norm(k, self.qk_l2_norm_eps)
        if self.attn_temperature is not None:
            floor_scale, attn_scale = self.attn_temperature
            temp = jnp.log1p(jnp.floor((positions.astype(jnp.float32) + 1.0) / floor_scale)) * attn_scale + 1.0
            q = (q.astype(jnp.float32) * temp[:, None, None]).astype(q.dtype)
        return q, k


class CausalLM(nnx.Module):
    def __init__(self, arch: ModelArchConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.arch = arch
        self.dtype = jnp.dtype(dtype)
        # The mesh axis the embedding and lm_head are split over by vocabulary (a shard's model); None = whole.
        self.tp_axis: Optional[str] = None
        self.embed_tokens = _normal(rngs, (arch.vocab_size, arch.hidden_size), dtype)
        self.layers = nnx.List([DecoderLayer(arch, i, dtype=dtype, rngs=rngs) for i in range(arch.num_layers)])
        self.norm = _norm(arch, arch.hidden_size, dtype)
        # [hidden, vocab]; tied models read the embedding table instead.
        self.lm_head: Optional[nnx.Param] = (
            None if arch.tie_word_embeddings else _normal(rngs, (arch.hidden_size, arch.vocab_size), dtype))

    def position_inputs_fn(self) -> Callable[[np.ndarray], tuple]:
        """The model's hook for its position inputs: positions int32[T] (numpy, on the host) -> the pytree that
        `hidden_states` takes as `position_inputs`. Here one (cos, sin) float32[T, rope_dim] pair per RoPE
        (surge.models.rope.rope_inputs); the runner calls it every step without knowing what it builds, so a
        model without RoPE returns what it needs (or ()) and the runner does not change. The callable holds the
        arch only, not the weights."""
        return host_rope_inputs_fn(self.arch)

    def __call__(self, input_ids: jax.Array, md: AttentionMetadata, kv_caches: List[KVCache],
                 logits_indices: jax.Array, backend: KernelBackend,
                 position_inputs: Optional[tuple] = None) -> Tuple[jax.Array, List[KVCache]]:
        """``position_inputs``: what `position_inputs_fn()` builds on the host; computed here when None."""
        x, new_caches = self.hidden_states(input_ids, md, kv_caches, backend, position_inputs)
        return self.logits(x[logits_indices], backend), new_caches

    def hidden_states(self, input_ids: jax.Array, md: AttentionMetadata, kv_caches: List[KVCache],
                      backend: KernelBackend,
                      position_inputs: Optional[tuple] = None) -> Tuple[jax.Array, List[KVCache]]:
        """The last layer's output [T, hidden] for every token (before the final norm), and the caches."""
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"kv_caches has {len(kv_caches)} entries; the model has {len(self.layers)} layers")
        table = self.embed_tokens[...]
        take = quantized.take_rows if quantized.is_quantized(table) else (lambda t, ids: t[ids])
        x = embed_lookup(table, input_ids, self.tp_axis, take)
        if self.arch.embed_scale is not None:  # in the weights' dtype, as transformers rounds it
            x = x * jnp.asarray(self.arch.embed_scale, x.dtype)
        x = x.astype(backend.compute_dtype(self.dtype))
        rope = position_inputs if position_inputs is not None else rope_inputs(self.arch, md.positions)
        new_caches = []
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, kv_cache = layer(x, rope, md, kv_cache, backend)
            new_caches.append(kv_cache)
        return x, new_caches

    def logits(self, x: jax.Array, backend: KernelBackend) -> jax.Array:
        """float32 logits [rows, vocab] of hidden states [rows, hidden] (final norm, then the LM head)."""
        h = self.norm(x)
        if self.lm_head is None:
            logits = backend.matmul(h, self.embed_tokens[...], transpose_w=True, out_dtype=jnp.float32)
        else:
            logits = backend.matmul(h, self.lm_head[...], out_dtype=jnp.float32)
        logits = gather_vocab(logits, self.tp_axis, self.arch.vocab_size)
        return soft_cap(logits, self.arch.final_logit_soft_cap)


def kv_cache_spec(arch: ModelArchConfig) -> Tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim): what the engine needs to size the paged KV cache."""
    return arch.num_layers, arch.num_kv_heads, arch.head_dim


def num_params(arch: ModelArchConfig) -> int:
    """Parameter count (a tied embedding counted once)."""
    hidden, inter = arch.hidden_size, arch.intermediate_size
    attention = (hidden * arch.qkv_size + arch.num_heads * arch.head_dim * hidden + 2 * hidden
                 + (arch.qkv_size if arch.qkv_bias else 0) + (hidden if arch.o_bias else 0)
                 + (2 * arch.head_dim if arch.qk_norm else 0) + (2 * hidden if arch.sandwich_norms else 0))
    mlps = sum(MoEBlock.num_params(arch) if arch.layer_is_moe(i) else 3 * hidden * inter
               for i in range(arch.num_layers))
    embed = arch.vocab_size * hidden
    return embed + arch.num_layers * attention + mlps + hidden + (0 if arch.tie_word_embeddings else embed)
