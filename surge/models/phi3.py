"""What sets Phi-3 / Phi-3.5 apart, read from its config.json.

In: a transformers Phi3 config dict. Out: ModelArchConfig fields: q/k/v and gate/up
stored fused in the checkpoint (qkv_proj, gate_up_proj), longrope ("su") RoPE
scaling with short and long factors (arch.rope_from_params), and a partial rotary
dimension where partial_rotary_factor < 1.
"""

from __future__ import annotations

from typing import Any, Mapping

from surge.models.arch import base_fields, rope_params


def arch_fields(config: Mapping[str, Any], architecture: str) -> dict:
    fields = base_fields(config, architecture)
    factor = float(rope_params(config).get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0)))
    rotary_dim = int(fields["head_dim"] * factor)
    fields.update(fused_checkpoint=True, rotary_dim=rotary_dim if rotary_dim < fields["head_dim"] else None)
    return fields
