"""GGUF-quantized weights kept quantized: the int8 matmul kernel, the loader, and the engine.

The kernel (every supported ISA variant) is held to 1e-3 relative of a float64 product over
the dequantized weights and x quantized per block of 32 exactly as the kernel does it
(d = max|x| / 127, q = round-half-even(x / d)); the blocks are the file's own (SmolLM2's
Q4_1 and Q8_0 tensors) and random Q4_0 ones, and random K-quant super-blocks (Q4_K / Q5_K / Q6_K,
built by hand: gguf's Python side cannot quantize to them). Dequantization equals the `gguf`
package's, for the file's blocks, the random ones, and a tiny GGUF written with K-quant tensors.
The engine on the default model.dtype (auto: the GGUF's quantization kept, the cpu backend
multiplying it) holds the embedded model in under 100 MiB, says so in its model log line, gives a
sequence the same greedy tokens batched or alone, and answers sensibly; auto resolves to float
wherever the backend or the checkpoint cannot keep quantized weights.
"""

from __future__ import annotations

import logging

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.kernels import cpu, quantized
from surge.kernels.base import KernelBackend
from surge.kernels.cpu import CpuBackend
from surge.kernels.cpu_matmul import matmul

pytestmark = pytest.mark.skipif(CpuBackend.unavailable_reason() is not None,
                                reason=str(CpuBackend.unavailable_reason()))


@pytest.fixture(scope="module")
def file_tensors(smollm2_gguf):
    reader = gguf.GGUFReader(smollm2_gguf)
    return {t.name: t for t in reader.tensors}


def _blocks(tensor):
    raw = np.asarray(tensor.data, np.uint8)
    return raw.reshape(raw.shape[0], -1, quantized.TYPE_BLOCK_BYTES[tensor.tensor_type.name])


