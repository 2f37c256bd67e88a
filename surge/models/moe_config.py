"""What the mixture-of-experts families put in config.json and in their checkpoints.

In: a transformers config dict of Mixtral, Qwen2-MoE or Qwen3-MoE (Llama 4's is read
by surge.models.llama4; its tensor names are here too). Out: the
ModelArchConfig fields (``arch_fields``, the shared ones read by arch.base_fields
plus a MoEConfig), and the Hugging Face tensor names and shapes of one MoE layer
(``moe_names``, ``moe_hf_shapes``) that the weight loader reads.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping

from surge.models.arch import ModelArchConfig, MoEConfig, base_fields


def arch_fields(config: Mapping[str, Any], architecture: str) -> dict:
    fields = base_fields(config, architecture)
    num_layers = fields["num_layers"]
    num_experts = int(config.get("num_experts") or config.get("num_local_experts") or 0)
    top_k = int(config["num_experts_per_tok"])
    if architecture == "MixtralForCausalLM":
        moe = MoEConfig(num_experts=num_experts, top_k=top_k, intermediate_size=int(config["intermediate_size"]),
                        normalize_top_k=True, layers=(True,) * num_layers, naming="mixtral")
        return {**fields, "moe": moe}
    # Qwen2-MoE and Qwen3-MoE: layers listed in mlp_only_layers, and all but every decoder_sparse_step-th, are dense.
    dense_layers = set(config.get("mlp_only_layers") or ())
    step = int(config.get("decoder_sparse_step", 1) or 1)
    layers = tuple(num_experts > 0 and i not in dense_layers and (i + 1) % step == 0 for i in range(num_layers))
    shared = int(config.get("shared_expert_intermediate_size", 0) or 0) if architecture == "Qwen2MoeForCausalLM" else 0
    moe = MoEConfig(num_experts=num_experts, top_k=top_k,
                    intermediate_size=int(config["moe_intermediate_size"]),
                    normalize_top_k=bool(config.get("norm_topk_prob", False)), layers=layers,
                    shared_intermediate_size=shared, shared_expert_gate=shared > 0, naming="qwen")
    if architecture == "Qwen2MoeForCausalLM":
        fields["qkv_bias"] = bool(config.get("qkv_bias", True))
    return {**fields, "moe": moe if any(layers) else None}


@dataclasses.dataclass(frozen=True)
class MoENames:
    prefix: str
    naming: str

    @property
    def _block(self) -> str:
        return self.prefix + {"mixtral": "block_sparse_moe.", "qwen": "mlp.", "llama4": "feed_forward."}[self.naming]

    @property
    def fused(self) -> bool:
        """Experts stored stacked: experts.gate_up_proj [E, hidden, 2 I] and experts.down_proj [E, I, hidden]."""
        return self.naming == "llama4"

    @property
    def router(self) -> str:
        return self._block + ("router.weight" if self.naming == "llama4" else "gate.weight")

    experts_gate_up = property(lambda self: self._block + "experts.gate_up_proj")
    experts_down = property(lambda self: self._block + "experts.down_proj")

    def _expert(self, e: int, mixtral: str, qwen: str) -> str:
        return f"{self._block}experts.{e}.{mixtral if self.naming == 'mixtral' else qwen}.weight"

    def expert_gate(self, e: int) -> str:
        return self._expert(e, "w1", "gate_proj")

    def expert_up(self, e: int) -> str:
        return self._expert(e, "w3", "up_proj")

    def expert_down(self, e: int) -> str:
        return self._expert(e, "w2", "down_proj")

    shared_gate_proj = property(lambda self: self._block + "shared_expert.gate_proj.weight")
    shared_up_proj = property(lambda self: self._block + "shared_expert.up_proj.weight")
    shared_down_proj = property(lambda self: self._block + "shared_expert.down_proj.weight")
    shared_expert_gate = property(lambda self: self._block + "shared_expert_gate.weight")


def moe_names(arch: ModelArchConfig, prefix: str) -> MoENames:
    return MoENames(prefix, arch.moe.naming)


def moe_hf_shapes(arch: ModelArchConfig, prefix: str) -> Dict[str, tuple]:
    moe, hidden = arch.moe, arch.hidden_size
    names = moe_names(arch, prefix)
    shapes = {names.router: (moe.num_experts, hidden)}
    if names.fused:
        shapes.update({names.experts_gate_up: (moe.num_experts, hidden, 2 * moe.intermediate_size),
                       names.experts_down: (moe.num_experts, moe.intermediate_size, hidden)})
    for e in range(0 if names.fused else moe.num_experts):
        shapes.update({names.expert_gate(e): (moe.intermediate_size, hidden),
                       names.expert_up(e): (moe.intermediate_size, hidden),
                       names.expert_down(e): (hidden, moe.intermediate_size)})
    if moe.shared_intermediate_size:
        shared = moe.shared_intermediate_size
        shapes.update({names.shared_gate_proj: (shared, hidden), names.shared_up_proj: (shared, hidden),
                       names.shared_down_proj: (hidden, shared)})
    if moe.shared_expert_gate:
        shapes[names.shared_expert_gate] = (1, hidden)
    return shapes
