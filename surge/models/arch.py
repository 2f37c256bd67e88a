"""The shape of a decoder-only model, independent of where its weights come from.

In: a Hugging Face ``config.json`` dict (Llama, Qwen2, Qwen3, Mistral) or, via
the GGUF reader, metadata mapped to the same keys. Out: a frozen
``ModelArchConfig`` that the decoder, the loader and the engine (to size the KV
cache) read.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional, Tuple

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM")

# model_type -> architecture, for configs that carry no `architectures` list.
_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                       "mistral": "MistralForCausalLM"}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency scaling (the only rope_scaling type supported)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class ModelArchConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float = 10000.0
    rope_scaling: Optional[RopeScaling] = None
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    # Bias on the q/k/v projections (Qwen2; Llama's attention_bias).
    qkv_bias: bool = False
    # Bias on the attention output projection (Llama's attention_bias).
    o_bias: bool = False
    # RMSNorm over each head of q and k before RoPE (Qwen3).
    qk_norm: bool = False
    # Attention window in tokens, for the layers flagged in `sliding_window_layers`.
    sliding_window: Optional[int] = None
    # One flag per layer: does that layer use `sliding_window`? Empty when no layer does.
    sliding_window_layers: Tuple[bool, ...] = ()
    max_position_embeddings: int = 2048
    bos_token_id: Optional[int] = None
    eos_token_ids: Tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.sliding_window_layers and len(self.sliding_window_layers) != self.num_layers:
            raise ValueError(f"sliding_window_layers has {len(self.sliding_window_layers)} entries for "
                             f"{self.num_layers} layers")

    def layer_window(self, layer: int) -> Optional[int]:
        """The attention window of `layer`, or None for full attention."""
        if self.sliding_window is None or not self.sliding_window_layers:
            return None
        return self.sliding_window if self.sliding_window_layers[layer] else None

    @property
    def qkv_size(self) -> int:
        return (self.num_heads + 2 * self.num_kv_heads) * self.head_dim

    @classmethod
    def from_hf_config(cls, config: Mapping[str, Any]) -> "ModelArchConfig":
        """Build from a transformers config dict (``config.json`` or ``PretrainedConfig.to_dict()``)."""
        architecture = _architecture(config)
        family = architecture[: -len("ForCausalLM")].lower()
        if config.get("hidden_act", "silu") not in ("silu", "swish"):
            raise ValueError(f"{architecture}: hidden_act {config['hidden_act']!r} is not supported (only silu)")
        if config.get("mlp_bias", False):
            raise ValueError(f"{architecture}: mlp_bias=True is not supported")
        num_heads = int(config["num_attention_heads"])
        num_layers = int(config["num_hidden_layers"])
        head_dim = config.get("head_dim") or int(config["hidden_size"]) // num_heads
        rope_theta, rope_scaling = _rope(config, architecture)
        window, window_layers = _sliding_window(config, family, num_layers)
        attention_bias = bool(config.get("attention_bias", False))
        eos = config.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        return cls(
            architecture=architecture,
            vocab_size=int(config["vocab_size"]),
            hidden_size=int(config["hidden_size"]),
            intermediate_size=int(config["intermediate_size"]),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=int(config.get("num_key_value_heads") or num_heads),
            head_dim=int(head_dim),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            rms_norm_eps=float(config.get("rms_norm_eps", 1e-6)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
            qkv_bias=family == "qwen2" or attention_bias,
            o_bias=family in ("llama", "mistral") and attention_bias,
            qk_norm=family == "qwen3",
            sliding_window=window,
            sliding_window_layers=window_layers,
            max_position_embeddings=int(config.get("max_position_embeddings", 2048)),
            bos_token_id=config.get("bos_token_id"),
            eos_token_ids=tuple(int(e) for e in eos_ids),
        )


def _architecture(config: Mapping[str, Any]) -> str:
    names = config.get("architectures") or []
    if not names and config.get("model_type") in _ARCH_BY_MODEL_TYPE:
        names = [_ARCH_BY_MODEL_TYPE[config["model_type"]]]
    for name in names:
        if name in SUPPORTED_ARCHITECTURES:
            return name
    shown = ", ".join(names) if names else f"model_type={config.get('model_type')!r}"
    raise ValueError(f"unsupported architecture {shown}; surge supports {', '.join(SUPPORTED_ARCHITECTURES)}")


def _rope(config: Mapping[str, Any], architecture: str) -> tuple[float, Optional[RopeScaling]]:
    # transformers >= 5 keeps theta and scaling together in `rope_parameters`; older configs
    # have a top-level `rope_theta` and an optional `rope_scaling` dict.
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    theta = params.get("rope_theta", config.get("rope_theta", scaling.get("rope_theta", 10000.0)))
    merged = {**scaling, **params}
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    if rope_type in (None, "default"):
        return float(theta), None
    if rope_type != "llama3":
        raise ValueError(f"{architecture}: rope scaling type {rope_type!r} is not supported (default or llama3)")
    try:
        return float(theta), RopeScaling(
            factor=float(merged["factor"]),
            low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
        )
    except KeyError as exc:
        raise ValueError(f"{architecture}: llama3 rope scaling lacks the key {exc.args[0]!r}") from None


def _sliding_window(config: Mapping[str, Any], family: str, num_layers: int) -> tuple[Optional[int], Tuple[bool, ...]]:
    window = config.get("sliding_window")
    if family == "llama" or (family in ("qwen2", "qwen3") and not config.get("use_sliding_window", False)):
        window = None
    if window is None:
        return None, ()
    if family == "mistral":  # transformers applies Mistral's window to every layer
        flags = (True,) * num_layers
    elif config.get("layer_types"):
        flags = tuple(t == "sliding_attention" for t in config["layer_types"])
    else:
        first = int(config.get("max_window_layers", num_layers))
        flags = tuple(i >= first for i in range(num_layers))
    return (int(window), flags) if any(flags) else (None, ())
