"""GGUF files of the newer families (gemma2, gemma3, phi3, qwen2moe, qwen3moe, llama4, and Mixtral as llama with
experts) against their safetensors twins.

Each tiny random transformers model is saved as safetensors and written as GGUF the way llama.cpp's converter
writes it: tensor names from gguf's own name map, experts stacked per projection (Llama 4's fused gate_up split
and transposed), Gemma norms stored as 1 + w, llama q/k rows interleaved per head, Phi-3's longrope factors as
tensors, metadata under gguf's keys only (what llama.cpp does not store, the configs here set to llama.cpp's
assumptions: Gemma 3 one global layer in six, Llama 4 8192-token chunks and temperature defaults). In float32 the
GGUF must give the same architecture and bit-identical parameters; in Q8_0 (every matrix and expert stack) its
logits must match the twin's within Q8_0's error and the parameters be the twin's Q8_0 round trip.
"""

from __future__ import annotations

import dataclasses

import gguf
import numpy as np
import pytest
import transformers

from family_oracle import PROMPTS, make_checkpoint
from conftest import PagedModel
from surge.models import load_model

DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}
# Factors exact in float32 (GGUF stores them as float32 tensors).
LONGROPE = {"rope_type": "longrope", "rope_theta": 10000.0, "original_max_position_embeddings": 64,
            "short_factor": [1.0 + i / 16 for i in range(8)], "long_factor": [2.0 + i / 4 for i in range(8)]}