def _random_q4_0(rng, n, k):
    blocks = rng.integers(0, 256, (n, k // 32, 18), dtype=np.uint8)
    scales = (rng.uniform(0.001, 0.05, (n, k // 32))).astype(np.float16).view(np.uint8).reshape(n, k // 32, 2)
    blocks[..., :2] = scales
    return blocks


def _random_k_quant(rng, type_name, n, k):
    """[n, k / 256, block_bytes] random K-quant super-blocks: any bytes, with small finite float16 scales."""
    size = quantized.TYPE_BLOCK_BYTES[type_name]
    blocks = rng.integers(0, 256, (n, k // 256, size), dtype=np.uint8)
    halves = rng.uniform(1e-4, 3e-3, (n, k // 256, 2)).astype(np.float16).view(np.uint8).reshape(n, k // 256, 4)
    if type_name == "Q6_K":
        blocks[..., 208:210] = halves[..., :2]
    else:  # d, dmin
        blocks[..., 0:4] = halves
    return blocks


K_QUANTS = ["Q4_K", "Q5_K", "Q6_K"]


def _quantize_activations(x):
    """Per block of 32: (int8 values, scale) as the kernel computes them, in float32."""
    blocks = x.reshape(x.shape[0], -1, 32).astype(np.float32)
    d = (np.abs(blocks).max(axis=-1, keepdims=True) / np.float32(127)).astype(np.float32)
    inverse = np.where(d != 0, np.float32(1) / np.where(d != 0, d, 1), 0).astype(np.float32)
    q = np.rint(blocks * inverse)
    return (q * d.astype(np.float64)).reshape(x.shape)


def _check(y, x, w):
    w64 = np.asarray(quantized.dequantize(jnp.asarray(w)), np.float64)
    ref = _quantize_activations(x) @ w64.T
    err = np.abs(np.asarray(y, np.float64) - ref)
    assert np.max(err) <= 1e-3 * np.max(np.abs(ref)), np.max(err) / np.max(np.abs(ref))
    # and against the unquantized activations, within what 8-bit activations allow
    exact = x.astype(np.float64) @ w64.T
    assert np.max(np.abs(np.asarray(y) - exact)) <= 0.05 * np.max(np.abs(exact))


@pytest.fixture(params=cpu.supported_isas() if CpuBackend.unavailable_reason() is None else ["scalar"])
def isa(request):
    before = cpu.isa()
    cpu.set_isa(request.param)
    yield request.param
    cpu.set_isa(before)


# 1-3 rows take the row path, 4 and up the x86 panel path (x86/qpanel.h): tiles of 4, 3, 2 rows.
@pytest.mark.parametrize("m", [1, 3, 4, 5, 8, 33, 128])
def test_quantized_matmul_matches_float64_on_the_files_blocks(isa, file_tensors, m):
    rng = np.random.default_rng(m)
    cases = [_blocks(file_tensors["blk.0.ffn_down.weight"]),      # Q4_1 [576, 1536 / 32]
             _blocks(file_tensors["blk.3.attn_k.weight"]),        # Q4_1 [192, 576 / 32]
             _blocks(file_tensors["token_embd.weight"])[:4000],   # Q8_0 [4000, 576 / 32]
             _random_q4_0(rng, 75, 320)]                          # Q4_0 (a last panel of 3 rows)
    for w in cases:
        x = rng.standard_normal((m, w.shape[1] * 32)).astype(np.float32)
        y = jax.jit(matmul)(jnp.asarray(x), jnp.asarray(w))
        assert y.shape == (m, w.shape[0]) and y.dtype == jnp.float32
        _check(y, x, w)


@pytest.mark.parametrize("type_name", K_QUANTS)
@pytest.mark.parametrize("m", [1, 5, 33])
def test_k_quant_matmul_matches_float64(isa, type_name, m):
    rng = np.random.default_rng(m + len(type_name))
    for n, k in [(40, 256), (72, 768), (9, 1536)]:
        w = _random_k_quant(rng, type_name, n, k)
        x = rng.standard_normal((m, k)).astype(np.float32)
        y = jax.jit(matmul)(jnp.asarray(x), jnp.asarray(w))
        assert y.shape == (m, n) and y.dtype == jnp.float32
        _check(y, x, w)


@pytest.mark.parametrize("type_name", K_QUANTS)
def test_k_quant_dequantize_equals_gguf(type_name):
    w = _random_k_quant(np.random.default_rng(3), type_name, 6, 512)
    want = gguf.quants.dequantize(w.reshape(6, -1), gguf.GGMLQuantizationType[type_name]).reshape(6, 512)
    assert quantized.quant_type(jnp.asarray(w)) == type_name and quantized.in_features(jnp.asarray(w)) == 512
    np.testing.assert_array_equal(np.asarray(quantized.dequantize(jnp.asarray(w))), want)
    rows = np.asarray(quantized.take_rows(jnp.asarray(w), jnp.asarray([5, 0, 5])))
    np.testing.assert_array_equal(rows, want[[5, 0, 5]])


def test_gguf_file_with_k_quant_tensors_loads_them_quantized(tmp_path):
    from surge.models.gguf_checkpoint import GGUFCheckpoint

    rng = np.random.default_rng(7)
    hidden, inter, heads = 256, 512, 2
    tensors = {"blk.0.ffn_gate.weight": ("Q4_K", inter, hidden), "blk.0.ffn_up.weight": ("Q5_K", inter, hidden),
               "blk.0.ffn_down.weight": ("Q6_K", hidden, inter), "blk.0.attn_q.weight": ("Q4_K", hidden, hidden),
               "blk.0.attn_k.weight": ("Q6_K", hidden, hidden)}
    path = str(tmp_path / "k-quants.gguf")
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_uint32("llama.attention.head_count", heads)
    written = {}
    for name, (type_name, rows, k) in tensors.items():
        blocks = _random_k_quant(rng, type_name, rows, k)
        written[name] = blocks
        writer.add_tensor(name, blocks.reshape(rows, -1),
                          raw_dtype=gguf.GGMLQuantizationType[type_name])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    checkpoint = GGUFCheckpoint(path)
    hf_names = {"blk.0.ffn_gate.weight": "model.layers.0.mlp.gate_proj.weight",
                "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
                "blk.0.ffn_down.weight": "model.layers.0.mlp.down_proj.weight",
                "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
                "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight"}
    for name, (type_name, rows, k) in tensors.items():
        blocks = checkpoint.get_quantized(hf_names[name])
        assert blocks.shape == (rows, k // 256, quantized.TYPE_BLOCK_BYTES[type_name])
        ours = np.asarray(quantized.dequantize(jnp.asarray(blocks)))
        np.testing.assert_array_equal(ours, checkpoint.get(hf_names[name]))  # gguf's dequantization, HF row order
        if "ffn" in name:  # no head permutation: the file's own blocks, as gguf dequantizes them
            want = gguf.quants.dequantize(written[name].reshape(rows, -1), gguf.GGMLQuantizationType[type_name])
            np.testing.assert_array_equal(ours, want.reshape(rows, k))
            x = rng.standard_normal((3, k)).astype(np.float32)
            _check(jax.jit(matmul)(jnp.asarray(x), jnp.asarray(blocks)), x, blocks)


def test_dequantize_equals_gguf(file_tensors):
    for name in ("blk.0.ffn_down.weight", "blk.0.attn_q.weight", "token_embd.weight"):
        tensor = file_tensors[name]
        want = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(tensor.data.shape[0], -1)
        np.testing.assert_array_equal(np.asarray(quantized.dequantize(jnp.asarray(_blocks(tensor)))), want)
    w = _random_q4_0(np.random.default_rng(0), 8, 64)
    want = gguf.quants.dequantize(w.reshape(8, -1), gguf.GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(np.asarray(quantized.dequantize(jnp.asarray(w))), want.reshape(8, 64))


def test_checkpoint_blocks_match_its_dequantized_tensors(smollm2_gguf):
    from surge.models.gguf_checkpoint import GGUFCheckpoint

    checkpoint = GGUFCheckpoint(smollm2_gguf)
    for name in ("model.layers.2.self_attn.q_proj.weight", "model.layers.2.self_attn.k_proj.weight",
                 "model.layers.2.mlp.down_proj.weight", "model.embed_tokens.weight"):
        blocks = checkpoint.get_quantized(name)
        np.testing.assert_array_equal(np.asarray(quantized.dequantize(jnp.asarray(blocks))), checkpoint.get(name))
    assert checkpoint.get_quantized("model.norm.weight") is None


def test_reference_backend_and_embedding_rows_dequantize(file_tensors):
    w = _blocks(file_tensors["blk.1.attn_v.weight"])
    x = np.random.default_rng(1).standard_normal((3, 576)).astype(np.float32)
    dense = np.asarray(quantized.dequantize(jnp.asarray(w)))
    y = KernelBackend.matmul(CpuBackend(), jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(y), x @ dense.T, rtol=1e-4, atol=1e-4)
    table = _blocks(file_tensors["token_embd.weight"])
    full = np.asarray(quantized.dequantize(jnp.asarray(table[:100])))
    ids = jnp.asarray([[3, 99], [0, 3]])
    np.testing.assert_array_equal(np.asarray(quantized.take_rows(jnp.asarray(table), ids)), full[np.asarray(ids)])


def test_bad_quantized_shapes_name_the_problem():
    w = jnp.zeros((8, 2, 34), jnp.uint8)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 64\] to match the Q8_0 weight"):
        matmul(jnp.ones((2, 65)), w)
    with pytest.raises(ValueError, match=r"x must be \[\.\.\., 512\] to match the Q4_K weight .*blocks of 256"):
        matmul(jnp.ones((2, 64)), jnp.zeros((8, 2, 144), jnp.uint8))
    with pytest.raises(ValueError, match="not a quantized weight"):
        quantized.dequantize(jnp.zeros((8, 2, 33), jnp.uint8))


@pytest.mark.slow
def test_engine_on_quantized_weights(smollm2_gguf):
    import surge
    from surge import SamplingParams
    from surge.models import load_model

    loaded = load_model(smollm2_gguf, dtype="quantized")
    layer = loaded.model.layers[0]
    assert quantized.quant_type(layer.qkv_proj[...]) == "Q4_1" and layer.qkv_proj[...].shape == (960, 18, 20)
    assert quantized.quant_type(loaded.model.embed_tokens[...]) == "Q8_0"
    held = sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(__import__("flax").nnx.state(loaded.model)))
    assert held < 100 * 2**20, held

    engine = surge.Engine.from_pretrained(smollm2_gguf, backend="cpu", max_num_seqs=8,
                                          max_model_len=128, max_num_batched_tokens=128, token_buckets=[8, 128],
                                          num_pages=100, progress=False)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "The quick brown fox"]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    together = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    alone = [engine.generate([p], params)[0].outputs[0].token_ids for p in prompts]
    assert together == alone
    assert "Paris" in engine.generate(prompts[:1], params)[0].outputs[0].text


def test_auto_dtype_keeps_a_gguf_quantized_only_where_the_backend_multiplies_it():
    from surge.kernels.reference import ReferenceBackend
    from surge.models.loader import resolve_dtype

    assert CpuBackend.multiplies_quantized and not ReferenceBackend.multiplies_quantized
    assert resolve_dtype("auto", gguf=True, quantized_matmul=True) == "quantized"
    assert resolve_dtype("auto", gguf=True, quantized_matmul=False) == "float32"  # jax's cpu platform here
    assert resolve_dtype("auto", gguf=False, quantized_matmul=True) == "float32"
    assert resolve_dtype("bfloat16", gguf=True, quantized_matmul=True) == "bfloat16"
    with pytest.raises(ValueError, match="model dtype 'int4' is not one of auto, float32, bfloat16, quantized"):
        resolve_dtype("int4", gguf=True)


def test_quantize_on_load_with_dtype_quantized_is_refused():
    from surge.config import ConfigError, ModelConfig

    with pytest.raises(ConfigError, match="model.dtype.*with model.quantize=q8_0 give auto, float32 or bfloat16"):
        ModelConfig(dtype="quantized", quantize="q8_0")


def test_default_model_on_the_default_dtype_holds_under_200_mb(smollm2_gguf, caplog):
    import surge

    logger = logging.getLogger("surge")  # it does not propagate (its own handler), so listen on it directly
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="surge"):
            engine = surge.Engine.from_pretrained(max_num_seqs=2, max_model_len=64, max_num_batched_tokens=64,
                                                  token_buckets=[64], num_pages=12, compile_at_startup=False,
                                                  progress=False)
    finally:
        logger.removeHandler(caplog.handler)
    assert engine.dtype == "quantized" and engine.backend_name == "cpu"
    weights = engine.runner.placed.weights
    assert quantized.quant_types(weights) == ["Q4_1", "Q8_0"]
    held = sum(w.size * w.dtype.itemsize for w in weights)
    assert 60 * 2**20 < held < 200 * 10**6, held
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("model smollm2-135m-instruct:"))
    assert f"(Q4_1 + Q8_0, rest float32, {held / 2**20:.0f} MiB held)" in line, line
