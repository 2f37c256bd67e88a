"""Read a GGUF file as if it were a Hugging Face checkpoint.

In: a ``.gguf`` file (llama, qwen2 or qwen3 architecture; any tensor type that
``gguf.quants.dequantize`` implements). Out: a transformers-style config dict
built from the GGUF metadata, the embedded chat template, and a
``GGUFCheckpoint`` that hands out each tensor under its Hugging Face name,
dequantized to float32 and in Hugging Face layout — or, for a Q8_0 / Q4_0 / Q4_1 matrix,
its blocks as stored (``get_quantized``; surge.kernels.quantized describes that form).

llama.cpp stores the q and k projections of llama-architecture models with the
two halves of every head's rotary dimensions interleaved (it rotates adjacent
pairs, transformers rotates halves); ``_unpermute_heads`` undoes that.
"""

from __future__ import annotations

import re
from typing import List, Optional

import numpy as np

from surge.kernels.quantized import TYPE_BLOCK_BYTES
from surge.models.hf_checkpoint import CheckpointError

# GGUF general.architecture -> (transformers architecture, model_type).
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
}
_GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_output.bias": "self_attn.o_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")


def _open_reader(path: str):
    import gguf

    try:
        return gguf.GGUFReader(path)
    except (ValueError, OSError, KeyError) as exc:
        raise CheckpointError(f"{path}: cannot read GGUF file ({exc})") from exc


class GGUFCheckpoint:
    """Dequantized tensors of one GGUF file, keyed by their Hugging Face names."""

    def __init__(self, path: str):
        self.path = path
        self.reader = _open_reader(path)
        self.metadata = {name: _field_value(field) for name, field in self.reader.fields.items()
                         if not name.startswith("tokenizer.ggml.") or name.endswith("_id")}
        self.gguf_arch = self.metadata.get("general.architecture")
        if self.gguf_arch not in _ARCHITECTURES:
            raise CheckpointError(f"{path}: unsupported GGUF architecture {self.gguf_arch!r}; surge reads "
                                  f"{', '.join(_ARCHITECTURES)}")
        self._tensors = {}
        for tensor in self.reader.tensors:
            hf_name = _hf_name(tensor.name)
            if hf_name is None:
                if tensor.name == "rope_freqs.weight":
                    raise CheckpointError(f"{path}: tensor 'rope_freqs.weight' (per-frequency rope scaling) is "
                                          "not supported")
                raise CheckpointError(f"{path}: unexpected tensor {tensor.name!r} for a {self.gguf_arch} model")
            self._tensors[hf_name] = tensor

    def _meta(self, key: str, default=None):
        return self.metadata.get(f"{self.gguf_arch}.{key}", default)

    def hf_config(self) -> dict:
        """A transformers-style config dict describing this file's model."""
        architecture, model_type = _ARCHITECTURES[self.gguf_arch]
        hidden = self._required("embedding_length")
        num_heads = self._required("attention.head_count")
        vocab = self._meta("vocab_size") or self._tensors["model.embed_tokens.weight"].shape[-1]
        scaling = self._meta("rope.scaling.type")
        if scaling not in (None, "none"):
            raise CheckpointError(f"{self.path}: rope scaling type {scaling!r} in GGUF metadata is not supported")
        config = {
            "architectures": [architecture],
            "model_type": model_type,
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": self._required("feed_forward_length"),
            "num_hidden_layers": self._required("block_count"),
            "num_attention_heads": num_heads,
            "num_key_value_heads": self._meta("attention.head_count_kv", num_heads),
            "head_dim": self._meta("attention.key_length", hidden // num_heads),
            "rope_theta": float(self._meta("rope.freq_base", 10000.0)),
            "rms_norm_eps": float(self._meta("attention.layer_norm_rms_epsilon", 1e-6)),
            "max_position_embeddings": self._meta("context_length", 2048),
            "tie_word_embeddings": "lm_head.weight" not in self._tensors,
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id"),
        }
        window = self._meta("attention.sliding_window")
        if window:
            config.update(sliding_window=int(window), use_sliding_window=True, max_window_layers=0)
        return config

    def _required(self, key: str) -> int:
        value = self._meta(key)
        if value is None:
            raise CheckpointError(f"{self.path}: GGUF metadata lacks {self.gguf_arch}.{key}")
        return int(value)

    def chat_template(self) -> Optional[str]:
        template = self.reader.fields.get("tokenizer.chat_template")
        return _field_value(template) if template is not None else None

    def names(self) -> List[str]:
        return list(self._tensors)

    def location(self, name: str) -> str:
        return self.path

    def shape(self, name: str) -> tuple:
        # GGUF lists dimensions fastest-varying first; numpy (and HF) order is the reverse.
        return tuple(int(d) for d in reversed(self._tensors[name].shape.tolist()))

    def get(self, name: str) -> np.ndarray:
        from gguf import quants

        tensor = self._tensors[name]
        try:
            array = quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, quants.QuantError) as exc:
            raise CheckpointError(f"{self.path}: tensor {tensor.name!r} has quantization type "
                                  f"{tensor.tensor_type.name}, which gguf's dequantizer lacks ({exc})") from None
        array = np.asarray(array, dtype=np.float32).reshape(self.shape(name))
        if self.gguf_arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _unpermute_heads(array, self._required("attention.head_count"))
        elif self.gguf_arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = self._meta("attention.head_count_kv", self._required("attention.head_count"))
            array = _unpermute_heads(array, int(heads))
        return array


    def get_quantized(self, name: str) -> Optional[np.ndarray]:
        """A 2-D tensor's GGUF blocks, uint8 [rows, K / 32, block_bytes] in Hugging Face row order;
        None when its type is not one surge multiplies quantized (then ``get`` dequantizes it)."""
        tensor = self._tensors[name]
        block_bytes = TYPE_BLOCK_BYTES.get(tensor.tensor_type.name)
        shape = self.shape(name)
        if block_bytes is None or len(shape) != 2:
            return None
        blocks = np.asarray(tensor.data, dtype=np.uint8).reshape(shape[0], -1, block_bytes)
        if self.gguf_arch == "llama" and name.endswith("q_proj.weight"):
            blocks = _unpermute_heads(blocks, self._required("attention.head_count"))
        elif self.gguf_arch == "llama" and name.endswith("k_proj.weight"):
            heads = self._meta("attention.head_count_kv", self._required("attention.head_count"))
            blocks = _unpermute_heads(blocks, int(heads))
        return blocks


def _unpermute_heads(weight: np.ndarray, num_heads: int) -> np.ndarray:
    # Rows of each head are stored as (head_dim/2 pairs, 2); transformers wants (2 halves, head_dim/2).
    rows = weight.shape[0]
    rest = weight.shape[1:]
    split = weight.reshape(num_heads, rows // num_heads // 2, 2, *rest)
    return np.ascontiguousarray(split.swapaxes(1, 2).reshape(weight.shape))


def _hf_name(gguf_name: str) -> Optional[str]:
    if gguf_name in _GLOBAL_TENSORS:
        return _GLOBAL_TENSORS[gguf_name]
    match = _LAYER_NAME.match(gguf_name)
    if match and match.group(2) in _LAYER_TENSORS:
        return f"model.layers.{match.group(1)}.{_LAYER_TENSORS[match.group(2)]}"
    return None


def _field_value(field):
    value = field.contents()
    return value.tolist() if isinstance(value, np.ndarray) else value
