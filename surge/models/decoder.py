"""One Flax NNX decoder for the Llama family (Llama, Qwen2, Qwen3, Mistral).

In: token ids int32[T] of a ragged batch, its AttentionMetadata, one
``(k_pages, v_pages)`` cache per layer, the rows whose logits are wanted
int32[S], and the attention backend. Out: float32 logits [S, vocab] and the
per-layer caches with this step's K/V written.

Projections go through the backend's `matmul` (jnp.dot, or a native GEMM on CPU).
Weights are stored as the matmul consumes them: [in, out], q/k/v fused into one
projection and gate/up into another, one set of arrays per layer, and the layers
run as a plain Python loop (unrolled under jit). Activations take the backend's
compute dtype (the weights' dtype, or float32 on the cpu backend); RMSNorm statistics
and the attention softmax are computed in float32; logits are returned in float32.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from surge.kernels import quantized
from surge.kernels.base import AttentionBackend, KVCache
from surge.kernels.metadata import AttentionMetadata
from surge.models.arch import ModelArchConfig
from surge.models.rope import apply_rope, inverse_frequencies, rope_tables

_INIT_STD = 0.02


def _normal(rngs: nnx.Rngs, shape: tuple, dtype) -> nnx.Param:
    return nnx.Param((jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype))


class RMSNorm(nnx.Module):
    def __init__(self, size: int, eps: float, *, dtype):
        self.weight = nnx.Param(jnp.ones((size,), dtype))
        self.eps = eps

    def __call__(self, x: jax.Array) -> jax.Array:
        x32 = x.astype(jnp.float32)
        normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return normed.astype(x.dtype) * self.weight[...]


class DecoderLayer(nnx.Module):
    def __init__(self, arch: ModelArchConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        hidden, head_dim = arch.hidden_size, arch.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = arch.num_heads, arch.num_kv_heads, head_dim
        self.sliding_window = arch.layer_window(layer)
        self.input_norm = RMSNorm(hidden, arch.rms_norm_eps, dtype=dtype)
        self.qkv_proj = _normal(rngs, (hidden, arch.qkv_size), dtype)
        self.qkv_bias = nnx.Param(jnp.zeros((arch.qkv_size,), dtype)) if arch.qkv_bias else None
        self.q_norm = RMSNorm(head_dim, arch.rms_norm_eps, dtype=dtype) if arch.qk_norm else None
        self.k_norm = RMSNorm(head_dim, arch.rms_norm_eps, dtype=dtype) if arch.qk_norm else None
        self.o_proj = _normal(rngs, (arch.num_heads * head_dim, hidden), dtype)
        self.o_bias = nnx.Param(jnp.zeros((hidden,), dtype)) if arch.o_bias else None
        self.post_attention_norm = RMSNorm(hidden, arch.rms_norm_eps, dtype=dtype)
        self.gate_up_proj = _normal(rngs, (hidden, 2 * arch.intermediate_size), dtype)
        self.down_proj = _normal(rngs, (arch.intermediate_size, hidden), dtype)

    def __call__(self, x: jax.Array, cos: jax.Array, sin: jax.Array, md: AttentionMetadata,
                 kv_cache: KVCache, attention: AttentionBackend) -> Tuple[jax.Array, KVCache]:
        num_tokens = x.shape[0]
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        qkv = attention.matmul(self.input_norm(x), self.qkv_proj[...])
        if self.qkv_bias is not None:
            qkv = qkv + self.qkv_bias[...]
        q = qkv[:, :q_size].reshape(num_tokens, self.num_heads, self.head_dim)
        k = qkv[:, q_size:q_size + kv_size].reshape(num_tokens, self.num_kv_heads, self.head_dim)
        v = qkv[:, q_size + kv_size:].reshape(num_tokens, self.num_kv_heads, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        attn, kv_cache = attention(q, k, v, kv_cache, md, scale=self.head_dim ** -0.5,
                                   sliding_window=self.sliding_window)
        out = attention.matmul(attn.reshape(num_tokens, q_size), self.o_proj[...])
        if self.o_bias is not None:
            out = out + self.o_bias[...]
        x = x + out
        hidden = attention.silu_and_mul(attention.matmul(self.post_attention_norm(x), self.gate_up_proj[...]))
        return x + attention.matmul(hidden, self.down_proj[...]), kv_cache


class CausalLM(nnx.Module):
    def __init__(self, arch: ModelArchConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.arch = arch
        self.dtype = jnp.dtype(dtype)
        self.embed_tokens = _normal(rngs, (arch.vocab_size, arch.hidden_size), dtype)
        self.layers = nnx.List([DecoderLayer(arch, i, dtype=dtype, rngs=rngs) for i in range(arch.num_layers)])
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps, dtype=dtype)
        # [hidden, vocab]; tied models read the embedding table instead.
        self.lm_head: Optional[nnx.Param] = (
            None if arch.tie_word_embeddings else _normal(rngs, (arch.hidden_size, arch.vocab_size), dtype))

    def __call__(self, input_ids: jax.Array, md: AttentionMetadata, kv_caches: List[KVCache],
                 logits_indices: jax.Array, attention: AttentionBackend,
                 rope: Optional[Tuple[jax.Array, jax.Array]] = None) -> Tuple[jax.Array, List[KVCache]]:
        """``rope``: (cos, sin) [T, head_dim] for md.positions (rope.rope_tables); computed here when None."""
        x, new_caches = self.hidden_states(input_ids, md, kv_caches, attention, rope)
        return self.logits(x[logits_indices], attention), new_caches

    def hidden_states(self, input_ids: jax.Array, md: AttentionMetadata, kv_caches: List[KVCache],
                      attention: AttentionBackend,
                      rope: Optional[Tuple[jax.Array, jax.Array]] = None) -> Tuple[jax.Array, List[KVCache]]:
        """The last layer's output [T, hidden] for every token (before the final norm), and the caches."""
        if len(kv_caches) != len(self.layers):
            raise ValueError(f"kv_caches has {len(kv_caches)} entries; the model has {len(self.layers)} layers")
        table = self.embed_tokens[...]
        rows = quantized.take_rows(table, input_ids) if quantized.is_quantized(table) else table[input_ids]
        x = rows.astype(attention.compute_dtype(self.dtype))
        cos, sin = rope if rope is not None else rope_tables(inverse_frequencies(self.arch), md.positions)
        new_caches = []
        for layer, kv_cache in zip(self.layers, kv_caches):
            x, kv_cache = layer(x, cos, sin, md, kv_cache, attention)
            new_caches.append(kv_cache)
        return x, new_caches

    def logits(self, x: jax.Array, attention: AttentionBackend) -> jax.Array:
        """float32 logits [rows, vocab] of hidden states [rows, hidden] (final norm, then the LM head)."""
        h = self.norm(x)
        if self.lm_head is None:
            return attention.matmul(h, self.embed_tokens[...], transpose_w=True, out_dtype=jnp.float32)
        return attention.matmul(h, self.lm_head[...], out_dtype=jnp.float32)


def kv_cache_spec(arch: ModelArchConfig) -> Tuple[int, int, int]:
    """(num_layers, num_kv_heads, head_dim): what the engine needs to size the paged KV cache."""
    return arch.num_layers, arch.num_kv_heads, arch.head_dim


def num_params(arch: ModelArchConfig) -> int:
    """Parameter count (a tied embedding counted once)."""
    hidden, inter = arch.hidden_size, arch.intermediate_size
    per_layer = (hidden * arch.qkv_size + arch.num_heads * arch.head_dim * hidden + 3 * hidden * inter + 2 * hidden
                 + (arch.qkv_size if arch.qkv_bias else 0) + (hidden if arch.o_bias else 0)
                 + (2 * arch.head_dim if arch.qk_norm else 0))
    embed = arch.vocab_size * hidden
    return embed + arch.num_layers * per_layer + hidden + (0 if arch.tie_word_embeddings else embed)
