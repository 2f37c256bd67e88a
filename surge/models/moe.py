"""The mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, Llama 4) and the gated activations.

In: normed hidden states x [T, hidden] and the backend. Out: [T, hidden], the sum over
each token's top-k experts of router weight * expert(x) (Llama 4: expert(weight * x)),
plus the shared expert (sigmoid-gated for Qwen2-MoE) when the model has one.

Routing is static-shaped and has no loop over tokens or experts: softmax over the
router logits (float32), top-k, optional renormalisation (Llama 4: top-k of the logits,
then their sigmoid); the T * k (token, expert)
pairs are sorted by expert so that each expert's rows are contiguous, and both expert
projections are one grouped matmul over the packed weights [E, in, out]
(``backend.grouped_matmul``, jax.lax.ragged_dot by default) with the per-expert row
counts; the weighted rows are scattered back onto their tokens with an add.
Padding tokens are routed like any other; their rows are discarded by the caller.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from surge.models.arch import ModelArchConfig

_INIT_STD = 0.02


def gated_activation(gate_up: jax.Array, hidden_act: str, backend) -> jax.Array:
    """[..., 2 I] (gate, then up) -> [..., I]: silu(gate) * up, or gelu_tanh(gate) * up (GeGLU)."""
    if hidden_act == "silu":
        return backend.silu_and_mul(gate_up)
    gate, up = jnp.split(gate_up, 2, axis=-1)
    return (jax.nn.gelu(gate.astype(jnp.float32), approximate=True) * up.astype(jnp.float32)).astype(gate_up.dtype)


def _normal(rngs: nnx.Rngs, shape: tuple, dtype) -> nnx.Param:
    return nnx.Param((jax.random.normal(rngs.params(), shape, jnp.float32) * _INIT_STD).astype(dtype))


class MoEBlock(nnx.Module):
    def __init__(self, arch: ModelArchConfig, *, dtype, rngs: nnx.Rngs):
        moe = arch.moe
        hidden, inter = arch.hidden_size, moe.intermediate_size
        self.num_experts, self.top_k, self.normalize = moe.num_experts, moe.top_k, moe.normalize_top_k
        self.routing = moe.routing
        self.hidden_act = arch.hidden_act
        self.router = _normal(rngs, (hidden, moe.num_experts), dtype)  # [in, out]
        self.experts_gate_up = _normal(rngs, (moe.num_experts, hidden, 2 * inter), dtype)
        self.experts_down = _normal(rngs, (moe.num_experts, inter, hidden), dtype)
        shared = moe.shared_intermediate_size
        self.shared_gate_up = _normal(rngs, (hidden, 2 * shared), dtype) if shared else None
        self.shared_down = _normal(rngs, (shared, hidden), dtype) if shared else None
        self.shared_gate = _normal(rngs, (hidden, 1), dtype) if shared and moe.shared_expert_gate else None

    @staticmethod
    def num_params(arch: ModelArchConfig) -> int:
        moe, hidden = arch.moe, arch.hidden_size
        shared = moe.shared_intermediate_size
        return (hidden * moe.num_experts + 3 * moe.num_experts * hidden * moe.intermediate_size
                + 3 * hidden * shared + (hidden if shared and moe.shared_expert_gate else 0))

    def route(self, x: jax.Array, backend) -> tuple:
        """(weights float32[T, k], expert ids int32[T, k]) of each token's top-k experts."""
        logits = backend.matmul(x, self.router[...]).astype(jnp.float32)
        if self.routing == "sigmoid":
            top, experts = jax.lax.top_k(logits, self.top_k)
            return jax.nn.sigmoid(top), experts.astype(jnp.int32)
        probs = jax.nn.softmax(logits, axis=-1)
        weights, experts = jax.lax.top_k(probs, self.top_k)
        if self.normalize:
            weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
        return weights, experts.astype(jnp.int32)

    def __call__(self, x: jax.Array, backend) -> jax.Array:
        num_tokens = x.shape[0]
        weights, experts = self.route(x, backend)
        flat_experts = experts.reshape(-1)
        order = jnp.argsort(flat_experts, stable=True)  # rows grouped by expert
        token_of_row = order // self.top_k
        group_sizes = jnp.bincount(flat_experts, length=self.num_experts).astype(jnp.int32)
        row_weights = weights.reshape(-1)[order][:, None]
        rows = x[token_of_row]
        if self.routing == "sigmoid":  # the weight scales the expert's input
            rows = (rows.astype(jnp.float32) * row_weights).astype(x.dtype)
        gate_up = backend.grouped_matmul(rows, self.experts_gate_up[...], group_sizes)
        out_rows = backend.grouped_matmul(gated_activation(gate_up, self.hidden_act, backend),
                                          self.experts_down[...], group_sizes).astype(jnp.float32)
        if self.routing == "softmax":
            out_rows = out_rows * row_weights
        out = jnp.zeros((num_tokens, x.shape[1]), jnp.float32).at[token_of_row].add(out_rows)
        if self.shared_gate_up is not None:
            shared_h = gated_activation(backend.matmul(x, self.shared_gate_up[...]), self.hidden_act, backend)
            shared = backend.matmul(shared_h, self.shared_down[...]).astype(jnp.float32)
            if self.shared_gate is not None:
                shared = shared * jax.nn.sigmoid(backend.matmul(x, self.shared_gate[...]).astype(jnp.float32))
            out = out + shared
        return out.astype(x.dtype)
