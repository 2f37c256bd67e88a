"""Turn Hugging Face-named tensors into a ready CausalLM.

In: a ModelArchConfig, a checkpoint (safetensors directory or GGUF file) that
hands out tensors by their Hugging Face names in Hugging Face layout
([out, in] projections), and a dtype. Out: a CausalLM whose parameters are those
tensors, transposed to [in, out], with q/k/v and gate/up fused, cast to dtype. With
``keep_quantized`` (a GGUF checkpoint), every projection and the embedding whose tensors the
file stores as Q8_0 / Q4_0 / Q4_1 (one type per fused group) keep those blocks instead, rows
= outputs (surge.kernels.quantized); the rest is dtype.

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


def build_model(arch: ModelArchConfig, checkpoint: Checkpoint, dtype, source: str,
                keep_quantized: bool = False) -> CausalLM:
    """A CausalLM holding the checkpoint's weights in `dtype` (checked first; nothing random is drawn)."""
    check_checkpoint(arch, checkpoint, source)
    dtype = jnp.dtype(dtype)
    model = nnx.eval_shape(lambda: CausalLM(arch, dtype=dtype, rngs=nnx.Rngs(0)))

    def read(name: str) -> np.ndarray:
        return np.asarray(checkpoint.get(name))

    def put(param: nnx.Param, *parts: np.ndarray, axis: int = -1) -> None:
        array = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=axis)
        param.set_value(jnp.asarray(np.ascontiguousarray(array.astype(dtype, copy=False))))

    def put_projection(param: nnx.Param, *names: str) -> None:
        """[in, out] from HF [out, in] tensors fused along out, or their quantized blocks stacked by rows."""
        if keep_quantized:
            blocks = [checkpoint.get_quantized(name) for name in names]
            if all(b is not None for b in blocks) and len({b.shape[2] for b in blocks}) == 1:
                param.set_value(jnp.asarray(np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]))
                return
        put(param, *(read(name).T for name in names), axis=1)

    embedding = checkpoint.get_quantized("model.embed_tokens.weight") if keep_quantized else None
    if embedding is not None:
        model.embed_tokens.set_value(jnp.asarray(embedding))
    else:
        put(model.embed_tokens, read("model.embed_tokens.weight"))
    put(model.norm.weight, read("model.norm.weight"))
    if model.lm_head is not None:
        put_projection(model.lm_head, "lm_head.weight")
    for i, layer in enumerate(model.layers):
        p = f"model.layers.{i}."
        put(layer.input_norm.weight, read(p + "input_layernorm.weight"))
        put_projection(layer.qkv_proj, *(p + f"self_attn.{n}_proj.weight" for n in "qkv"))
        if layer.qkv_bias is not None:
            put(layer.qkv_bias, *(read(p + f"self_attn.{n}_proj.bias") for n in "qkv"), axis=0)
        if layer.q_norm is not None:
            put(layer.q_norm.weight, read(p + "self_attn.q_norm.weight"))
            put(layer.k_norm.weight, read(p + "self_attn.k_norm.weight"))
        put_projection(layer.o_proj, p + "self_attn.o_proj.weight")
        if layer.o_bias is not None:
            put(layer.o_bias, read(p + "self_attn.o_proj.bias"))
        put(layer.post_attention_norm.weight, read(p + "post_attention_layernorm.weight"))
        put_projection(layer.gate_up_proj, p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight")
        put_projection(layer.down_proj, p + "mlp.down_proj.weight")
    return model
