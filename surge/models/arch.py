"""The shape of a decoder-only model, independent of where its weights come from.

In: a Hugging Face ``config.json`` dict (Llama, Qwen2, Qwen3, Mistral, Gemma 2/3,
Phi-3, Mixtral, Qwen2-MoE, Qwen3-MoE, Llama 4 text) or, via the GGUF reader, metadata
mapped to the same keys. Out: a frozen ``ModelArchConfig`` that the decoder, the loader
and the engine (to size the KV cache) read. What sets each newer family apart is read
by its own module (surge.models.gemma, .phi3, .moe_config, .llama4) into the fields below.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping, Optional, Tuple, Union

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "MistralForCausalLM",
                           "Gemma2ForCausalLM", "Gemma3ForCausalLM", "Phi3ForCausalLM", "MixtralForCausalLM",
                           "Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "Llama4ForCausalLM")

# model_type -> architecture, for configs that carry no `architectures` list.
_ARCH_BY_MODEL_TYPE = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
                       "mistral": "MistralForCausalLM", "gemma2": "Gemma2ForCausalLM",
                       "gemma3_text": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM", "mixtral": "MixtralForCausalLM",
                       "qwen2_moe": "Qwen2MoeForCausalLM", "qwen3_moe": "Qwen3MoeForCausalLM",
                       "llama4_text": "Llama4ForCausalLM"}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """Llama 3 frequency scaling (the only rope_scaling type supported)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int


@dataclasses.dataclass(frozen=True)
class LinearRopeScaling:
    """Positions divided by `factor` (Gemma 3's global layers)."""

    factor: float


@dataclasses.dataclass(frozen=True)
class LongRopeScaling:
    """Phi-3's longrope: per-frequency divisors, `short_factor` for positions below
    `original_max_position_embeddings`, `long_factor` from there on; cos/sin scaled by `attention_factor`."""

    short_factor: Tuple[float, ...]
    long_factor: Tuple[float, ...]
    original_max_position_embeddings: int
    attention_factor: float


AnyRopeScaling = Union[RopeScaling, LinearRopeScaling, LongRopeScaling]


