"""Read a GGUF file as if it were a Hugging Face checkpoint.

In: a ``.gguf`` file of an architecture llama.cpp writes: llama (with experts: Mixtral), qwen2,
qwen3, qwen2moe, qwen3moe, gemma2, gemma3, phi3, llama4 (any tensor type that
``gguf.quants.dequantize`` implements). Out: a transformers-style config dict
built from the GGUF metadata, the embedded chat template, and a
``GGUFCheckpoint`` that hands out each tensor under its Hugging Face name,
dequantized to float32 and in Hugging Face layout — or, for a Q8_0 / Q4_0 / Q4_1 / Q4_K /
Q5_K / Q6_K matrix, its blocks as stored (``get_quantized``; surge.kernels.quantized describes that form).

What llama.cpp's converter changed is undone here: the q and k projections of
llama-architecture models (Mixtral included) have the two halves of every head's rotary
dimensions interleaved (``_unpermute_heads``); Gemma's norm weights are stored as 1 + w;
experts are stacked into one [E, out, in] tensor per projection (handed out per expert, or
for Llama 4 as its fused [E, in, 2 I] / [E, I, in] stacks); Phi-3's longrope factors are
tensors (read into the config). What the metadata lacks is filled in as llama.cpp does:
Gemma 2 alternates sliding and global layers, Gemma 3 has one global layer in six and a
sliding RoPE base of 10000, Llama 4 has 8192-token chunks and a NoPE layer in every four.
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Tuple

import numpy as np

from surge.kernels.quantized import TYPE_BLOCK_BYTES
from surge.models.hf_checkpoint import CheckpointError

# GGUF general.architecture -> (transformers architecture, model_type); llama with experts is Mixtral.
_ARCHITECTURES = {
    "llama": ("LlamaForCausalLM", "llama"),
    "qwen2": ("Qwen2ForCausalLM", "qwen2"),
    "qwen3": ("Qwen3ForCausalLM", "qwen3"),
    "qwen2moe": ("Qwen2MoeForCausalLM", "qwen2_moe"),
    "qwen3moe": ("Qwen3MoeForCausalLM", "qwen3_moe"),
    "gemma2": ("Gemma2ForCausalLM", "gemma2"),
    "gemma3": ("Gemma3ForCausalLM", "gemma3_text"),
    "phi3": ("Phi3ForCausalLM", "phi3"),
    "llama4": ("Llama4ForCausalLM", "llama4_text"),
}
_GEMMA = ("gemma2", "gemma3")
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
# Per-architecture differences from _LAYER_TENSORS (None: the tensor is an expert stack, see _add_experts).
_LAYER_OVERRIDES = {
    "gemma2": {"post_attention_norm.weight": "post_attention_layernorm.weight",
               "ffn_norm.weight": "pre_feedforward_layernorm.weight",
               "post_ffw_norm.weight": "post_feedforward_layernorm.weight"},
    "phi3": {"attn_qkv.weight": "self_attn.qkv_proj.weight", "ffn_up.weight": "mlp.gate_up_proj.weight"},
    "llama4": {"ffn_gate.weight": "feed_forward.gate_proj.weight", "ffn_up.weight": "feed_forward.up_proj.weight",
               "ffn_down.weight": "feed_forward.down_proj.weight"},
}
_LAYER_OVERRIDES["gemma3"] = _LAYER_OVERRIDES["gemma2"]
# Mixture-of-experts tensors: router, shared expert (Qwen2-MoE, Llama 4) and its gate, by naming family.
_MOE_TENSORS = {
    "mixtral": {"ffn_gate_inp.weight": "block_sparse_moe.gate.weight"},
    "qwen": {"ffn_gate_inp.weight": "mlp.gate.weight",
             "ffn_gate_shexp.weight": "mlp.shared_expert.gate_proj.weight",
             "ffn_up_shexp.weight": "mlp.shared_expert.up_proj.weight",
             "ffn_down_shexp.weight": "mlp.shared_expert.down_proj.weight",
             "ffn_gate_inp_shexp.weight": "mlp.shared_expert_gate.weight"},
    "llama4": {"ffn_gate_inp.weight": "feed_forward.router.weight",
               "ffn_gate_shexp.weight": "feed_forward.shared_expert.gate_proj.weight",
               "ffn_up_shexp.weight": "feed_forward.shared_expert.up_proj.weight",
               "ffn_down_shexp.weight": "feed_forward.shared_expert.down_proj.weight"},
}
_EXPERT_STACKS = ("ffn_gate_exps.weight", "ffn_up_exps.weight", "ffn_down_exps.weight")
_ROPE_FACTORS = ("rope_factors_long.weight", "rope_factors_short.weight")
_LAYER_NAME = re.compile(r"^blk\.(\d+)\.(.+)$")
# What llama.cpp assumes where the metadata says nothing.
_LLAMA4_CHUNK, _LLAMA4_NOPE_STEP = 8192, 4
_LLAMA4_TEMPERATURE = (8192.0, 0.1)  # floor_scale, attn_scale
_GEMMA3_LOCAL_ROPE_BASE, _GEMMA3_PATTERN = 10000.0, 6
_ONE_ROW = ("mlp.shared_expert_gate.weight",)  # stored 1-D, transformers keeps [1, hidden]


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
        names = [tensor.name for tensor in self.reader.tensors]
        has_experts = any(name.endswith(_EXPERT_STACKS) for name in names)
        self.moe_naming = ({"llama": "mixtral", "qwen2moe": "qwen", "qwen3moe": "qwen", "llama4": "llama4"}
                           .get(self.gguf_arch) if has_experts else None)
        if has_experts and self.moe_naming is None:
            raise CheckpointError(f"{path}: a {self.gguf_arch} GGUF with expert tensors is not supported")
        layer_names = {**_LAYER_TENSORS, **_LAYER_OVERRIDES.get(self.gguf_arch, {}),
                       **_MOE_TENSORS.get(self.moe_naming, {})}
        # hf name -> (kind, gguf tensors, expert index); kinds: plain, expert, llama4_gate_up, llama4_down.
        self._entries: Dict[str, Tuple[str, tuple, int]] = {}
        self.rope_factors: Dict[str, np.ndarray] = {}
        stacks: Dict[int, dict] = {}
        for tensor in self.reader.tensors:
            match = _LAYER_NAME.match(tensor.name)
            if tensor.name in _GLOBAL_TENSORS:
                self._entries[_GLOBAL_TENSORS[tensor.name]] = ("plain", (tensor,), 0)
            elif tensor.name in _ROPE_FACTORS and self.gguf_arch == "phi3":
                self.rope_factors[tensor.name.split(".")[0]] = np.asarray(tensor.data, np.float32).reshape(-1)
            elif match and match.group(2) in _EXPERT_STACKS and self.moe_naming:
                stacks.setdefault(int(match.group(1)), {})[match.group(2).split(".")[0]] = tensor
            elif match and match.group(2) in layer_names:
                self._entries[f"model.layers.{match.group(1)}.{layer_names[match.group(2)]}"] = ("plain", (tensor,), 0)
            elif tensor.name == "rope_freqs.weight":
                raise CheckpointError(f"{path}: tensor 'rope_freqs.weight' (per-frequency rope scaling) is "
                                      "not supported")
            else:
                raise CheckpointError(f"{path}: unexpected tensor {tensor.name!r} for a {self.gguf_arch} model")
        self.moe_layers = sorted(stacks)
        for layer, stack in stacks.items():
            self._add_experts(layer, stack)

    def _add_experts(self, layer: int, stack: dict) -> None:
        from surge.models.moe_config import MoENames

        missing = {"ffn_gate_exps", "ffn_up_exps", "ffn_down_exps"} - set(stack)
        if missing:
            raise CheckpointError(f"{self.path}: layer {layer} lacks the expert tensors "
                                  f"{', '.join(f'blk.{layer}.{m}.weight' for m in sorted(missing))}")
        names = MoENames(f"model.layers.{layer}.", self.moe_naming)
        gate, up, down = stack["ffn_gate_exps"], stack["ffn_up_exps"], stack["ffn_down_exps"]
        if names.fused:  # Llama 4: transformers stacks [E, in, out] with gate and up side by side
            self._entries[names.experts_gate_up] = ("llama4_gate_up", (gate, up), 0)
            self._entries[names.experts_down] = ("llama4_down", (down,), 0)
            return
        for e in range(int(gate.shape[-1])):
            self._entries[names.expert_gate(e)] = ("expert", (gate,), e)
            self._entries[names.expert_up(e)] = ("expert", (up,), e)
            self._entries[names.expert_down(e)] = ("expert", (down,), e)

    def _meta(self, key: str, default=None):
        return self.metadata.get(f"{self.gguf_arch}.{key}", default)

    def hf_config(self) -> dict:
        """A transformers-style config dict describing this file's model."""
        architecture, model_type = _ARCHITECTURES[self.gguf_arch]
        if self.moe_naming == "mixtral":
            architecture, model_type = "MixtralForCausalLM", "mixtral"
        hidden = self._required("embedding_length")
        num_heads = self._required("attention.head_count")
        head_dim = self._meta("attention.key_length", hidden // num_heads)
        num_layers = self._required("block_count")
        vocab = self._meta("vocab_size") or self._gguf_shape("model.embed_tokens.weight")[0]
        config = {
            "architectures": [architecture],
            "model_type": model_type,
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": self._required("feed_forward_length"),
            "num_hidden_layers": num_layers,
            "num_attention_heads": num_heads,
            "num_key_value_heads": self._meta("attention.head_count_kv", num_heads),
            "head_dim": head_dim,
            "rope_theta": float(self._meta("rope.freq_base", 10000.0)),
            "rms_norm_eps": float(self._meta("attention.layer_norm_rms_epsilon", 1e-6)),
            "max_position_embeddings": self._meta("context_length", 2048),
            "tie_word_embeddings": "lm_head.weight" not in self._entries,
            "bos_token_id": self.metadata.get("tokenizer.ggml.bos_token_id"),
            "eos_token_id": self.metadata.get("tokenizer.ggml.eos_token_id"),
        }
        rope_scaling = self._rope_scaling(config)
        if rope_scaling is not None:
            config["rope_scaling"] = rope_scaling
        window = self._meta("attention.sliding_window")
        if window and self.gguf_arch not in _GEMMA:
            config.update(sliding_window=int(window), use_sliding_window=True, max_window_layers=0)
        if self.gguf_arch in ("qwen2", "qwen2moe"):
            config["qkv_bias"] = "model.layers.0.self_attn.q_proj.bias" in self._entries
        if self.gguf_arch in _GEMMA:
            config.update(self._gemma_config(num_layers, hidden, num_heads, head_dim, window))
        if self.gguf_arch == "phi3":
            rotary = self._meta("rope.dimension_count", head_dim)
            config["partial_rotary_factor"] = int(rotary) / int(head_dim)
        if self.moe_naming:
            config.update(self._moe_config(num_layers))
        if self.gguf_arch == "llama4":
            config.update(self._llama4_config(num_layers))
        return config

    def _rope_scaling(self, config: dict) -> Optional[dict]:
        scaling = self._meta("rope.scaling.type")
        if self.rope_factors:  # Phi-3's longrope
            if set(self.rope_factors) != {"rope_factors_long", "rope_factors_short"}:
                raise CheckpointError(f"{self.path}: longrope needs both rope_factors_long.weight and "
                                      "rope_factors_short.weight")
            original = self._meta("rope.scaling.original_context_length")
            if original is None:
                raise CheckpointError(f"{self.path}: longrope factors without "
                                      f"{self.gguf_arch}.rope.scaling.original_context_length")
            rope = {"rope_type": "longrope", "short_factor": self.rope_factors["rope_factors_short"].tolist(),
                    "long_factor": self.rope_factors["rope_factors_long"].tolist(),
                    "original_max_position_embeddings": int(original)}
            if self._meta("rope.scaling.attn_factor") is not None:
                rope["attention_factor"] = float(self._meta("rope.scaling.attn_factor"))
            config["original_max_position_embeddings"] = int(original)
            return rope
        if scaling in (None, "none"):
            return None
        if scaling == "linear":
            return {"rope_type": "linear", "factor": float(self._meta("rope.scaling.factor", 1.0))}
        raise CheckpointError(f"{self.path}: rope scaling type {scaling!r} in GGUF metadata is not supported "
                              "(none, linear; Phi-3 longrope factors)")

    def _gemma_config(self, num_layers: int, hidden: int, num_heads: int, head_dim: int, window) -> dict:
        gemma3 = self.gguf_arch == "gemma3"
        pattern = self._meta("attention.sliding_window_pattern")
        if isinstance(pattern, list):
            sliding = [bool(flag) for flag in pattern]
        else:
            every = int(pattern) if pattern else (_GEMMA3_PATTERN if gemma3 else 2)
            sliding = [(i + 1) % every != 0 for i in range(num_layers)]
        if len(sliding) != num_layers:
            raise CheckpointError(f"{self.path}: {self.gguf_arch}.attention.sliding_window_pattern has "
                                  f"{len(sliding)} entries for {num_layers} layers")
        # llama.cpp scales scores by attention.scale when given, else 1/sqrt(hidden / heads) for the 27B
        # models (46 layers: Gemma 2, 62: Gemma 3) and 1/sqrt(head_dim) otherwise.
        scale = self._meta("attention.scale")
        if scale:
            scalar = float(scale) ** -2
        else:
            scalar = hidden // num_heads if num_layers == (62 if gemma3 else 46) else head_dim
        config = {"hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": scalar}
        if window:
            config.update(sliding_window=int(window),
                          layer_types=["sliding_attention" if s else "full_attention" for s in sliding])
        if gemma3:
            config["rope_local_base_freq"] = float(self._meta("rope.freq_base_swa", _GEMMA3_LOCAL_ROPE_BASE))
        else:
            config.update(attn_logit_softcapping=self._meta("attn_logit_softcapping"),
                          final_logit_softcapping=self._meta("final_logit_softcapping"))
        return config

    def _moe_config(self, num_layers: int) -> dict:
        num_experts = self._required("expert_count")
        config = {"num_experts_per_tok": self._required("expert_used_count")}
        if self.moe_naming == "mixtral":
            return {**config, "num_local_experts": num_experts}
        if self.moe_naming == "llama4":
            return {**config, "num_local_experts": num_experts}
        # Qwen: layers without a router are dense (mlp_only_layers); Qwen3-MoE renormalises the top-k, Qwen2-MoE not.
        norm = self._meta("expert_weights_norm", self.gguf_arch == "qwen3moe")
        config.update(num_experts=num_experts, moe_intermediate_size=self._required("expert_feed_forward_length"),
                      norm_topk_prob=bool(norm), decoder_sparse_step=1,
                      mlp_only_layers=[i for i in range(num_layers) if i not in self.moe_layers])
        shared = self._meta("expert_shared_feed_forward_length")
        if self.gguf_arch == "qwen2moe":
            config["shared_expert_intermediate_size"] = int(shared or 0)
        return config

    def _llama4_config(self, num_layers: int) -> dict:
        step = int(self._meta("interleave_moe_layer_step", 1))
        floor_scale, attn_scale = _LLAMA4_TEMPERATURE
        return {
            # transformers: intermediate_size is the experts' width, intermediate_size_mlp the dense layers'.
            "intermediate_size": self._meta("expert_feed_forward_length", self._required("feed_forward_length")),
            "intermediate_size_mlp": self._required("feed_forward_length"),
            "interleave_moe_layer_step": step,
            "moe_layers": self.moe_layers,
            "attention_chunk_size": _LLAMA4_CHUNK,
            "no_rope_layers": [int((i + 1) % _LLAMA4_NOPE_STEP != 0) for i in range(num_layers)],
            "floor_scale": float(self._meta("attention.temperature_length", floor_scale)),
            "attn_scale": float(self._meta("attention.temperature_scale", attn_scale)),
            "attn_temperature_tuning": True,
            "use_qk_norm": True,
        }

    def _required(self, key: str) -> int:
        value = self._meta(key)
        if value is None:
            raise CheckpointError(f"{self.path}: GGUF metadata lacks {self.gguf_arch}.{key}")
        return int(value)

    def chat_template(self) -> Optional[str]:
        template = self.reader.fields.get("tokenizer.chat_template")
        return _field_value(template) if template is not None else None

    def names(self) -> List[str]:
        return list(self._entries)

    def location(self, name: str) -> str:
        return self.path

    def _gguf_shape(self, name: str) -> tuple:
        # GGUF lists dimensions fastest-varying first; numpy (and HF) order is the reverse.
        return tuple(int(d) for d in reversed(self._entries[name][1][0].shape.tolist()))

    def shape(self, name: str) -> tuple:
        kind, _, _ = self._entries[name]
        shape = self._gguf_shape(name)
        if kind == "expert":  # one [out, in] slice of the [E, out, in] stack
            return shape[1:]
        if kind == "llama4_gate_up":  # [E, I, in] twice -> [E, in, 2 I]
            return (shape[0], shape[2], 2 * shape[1])
        if kind == "llama4_down":  # [E, hidden, I] -> [E, I, hidden]
            return (shape[0], shape[2], shape[1])
        if name.endswith(_ONE_ROW) and len(shape) == 1:
            return (1, shape[0])
        return shape

    def _dequantized(self, tensor) -> np.ndarray:
        from gguf import quants

        cached = getattr(self, "_last_stack", None)
        if cached is not None and cached[0] is tensor:  # the experts of one stack are read one after another
            return cached[1]
        try:
            array = quants.dequantize(tensor.data, tensor.tensor_type)
        except (NotImplementedError, quants.QuantError) as exc:
            raise CheckpointError(f"{self.path}: tensor {tensor.name!r} has quantization type "
                                  f"{tensor.tensor_type.name}, which gguf's dequantizer lacks ({exc})") from None
        array = np.asarray(array, dtype=np.float32).reshape(tuple(int(d) for d in reversed(tensor.shape.tolist())))
        if len(tensor.shape) == 3:
            self._last_stack = (tensor, array)
        return array

    def get(self, name: str) -> np.ndarray:
        kind, tensors, expert = self._entries[name]
        if kind == "expert":
            return self._dequantized(tensors[0])[expert]
        if kind == "llama4_gate_up":
            gate, up = (self._dequantized(t).transpose(0, 2, 1) for t in tensors)
            return np.concatenate([gate, up], axis=2)
        if kind == "llama4_down":
            return np.ascontiguousarray(self._dequantized(tensors[0]).transpose(0, 2, 1))
        array = self._dequantized(tensors[0]).reshape(self.shape(name))
        if self.gguf_arch == "llama" and name.endswith(("q_proj.weight", "q_proj.bias")):
            array = _unpermute_heads(array, self._required("attention.head_count"))
        elif self.gguf_arch == "llama" and name.endswith(("k_proj.weight", "k_proj.bias")):
            heads = self._meta("attention.head_count_kv", self._required("attention.head_count"))
            array = _unpermute_heads(array, int(heads))
        elif self.gguf_arch in _GEMMA and name.endswith("norm.weight"):
            array = array - 1.0  # llama.cpp stores Gemma's (1 + w) scale; transformers keeps w
        return array

    def get_quantized(self, name: str) -> Optional[np.ndarray]:
        """A 2-D tensor's GGUF blocks, uint8 [rows, K / B, block_bytes] (B = 32, or 256 for the K-quants)
        in Hugging Face row order;
        None when its type is not one surge multiplies quantized (then ``get`` dequantizes it)."""
        kind, tensors, _ = self._entries[name]
        tensor = tensors[0]
        block_bytes = TYPE_BLOCK_BYTES.get(tensor.tensor_type.name)
        shape = self.shape(name)
        if kind != "plain" or block_bytes is None or len(shape) != 2:
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


def _field_value(field):
    value = field.contents()
    return value.tolist() if isinstance(value, np.ndarray) else value