FAMILIES = {
    "gemma2": ("gemma2", transformers.Gemma2Config,
               dict(head_dim=16, num_hidden_layers=4, sliding_window=4, query_pre_attn_scalar=16,
                    attn_logit_softcapping=0.5, final_logit_softcapping=2.0, eos_token_id=2,
                    layer_types=["sliding_attention", "full_attention"] * 2, rope_parameters=DEFAULT_ROPE)),
    "gemma3": ("gemma3", transformers.Gemma3TextConfig,
               dict(head_dim=16, num_hidden_layers=6, sliding_window=4, query_pre_attn_scalar=16, eos_token_id=2,
                    layer_types=["sliding_attention"] * 5 + ["full_attention"],
                    rope_parameters={"full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
                                     "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})),
    "phi3": ("phi3", transformers.Phi3Config,
             dict(rope_parameters=LONGROPE, original_max_position_embeddings=64, max_position_embeddings=256,
                  sliding_window=5)),
    "mixtral": ("llama", transformers.MixtralConfig,
                dict(num_local_experts=4, num_experts_per_tok=2, num_hidden_layers=2, rope_parameters=DEFAULT_ROPE)),
    "qwen2_moe": ("qwen2moe", transformers.Qwen2MoeConfig,
                  dict(num_experts=4, num_experts_per_tok=2, num_hidden_layers=3, moe_intermediate_size=48,
                       shared_expert_intermediate_size=96, norm_topk_prob=False,
                       rope_parameters=DEFAULT_ROPE)),
    "qwen3_moe": ("qwen3moe", transformers.Qwen3MoeConfig,
                  dict(num_experts=4, num_experts_per_tok=2, num_hidden_layers=2, moe_intermediate_size=48,
                       head_dim=24, norm_topk_prob=True, rope_parameters=DEFAULT_ROPE)),
    "llama4": ("llama4", transformers.Llama4TextConfig,
               dict(num_hidden_layers=4, head_dim=16, intermediate_size=48, intermediate_size_mlp=96,
                    num_local_experts=4, num_experts_per_tok=2, interleave_moe_layer_step=2,
                    attention_chunk_size=8192, no_rope_layers=[1, 1, 1, 0], floor_scale=8192, attn_scale=0.1,
                    rope_parameters=DEFAULT_ROPE)),
}
_ARCH = {"gemma2": gguf.MODEL_ARCH.GEMMA2, "gemma3": gguf.MODEL_ARCH.GEMMA3, "phi3": gguf.MODEL_ARCH.PHI3,
         "llama": gguf.MODEL_ARCH.LLAMA, "qwen2moe": gguf.MODEL_ARCH.QWEN2MOE, "qwen3moe": gguf.MODEL_ARCH.QWEN3MOE,
         "llama4": gguf.MODEL_ARCH.LLAMA4}
Q8 = gguf.GGMLQuantizationType.Q8_0


def _quantizable(array: np.ndarray) -> bool:
    return array.ndim >= 2 and array.shape[-1] % 32 == 0


def _saved_tensors(directory) -> dict:
    """The tensors of a saved checkpoint as stored (what llama.cpp's converter reads), by name."""
    import glob

    from safetensors.numpy import load_file

    tensors = {}
    for file in sorted(glob.glob(f"{directory}/*.safetensors")):
        tensors.update(load_file(file))
    return tensors


def write_gguf(path, ckpt, gguf_arch: str, quantize: bool = False) -> str:
    """The saved checkpoint as llama.cpp's converter writes it (float32, or Q8_0 for every matrix that takes it)."""
    cfg = ckpt.hf_model.config
    n_layers = cfg.num_hidden_layers
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(path), gguf_arch)
    writer.add_block_count(n_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(getattr(cfg, "intermediate_size_mlp", None) or cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    rope = cfg.rope_parameters.get("full_attention", cfg.rope_parameters)
    writer.add_rope_freq_base(rope["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    if getattr(cfg, "sliding_window", None):
        writer.add_sliding_window(cfg.sliding_window)
    if gguf_arch == "gemma2":
        writer.add_attn_logit_softcapping(cfg.attn_logit_softcapping)
        writer.add_final_logit_softcapping(cfg.final_logit_softcapping)
    if gguf_arch == "gemma3":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(rope["factor"])
    if gguf_arch == "phi3":
        writer.add_rope_dimension_count(int(head_dim * cfg.rope_parameters.get("partial_rotary_factor", 1.0)))
        writer.add_rope_scaling_orig_ctx_len(cfg.rope_parameters["original_max_position_embeddings"])
        writer.add_tensor("rope_factors_long.weight", np.asarray(cfg.rope_parameters["long_factor"], np.float32))
        writer.add_tensor("rope_factors_short.weight", np.asarray(cfg.rope_parameters["short_factor"], np.float32))
    num_experts = getattr(cfg, "num_local_experts", None) or getattr(cfg, "num_experts", None)
    if num_experts:
        writer.add_expert_count(num_experts)
        writer.add_expert_used_count(cfg.num_experts_per_tok)
        writer.add_expert_feed_forward_length(getattr(cfg, "moe_intermediate_size", None) or cfg.intermediate_size)
        if getattr(cfg, "shared_expert_intermediate_size", None):
            writer.add_expert_shared_feed_forward_length(cfg.shared_expert_intermediate_size)
    if gguf_arch == "llama4":
        writer.add_interleave_moe_layer_step(cfg.interleave_moe_layer_step)

    names = gguf.get_tensor_name_map(_ARCH[gguf_arch], n_layers)
    tensors = {}
    experts = {}  # (layer, projection) -> {expert: [out, in]}
    for hf_name, array in _saved_tensors(ckpt.path).items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = array.astype(np.float32)
        layer = int(hf_name.split(".")[2]) if hf_name.startswith("model.layers.") else None
        if ".experts." in hf_name and gguf_arch == "llama4":  # [E, hidden, 2 I] / [E, I, hidden] stacks
            if hf_name.endswith("gate_up_proj"):
                gate, up = np.split(array.transpose(0, 2, 1), 2, axis=1)
                tensors[f"blk.{layer}.ffn_gate_exps.weight"] = gate
                tensors[f"blk.{layer}.ffn_up_exps.weight"] = up
            else:
                tensors[f"blk.{layer}.ffn_down_exps.weight"] = array.transpose(0, 2, 1)
            continue
        if ".experts." in hf_name:  # experts.{e}.{w1|gate_proj}.weight ...
            expert, proj = hf_name.split(".experts.")[1].split(".")[:2]
            proj = {"w1": "gate", "w3": "up", "w2": "down"}.get(proj, proj.replace("_proj", ""))
            experts.setdefault((layer, proj), {})[int(expert)] = array
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, f"gguf has no name for {hf_name}"
        if gguf_arch in ("gemma2", "gemma3") and hf_name.endswith("norm.weight"):
            array = array + 1.0
        if gguf_arch == "llama" and (".q_proj." in hf_name or ".k_proj." in hf_name):
            heads = cfg.num_attention_heads if ".q_proj." in hf_name else cfg.num_key_value_heads
            array = array.reshape(heads, 2, head_dim // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        if hf_name.endswith("shared_expert_gate.weight"):
            array = array.reshape(-1)
        tensors[name] = array
    for (layer, proj), by_expert in experts.items():
        tensors[f"blk.{layer}.ffn_{proj}_exps.weight"] = np.stack([by_expert[e] for e in sorted(by_expert)])
    for name, array in tensors.items():
        if quantize and _quantizable(array):
            writer.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(array), Q8), raw_dtype=Q8)
        else:
            writer.add_tensor(name, np.ascontiguousarray(array))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


def _q8_round_trip(name: str, array: np.ndarray, gguf_arch: str) -> np.ndarray:
    """`array` (as saved) with every value Q8_0 can hold exactly, along the dimension GGUF blocks it."""
    def trip(x):
        return gguf.quants.dequantize(gguf.quants.quantize(np.ascontiguousarray(x), Q8), Q8).reshape(x.shape)

    if gguf_arch == "llama4" and ".experts." in name:  # GGUF holds these transposed
        flipped = array.transpose(0, 2, 1)
        return trip(flipped).transpose(0, 2, 1) if _quantizable(flipped) else array
    if name.endswith("shared_expert_gate.weight") or not _quantizable(array):  # stays float32 in the GGUF
        return array
    return trip(array)


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def twins(request, tmp_path_factory):
    """(family, float32 checkpoint, its f32 GGUF, a checkpoint whose values Q8_0 holds exactly, its Q8_0 GGUF)."""
    import shutil

    from safetensors.numpy import save_file

    gguf_arch, config_class, config = FAMILIES[request.param]
    directory = tmp_path_factory.mktemp(request.param)
    ckpt = make_checkpoint(config_class, directory / "hf", **config)
    for norm in ckpt.hf_model.modules():  # random norm weights, so a missed (1 + w) or a swapped norm shows
        if type(norm).__name__.endswith("RMSNorm") and getattr(norm, "weight", None) is not None:
            norm.weight.data.normal_(0.0 if "Gemma" in type(norm).__name__ else 1.0, 0.3)
    ckpt.hf_model.save_pretrained(ckpt.path)
    f32 = write_gguf(directory / "f32.gguf", ckpt, gguf_arch)
    # The quantized twin: the same model with its matrices on Q8_0's grid, saved as safetensors; its Q8_0 GGUF
    # then holds the same values (and a bug in reading the blocks cannot hide in quantization error).
    q8_dir = directory / "hf-q8"
    shutil.copytree(ckpt.path, q8_dir)
    for file in q8_dir.glob("*.safetensors"):
        file.unlink()
    tensors = _saved_tensors(ckpt.path)
    save_file({name: np.ascontiguousarray(_q8_round_trip(name, array, gguf_arch)) for name, array in tensors.items()},
              str(q8_dir / "model.safetensors"), metadata={"format": "pt"})
    q8_ckpt = dataclasses.replace(ckpt, path=str(q8_dir))
    q8 = write_gguf(directory / "q8_0.gguf", q8_ckpt, gguf_arch, quantize=True)
    return request.param, ckpt, f32, q8_ckpt, q8


def _params(model) -> dict:
    from flax import nnx

    return {".".join(map(str, path)): np.asarray(value) for path, value in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def _assert_same_model(family, from_gguf, from_dir, gemma_norm_ulp: bool) -> None:
    assert from_gguf.arch.architecture == from_dir.arch.architecture
    # GGUF stores the epsilon as float32; everything else about the architecture must agree.
    assert from_gguf.arch.rms_norm_eps == pytest.approx(from_dir.arch.rms_norm_eps, rel=1e-6)
    assert dataclasses.replace(from_gguf.arch, rms_norm_eps=from_dir.arch.rms_norm_eps) == from_dir.arch
    got, want = _params(from_gguf.model), _params(from_dir.model)
    assert sorted(got) == sorted(want)
    for name in want:
        if gemma_norm_ulp and "norm" in name:  # stored as 1 + w in float32: w back within an ulp of 1
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=2.0 ** -23, err_msg=f"{family}: {name}")
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{family}: {name}")


def _logits(loaded, backend: str) -> np.ndarray:
    return np.concatenate(PagedModel(loaded.model, backend=backend).step([(0, PROMPTS[0]), (1, PROMPTS[1])]))


def test_f32_gguf_gives_the_twins_architecture_parameters_and_logits(twins):
    family, ckpt, f32, _, _ = twins
    from_gguf, from_dir = load_model(f32, tokenizer=ckpt.path), load_model(ckpt.path)
    _assert_same_model(family, from_gguf, from_dir, gemma_norm_ulp=family.startswith("gemma"))
    want = _logits(from_dir, "reference")
    np.testing.assert_allclose(_logits(from_gguf, "reference"), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("dtype", ["float32", "quantized"])
def test_q8_0_gguf_matches_its_twin(twins, dtype):
    # float32: the blocks dequantized on load; quantized: kept as blocks and multiplied so by the cpu backend.
    family, _, _, q8_ckpt, q8 = twins
    from_gguf, from_dir = load_model(q8, tokenizer=q8_ckpt.path, dtype=dtype), load_model(q8_ckpt.path)
    if dtype == "float32":
        _assert_same_model(family, from_gguf, from_dir, gemma_norm_ulp=family.startswith("gemma"))
        raw = load_model(q8_ckpt.path.replace("hf-q8", "hf"))  # the rounding was not a no-op
        assert any(not np.array_equal(a, b) for a, b in zip(_params(raw.model).values(),
                                                            _params(from_dir.model).values()))
    want = _logits(from_dir, "reference")
    got = _logits(from_gguf, "cpu")
    if dtype == "float32":
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        return
    from surge.kernels import quantized

    layer = from_gguf.model.layers[0]
    assert quantized.quant_type(layer.qkv_proj[...]) == "Q8_0" and quantized.quant_type(layer.o_proj[...]) == "Q8_0"
    # The cpu kernel multiplies 8-bit blocks of the activations too: close, not equal.
    assert np.abs(got - want).max() <= 0.1 * np.abs(want).max()


def test_unsupported_gguf_architecture_lists_the_supported_ones(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "falcon.gguf"), "falcon")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(Exception, match=r"unsupported GGUF architecture 'falcon'; surge reads llama, qwen2, qwen3, "
                                        r"qwen2moe, qwen3moe, gemma2, gemma3, phi3, llama4"):
        load_model(str(tmp_path / "falcon.gguf"))
