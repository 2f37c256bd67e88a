"""What sets Gemma 2 and Gemma 3 (text) apart, read from their config.json.

In: a transformers Gemma2/Gemma3(Text) config dict. Out: ModelArchConfig fields:
GeGLU with tanh GELU, RMSNorm scaled by (1 + weight), four norms per layer
(sandwich_norms), embeddings times sqrt(hidden_size), scores scaled by
query_pre_attn_scalar ** -0.5, attention and final-logit soft caps (Gemma 2),
q/k norms (Gemma 3), alternating sliding / global layers, and for Gemma 3 a RoPE
base of its own on the sliding layers (the global one may be linearly scaled).
"""

from __future__ import annotations

from typing import Any, Mapping, Optional, Tuple

from surge.models.arch import base_fields, rope_from_params, rope_params

_TANH_GELUS = ("gelu_pytorch_tanh", "gelu_tanh")


def arch_fields(config: Mapping[str, Any], architecture: str) -> dict:
    gemma3 = architecture == "Gemma3ForCausalLM"
    act = config.get("hidden_activation") or config.get("hidden_act") or "gelu_pytorch_tanh"
    if act not in _TANH_GELUS:
        raise ValueError(f"{architecture}: hidden_activation {act!r} is not supported (only gelu_pytorch_tanh)")
    if config.get("use_bidirectional_attention"):
        raise ValueError(f"{architecture}: use_bidirectional_attention=True (an encoder) is not supported")
    fields = base_fields({k: v for k, v in config.items() if k not in ("hidden_act", "hidden_activation")},
                         architecture)
    num_layers = fields["num_layers"]
    window = config.get("sliding_window")
    flags = _sliding_layers(config, num_layers, gemma3) if window else ()
    attention_bias = bool(config.get("attention_bias", False))
    fields.update(
        hidden_act="gelu_tanh",
        norm_unit_offset=True,
        sandwich_norms=True,
        embed_scale=float(fields["hidden_size"]) ** 0.5,
        attention_scale=float(config.get("query_pre_attn_scalar", fields["head_dim"])) ** -0.5,
        attn_logit_soft_cap=_cap(config.get("attn_logit_softcapping")),
        final_logit_soft_cap=_cap(config.get("final_logit_softcapping")),
        qk_norm=gemma3,
        qkv_bias=attention_bias,
        o_bias=attention_bias,
        tie_word_embeddings=bool(config.get("tie_word_embeddings", True)),
        sliding_window=int(window) if window and any(flags) else None,
        sliding_window_layers=flags if window and any(flags) else (),
    )
    if gemma3:
        theta, scaling, local_theta = _gemma3_rope(config, architecture)
        fields.update(rope_theta=theta, rope_scaling=scaling, local_rope_theta=local_theta)
    return fields


def _cap(value) -> Optional[float]:
    return float(value) if value else None


def _sliding_layers(config: Mapping[str, Any], num_layers: int, gemma3: bool) -> Tuple[bool, ...]:
    if config.get("layer_types"):
        return tuple(t == "sliding_attention" for t in config["layer_types"])
    # Configs from before layer_types: Gemma 2 alternates (sliding first); Gemma 3 has one global
    # layer in every sliding_window_pattern.
    pattern = int(config.get("sliding_window_pattern") or config.get("_sliding_window_pattern") or 6) if gemma3 else 2
    return tuple(bool((i + 1) % pattern) for i in range(num_layers))


def _gemma3_rope(config: Mapping[str, Any], architecture: str):
    params = config.get("rope_parameters") or {}
    if "full_attention" in params:  # transformers >= 5: one RoPE dict per layer type
        theta, scaling = rope_from_params(params["full_attention"], config, architecture)
        local = params.get("sliding_attention") or {}
        local_theta, local_scaling = rope_from_params({"rope_theta": 10000.0, **local}, config, architecture)
    else:
        merged = {**rope_params(config), "rope_theta": params.get("rope_theta", config.get("rope_theta", 1_000_000.0))}
        theta, scaling = rope_from_params(merged, config, architecture)
        local_theta, local_scaling = float(config.get("rope_local_base_freq", 10000.0)), None
    if local_scaling is not None:
        raise ValueError(f"{architecture}: rope scaling on the sliding-window layers is not supported")
    return theta, scaling, local_theta
