"""Turn Hugging Face-named tensors into a ready CausalLM.

In: a ModelArchConfig, a checkpoint (safetensors directory or GGUF file) that
hands out tensors by their Hugging Face names in Hugging Face layout
([out, in] projections), and a dtype. Out: a CausalLM whose parameters are those
tensors, transposed to [in, out], with q/k/v and gate/up fused, cast to dtype.
Family differences are in the names: Phi-3 stores q/k/v and gate/up already fused,
Gemma 2/3 have four norms per layer (HF's post_attention_layernorm is then the norm
on the attention output, pre_feedforward_layernorm the one before the MLP), and a
mixture-of-experts layer has a router and per-expert MLPs (surge.models.moe_config
names them) that are stacked into [E, in, out].
With ``keep_quantized`` (a GGUF checkpoint, or a float one quantized at load by
surge.models.quantize_on_load), every projection and the embedding whose tensors the checkpoint
hands out quantized (``get_quantized``: Q8_0 / Q4_0 / Q4_1 / Q4_K / Q5_K / Q6_K) keep those blocks
instead, rows = outputs (surge.kernels.quantized); the rest is dtype. A fused group (q/k/v, gate/up)
stays quantized only when its parts share one type: a Q4_K_M file's Q4_K q/k with a Q6_K v is
dequantized to dtype as a whole (logged), since one array holds one block type.

Every expected tensor is checked for presence and shape before anything is
converted; an error names the tensor, the file and the expected and actual shape.
"""

from __future__ import annotations

import logging
from typing import Dict, Protocol, Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from surge.kernels import quantized
from surge.models.arch import ModelArchConfig
from surge.models.decoder import CausalLM
from surge.models.hf_checkpoint import CheckpointError
from surge.models.moe_config import moe_hf_shapes, moe_names

logger = logging.getLogger("surge")


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
            p + "self_attn.o_proj.weight": (hidden, q_out),
            p + "post_attention_layernorm.weight": (hidden,),
        })
        if arch.fused_checkpoint:
            shapes[p + "self_attn.qkv_proj.weight"] = (arch.qkv_size, hidden)
        else:
            shapes.update({p + "self_attn.q_proj.weight": (q_out, hidden), p + "self_attn.k_proj.weight": (kv_out, hidden),
                           p + "self_attn.v_proj.weight": (kv_out, hidden)})
        if arch.sandwich_norms:
            shapes.update({p + "pre_feedforward_layernorm.weight": (hidden,),
                           p + "post_feedforward_layernorm.weight": (hidden,)})
        if arch.layer_is_moe(i):
            shapes.update(moe_hf_shapes(arch, p))
        elif arch.fused_checkpoint:
            shapes.update({p + "mlp.gate_up_proj.weight": (2 * inter, hidden), p + "mlp.down_proj.weight": (hidden, inter)})
        else:
            m = p + _mlp(arch)
            shapes.update({m + "gate_proj.weight": (inter, hidden), m + "up_proj.weight": (inter, hidden),
                           m + "down_proj.weight": (hidden, inter)})
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
            if any(b is not None for b in blocks):
                forms = [quantized.quant_type(b) if b is not None else "not quantized" for b in blocks]
                logger.info("%s: %s are %s: fused, they are held in %s", source, " + ".join(names),
                            " + ".join(forms), dtype.name)
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
        if arch.fused_checkpoint:
            put_projection(layer.qkv_proj, p + "self_attn.qkv_proj.weight")
        else:
            put_projection(layer.qkv_proj, *(p + f"self_attn.{n}_proj.weight" for n in "qkv"))
        if layer.qkv_bias is not None:
            put(layer.qkv_bias, *(read(p + f"self_attn.{n}_proj.bias") for n in "qkv"), axis=0)
        if layer.q_norm is not None:
            put(layer.q_norm.weight, read(p + "self_attn.q_norm.weight"))
            put(layer.k_norm.weight, read(p + "self_attn.k_norm.weight"))
        put_projection(layer.o_proj, p + "self_attn.o_proj.weight")
        if layer.o_bias is not None:
            put(layer.o_bias, read(p + "self_attn.o_proj.bias"))
        if arch.sandwich_norms:
            put(layer.attn_out_norm.weight, read(p + "post_attention_layernorm.weight"))
            put(layer.post_attention_norm.weight, read(p + "pre_feedforward_layernorm.weight"))
            put(layer.mlp_out_norm.weight, read(p + "post_feedforward_layernorm.weight"))
        else:
            put(layer.post_attention_norm.weight, read(p + "post_attention_layernorm.weight"))
        if layer.moe is not None:
            _put_moe(layer.moe, arch, p, read, put)
        elif arch.fused_checkpoint:
            put_projection(layer.gate_up_proj, p + "mlp.gate_up_proj.weight")
            put_projection(layer.down_proj, p + "mlp.down_proj.weight")
        else:
            m = p + _mlp(arch)
            put_projection(layer.gate_up_proj, m + "gate_proj.weight", m + "up_proj.weight")
            put_projection(layer.down_proj, m + "down_proj.weight")
    return model


def _mlp(arch: ModelArchConfig) -> str:
    """The dense MLP's name within a layer (Llama 4 calls it feed_forward)."""
    return "feed_forward." if arch.architecture == "Llama4ForCausalLM" else "mlp."


def _put_moe(block, arch: ModelArchConfig, prefix: str, read, put) -> None:
    names = moe_names(arch, prefix)
    put(block.router, read(names.router).T)
    if names.fused:  # already stacked as [E, in, out], gate before up
        put(block.experts_gate_up, read(names.experts_gate_up))
        put(block.experts_down, read(names.experts_down))
    else:
        experts = range(arch.moe.num_experts)
        put(block.experts_gate_up, np.stack([np.concatenate([read(names.expert_gate(e)).T,
                                                             read(names.expert_up(e)).T], axis=1) for e in experts]))
        put(block.experts_down, np.stack([read(names.expert_down(e)).T for e in experts]))
    if block.shared_gate_up is not None:
        put(block.shared_gate_up, read(names.shared_gate_proj).T, read(names.shared_up_proj).T, axis=1)
        put(block.shared_down, read(names.shared_down_proj).T)
    if block.shared_gate is not None:
        put(block.shared_gate, read(names.shared_expert_gate).T)