@dataclasses.dataclass(frozen=True)
class MoEConfig:
    """A mixture-of-experts MLP: each token runs `top_k` of `num_experts` gated experts."""

    num_experts: int
    top_k: int
    # Width of each expert's gated MLP.
    intermediate_size: int
    # Renormalise the top-k softmax weights to sum to 1 (Mixtral always; Qwen by norm_topk_prob).
    normalize_top_k: bool
    # One flag per layer: is that layer's MLP the MoE (else the dense MLP of `intermediate_size`)?
    layers: Tuple[bool, ...]
    # Width of the always-on shared expert (0: none) and whether a sigmoid gate scales it (Qwen2-MoE).
    shared_intermediate_size: int = 0
    shared_expert_gate: bool = False
    # Checkpoint tensor naming: "mixtral" (block_sparse_moe.experts.N.w1/w3/w2), "qwen" (mlp.experts.N.*)
    # or "llama4" (feed_forward.experts.gate_up_proj / down_proj, stacked [E, in, out]).
    naming: str = "qwen"
    # "softmax": top-k of the softmax, weighting each expert's output (Mixtral, Qwen); "sigmoid": top-k of
    # the logits, their sigmoid scaling each expert's input (Llama 4).
    routing: str = "softmax"

    def __post_init__(self) -> None:
        if not 0 < self.top_k <= self.num_experts:
            raise ValueError(f"MoE top_k ({self.top_k}) must be in [1, num_experts={self.num_experts}]")
        if self.naming not in ("mixtral", "qwen", "llama4"):
            raise ValueError(f"MoE naming {self.naming!r} is not mixtral, qwen or llama4")
        if self.routing not in ("softmax", "sigmoid"):
            raise ValueError(f"MoE routing {self.routing!r} is not softmax or sigmoid")


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
    rope_scaling: Optional[AnyRopeScaling] = None
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
    # Leading dims of each head that RoPE rotates (Phi's partial_rotary_factor); None = all of head_dim.
    rotary_dim: Optional[int] = None
    # RoPE base of the sliding-window layers when it differs from rope_theta (Gemma 3); unscaled.
    local_rope_theta: Optional[float] = None
    # The gated MLP's activation: "silu" or "gelu_tanh" (GeGLU, Gemma).
    hidden_act: str = "silu"
    # RMSNorm scales by (1 + weight), computed in float32 (Gemma).
    norm_unit_offset: bool = False
    # Norms on the attention and MLP outputs too, before each residual add (Gemma 2/3).
    sandwich_norms: bool = False
    # Multiplier of the token embeddings (Gemma: sqrt(hidden_size)); None = 1.
    embed_scale: Optional[float] = None
    # Attention score scale; None = head_dim ** -0.5 (Gemma: query_pre_attn_scalar ** -0.5).
    attention_scale: Optional[float] = None
    # cap * tanh(x / cap) on the attention scores and on the final logits (Gemma 2).
    attn_logit_soft_cap: Optional[float] = None
    final_logit_soft_cap: Optional[float] = None
    # q/k/v and gate/up stored fused in the checkpoint (Phi-3's qkv_proj and gate_up_proj).
    fused_checkpoint: bool = False
    # Mixture-of-experts MLP (Mixtral, Qwen2-MoE, Qwen3-MoE, Llama 4); None = dense.
    moe: Optional[MoEConfig] = None
    # Chunked local attention (Llama 4): the flagged layers see only keys of the token's own chunk.
    attention_chunk_size: Optional[int] = None
    chunked_layers: Tuple[bool, ...] = ()
    # One flag per layer: that layer applies no RoPE (Llama 4's global layers). Empty: every layer rotates.
    nope_layers: Tuple[bool, ...] = ()
    # RoPE rotates adjacent pairs (x[2i], x[2i+1]) instead of the two halves (Llama 4).
    rope_interleaved: bool = False
    # Weightless RMS norm of q and k after RoPE, on RoPE layers (Llama 4's use_qk_norm).
    qk_l2_norm: bool = False
    # (floor_scale, attn_scale): NoPE layers scale q by log1p(floor((pos + 1) / floor_scale)) * attn_scale + 1.
    attn_temperature: Optional[Tuple[float, float]] = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        if self.sliding_window_layers and len(self.sliding_window_layers) != self.num_layers:
            raise ValueError(f"sliding_window_layers has {len(self.sliding_window_layers)} entries for "
                             f"{self.num_layers} layers")
        if self.hidden_act not in ("silu", "gelu_tanh"):
            raise ValueError(f"hidden_act {self.hidden_act!r} is not silu or gelu_tanh")
        if self.rotary_dim is not None and (self.rotary_dim % 2 or not 0 < self.rotary_dim <= self.head_dim):
            raise ValueError(f"rotary_dim {self.rotary_dim} must be even and in (0, head_dim={self.head_dim}]")
        if self.moe is not None and len(self.moe.layers) != self.num_layers:
            raise ValueError(f"moe.layers has {len(self.moe.layers)} entries for {self.num_layers} layers")
        for name in ("chunked_layers", "nope_layers"):
            flags = getattr(self, name)
            if flags and len(flags) != self.num_layers:
                raise ValueError(f"{name} has {len(flags)} entries for {self.num_layers} layers")
        if self.chunked_layers and any(self.chunked_layers) and not (self.attention_chunk_size or 0) > 0:
            raise ValueError(f"chunked layers need a positive attention_chunk_size, not {self.attention_chunk_size}")

    def layer_chunk(self, layer: int) -> Optional[int]:
        """The attention chunk of `layer`, or None when it is not a chunked layer."""
        return self.attention_chunk_size if self.chunked_layers and self.chunked_layers[layer] else None

    def kv_reach(self) -> Optional[int]:
        """Trailing tokens the next token may read in any layer (a window, or a chunk: a token sees at most
        chunk - 1 earlier keys); None when some layer reads the whole sequence. Pages behind it are free."""
        reaches = [self.layer_window(i) or self.layer_chunk(i) for i in range(self.num_layers)]
        return None if any(r is None for r in reaches) else max(reaches)

    def first_needed_key(self, position: int) -> int:
        """The earliest key position any layer reads for a token at `position` (and so for every later one):
        position - window + 1 on a windowed layer, the start of its chunk on a chunked one, 0 on a global one."""
        first = position
        for i in range(self.num_layers):
            window, chunk = self.layer_window(i), self.layer_chunk(i)
            if window is None and chunk is None:
                return 0
            if window is not None:
                first = min(first, position - window + 1)
            if chunk is not None:
                first = min(first, position // chunk * chunk)
        return max(0, first)

    def layer_uses_rope(self, layer: int) -> bool:
        return not (self.nope_layers and self.nope_layers[layer])

    @property
    def rope_dim(self) -> int:
        return self.rotary_dim or self.head_dim

    def layer_rope(self, layer: int) -> int:
        """Which RoPE table of rope.rope_inputs `layer` uses: 0 (rope_theta) or 1 (local_rope_theta)."""
        return 1 if self.local_rope_theta is not None and self.layer_window(layer) is not None else 0

    def layer_is_moe(self, layer: int) -> bool:
        return self.moe is not None and self.moe.layers[layer]

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
        readers = _family_readers()
        if family in readers:
            return cls(**readers[family](config, architecture))
        return cls(**base_fields(config, architecture))


def base_fields(config: Mapping[str, Any], architecture: str) -> dict:
    """The fields every family shares, read the Llama way; family readers start from these."""
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
    return dict(
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
        qk_norm=family in ("qwen3", "qwen3moe"),
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


def rope_params(config: Mapping[str, Any]) -> dict:
    """theta and scaling keys in one dict: transformers >= 5 keeps them in `rope_parameters`, older
    configs have a top-level `rope_theta` and an optional `rope_scaling` dict."""
    params = dict(config.get("rope_parameters") or {})
    scaling = dict(config.get("rope_scaling") or {})
    merged = {**scaling, **params}
    merged.setdefault("rope_theta", config.get("rope_theta", 10000.0))
    return merged


def _rope(config: Mapping[str, Any], architecture: str) -> tuple[float, Optional[AnyRopeScaling]]:
    return rope_from_params(rope_params(config), config, architecture)


def rope_from_params(merged: Mapping[str, Any], config: Mapping[str, Any],
                     architecture: str) -> tuple[float, Optional[AnyRopeScaling]]:
    theta = float(merged.get("rope_theta", 10000.0))
    rope_type = merged.get("rope_type", merged.get("type", "default"))
    try:
        if rope_type in (None, "default"):
            return theta, None
        if rope_type == "linear":
            return theta, LinearRopeScaling(factor=float(merged["factor"]))
        if rope_type == "llama3":
            return theta, RopeScaling(
                factor=float(merged["factor"]),
                low_freq_factor=float(merged["low_freq_factor"]),
                high_freq_factor=float(merged["high_freq_factor"]),
                original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
            )
        if rope_type in ("longrope", "su"):
            return theta, _long_rope(merged, config)
    except KeyError as exc:
        raise ValueError(f"{architecture}: {rope_type} rope scaling lacks the key {exc.args[0]!r}") from None
    raise ValueError(f"{architecture}: rope scaling type {rope_type!r} is not supported "
                     "(default, linear, llama3, longrope)")


def _long_rope(merged: Mapping[str, Any], config: Mapping[str, Any]) -> LongRopeScaling:
    original = int(merged.get("original_max_position_embeddings") or config["original_max_position_embeddings"])
    attention_factor = merged.get("attention_factor")
    if attention_factor is None:  # as the LongRoPE paper (and transformers) derive it
        factor = merged.get("factor") or int(config.get("max_position_embeddings", original)) / original
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(original))
    return LongRopeScaling(short_factor=tuple(float(f) for f in merged["short_factor"]),
                           long_factor=tuple(float(f) for f in merged["long_factor"]),
                           original_max_position_embeddings=original, attention_factor=float(attention_factor))


def _sliding_window(config: Mapping[str, Any], family: str, num_layers: int) -> tuple[Optional[int], Tuple[bool, ...]]:
    window = config.get("sliding_window")
    if family == "llama" or (family in ("qwen2", "qwen3", "qwen2moe", "qwen3moe")
                             and not config.get("use_sliding_window", False)):
        window = None
    if not window:
        return None, ()
    if family in ("mistral", "mixtral", "phi3"):  # transformers applies these windows to every layer
        flags = (True,) * num_layers
    elif config.get("layer_types"):
        flags = tuple(t == "sliding_attention" for t in config["layer_types"])
    else:
        first = int(config.get("max_window_layers", num_layers))
        flags = tuple(i >= first for i in range(num_layers))
    return (int(window), flags) if any(flags) else (None, ())


def _family_readers() -> dict:
    from surge.models import gemma, llama4, moe_config, phi3

    return {"gemma2": gemma.arch_fields, "gemma3": gemma.arch_fields, "phi3": phi3.arch_fields,
            "llama4": llama4.arch_fields,
            "mixtral": moe_config.arch_fields, "qwen2moe": moe_config.arch_fields,
            "qwen3moe": moe_config.arch_fields}
