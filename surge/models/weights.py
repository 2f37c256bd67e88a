"""Turn Hugging Face-named tensors into a ready CausalLM.

In: a ModelArchConfig, a checkpoint (safetensors directory or GGUF file) that
hands out tensors by their Hugging Face names in Hugging Face layout
([out, in] projections), and a dtype. Out: a CausalLM whose parameters are those
tensors, transposed to [in, out], with q/k/v and gate/up fused, cast to dtype.

Every expected tensor is checked for presence and shape before anything is
converted; an error names the tensor, the file and the expected and actual shape.
"""

from __future__ import annotations

from typing import Dict, Protocol, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from surge.models.arch import ModelArchConfig
from surge.models.decoder import CausalLM
from surge.models.hf_checkpoint import CheckpointError


class Checkpoint(Protocol):
    def names(self) -> Sequence[str]: ...
    def location(self, name: str) -> str: ...
    def shape(self, name: str) -> tuple: ...
    def get(self, name: str) -> np.ndarray: ...


def expected_hf_shapes(arch: ModelArchConfig) -> Dict[str, tuple]:
    """Every tensor the model needs, by Hugging Face name, with its Hugging Face shape."""
    hidden, inter, head_dim = arch.hidden_size, arch.intermediate_size, arch.head_dim
    q_out, kv_out = arch.num_heads * head_dim, arch.num_kv_heads * head_dim
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, hidden), "model.norm.weight": (hidden,)}
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, hidden)
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (q_out, hidden),
            p + "self_attn.k_proj.weight": (kv_out, hidden),
            p + "self_attn.v_proj.weight": (kv_out, hidden),
            p + "self_attn.o_proj.weight": (hidden, q_out),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "mlp.gate_proj.weight": (inter, hidden),
            p + "mlp.up_proj.weight": (inter, hidden),
            p + "mlp.down_proj.weight": (hidden, inter),
        })
        if arch.qkv_bias:
            shapes.update({p + "self_attn.q_proj.bias": (q_out,), p + "self_attn.k_proj.bias": (kv_out,),
                           p + "self_attn.v_proj.bias": (kv_out,)})
        if arch.o_bias:
            shapes[p + "self_attn.o_proj.bias"] = (hidden,)
        if arch.qk_norm:
            shapes.update({p + "self_attn.q_norm.weight": (head_dim,), p + "self_attn.k_norm.weight": (head_dim,)})
    return shapes


def check_checkpoint(arch: ModelArchConfig, checkpoint: Checkpoint, source: str) -> None:
    """Raise CheckpointError if a needed tensor is missing or has the wrong shape."""
    available = set(checkpoint.names())
    for name, shape in expected_hf_shapes(arch).items():
        if name not in available:
            raise CheckpointError(f"{source}: missing tensor {name!r} (expected shape {shape})")
        actual = tuple(checkpoint.shape(name))
        if actual != shape:
            raise CheckpointError(f"{checkpoint.location(name)}: tensor {name!r} has shape {actual}, "
                                  f"expected {shape}")


def build_model(arch: ModelArchConfig, checkpoint: Checkpoint, dtype, source: str) -> CausalLM:
    """A CausalLM holding the checkpoint's weights in `dtype` (checked first; nothing random is drawn)."""
    check_checkpoint(arch, checkpoint, source)
    dtype = jnp.dtype(dtype)
    model = nnx.eval_shape(lambda: CausalLM(arch, dtype=dtype, rngs=nnx.Rngs(0)))

    def read(name: str) -> np.ndarray:
        return np.asarray(checkpoint.get(name))

    def put(param: nnx.Param, *parts: np.ndarray, axis: int = -1) -> None:
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        param.set_value(jnp.asarray(np.ascontiguousarray(array.astype(dtype, copy=False))))

    put(model.embed_tokens, read("model.embed_tokens.weight"))
    put(model.norm.weight, read("model.norm.weight"))
    if model.lm_head is not None:
        put(model.lm_head, read("lm_head.weight").T)
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        put(layer.input_norm.weight, read(p + "input_layernorm.weight"))
        put(layer.qkv_proj, *(read(p + f"self_attn.{n}_proj.weight").T for n in "qkv"), axis=1)
        if layer.qkv_bias is not None:
            put(layer.qkv_bias, *(read(p + f"self_attn.{n}_proj.bias") for n in "qkv"), axis=0)
        if layer.q_norm is not None:
            put(layer.q_norm.weight, read(p + "self_attn.q_norm.weight"))
            put(layer.k_norm.weight, read(p + "self_attn.k_norm.weight"))
        put(layer.o_proj, read(p + "self_attn.o_proj.weight").T)
        if layer.o_bias is not None:
            put(layer.o_bias, read(p + "self_attn.o_proj.bias"))
        put(layer.post_attention_norm.weight, read(p + "post_attention_layernorm.weight"))
        put(layer.gate_up_proj, read(p + "mlp.gate_proj.weight").T, read(p + "mlp.up_proj.weight").T, axis=1)
        put(layer.down_proj, read(p + "mlp.down_proj.weight").T)
    return model
