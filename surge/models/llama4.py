"""What sets Llama 4 (text) apart, read from its config.json.

In: a transformers Llama4Text config dict (model_type llama4_text, Llama4ForCausalLM).
Out: ModelArchConfig fields: chunked local attention (attention_chunk_size) on the
RoPE layers, global NoPE layers between them (no_rope_layers holds 1 where a layer
rotates) whose queries get the attention-temperature scale, interleaved-pair RoPE,
weightless q/k RMS norms after RoPE, and MoE layers (moe_layers, or every
interleave_moe_layer_step-th) routing each token through top-k sigmoid-scaled
experts beside an always-on shared expert; dense layers use intermediate_size_mlp.
"""

from __future__ import annotations

from typing import Any, Mapping

from surge.models.arch import MoEConfig, base_fields


def arch_fields(config: Mapping[str, Any], architecture: str) -> dict:
    fields = base_fields(config, architecture)
    num_layers = fields["num_layers"]
    interval = int(config.get("no_rope_layer_interval", 4))
    rope_flags = config.get("no_rope_layers") or [int((i + 1) % interval != 0) for i in range(num_layers)]
    nope = tuple(not bool(flag) for flag in rope_flags)
    chunk = config.get("attention_chunk_size")
    if config.get("layer_types"):
        unknown = set(config["layer_types"]) - {"chunked_attention", "full_attention"}
        if unknown:
            raise ValueError(f"{architecture}: layer types {sorted(unknown)} are not supported")
        chunked = tuple(t == "chunked_attention" for t in config["layer_types"])
    else:
        chunked = tuple(bool(chunk) and not n for n in nope)
    step = int(config.get("interleave_moe_layer_step", 1))
    moe_layers = config.get("moe_layers")
    moe_layers = set(moe_layers if moe_layers is not None else range(step - 1, num_layers, step))
    layers = tuple(i in moe_layers for i in range(num_layers))
    inter = int(config["intermediate_size"])
    moe = MoEConfig(num_experts=int(config["num_local_experts"]), top_k=int(config["num_experts_per_tok"]),
                    intermediate_size=inter, normalize_top_k=False, layers=layers, shared_intermediate_size=inter,
                    naming="llama4", routing="sigmoid") if any(layers) else None
    attention_bias = bool(config.get("attention_bias", False))
    fields.update(
        intermediate_size=int(config.get("intermediate_size_mlp", inter)),
        moe=moe,
        o_bias=attention_bias,
        attention_chunk_size=int(chunk) if chunk and any(chunked) else None,
        chunked_layers=chunked if chunk and any(chunked) else (),
        nope_layers=nope if any(nope) else (),
        rope_interleaved=True,
        qk_l2_norm=bool(config.get("use_qk_norm", True)),
        attn_temperature=((float(config.get("floor_scale", 8192)), float(config.get("attn_scale", 0.1)))
                          if config.get("attn_temperature_tuning", True) and any(nope) else None),
    )
    return fields
