"""GGUF-quantized weights kept quantized: the int8 matmul kernel, the loader, and the engine.

The kernel (every supported ISA variant) is held to 1e-3 relative of a float64 product over
the dequantized weights and x quantized per block of 32 exactly as the kernel does it
(d = max|x| / 127, q = round-half-even(x / d)); the blocks are the file's own (SmolLM2's
Q4_1 and Q8_0 tensors) and random Q4_0 ones. Dequantization equals the `gguf` package's.
The engine on model.dtype=quantized holds the model in under 100 MiB, gives a sequence the same
greedy tokens batched or alone, and answers sensibly.
"""

from __future__ import annotations

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


@pytest.mark.parametrize("m", [1, 5, 33])
def test_quantized_matmul_matches_float64_on_the_files_blocks(isa, file_tensors, m):
    rng = np.random.default_rng(m)
    cases = [_blocks(file_tensors["blk.0.ffn_down.weight"]),      # Q4_1 [576, 1536 / 32]
             _blocks(file_tensors["blk.3.attn_k.weight"]),        # Q4_1 [192, 576 / 32]
             _blocks(file_tensors["token_embd.weight"])[:4000],   # Q8_0 [4000, 576 / 32]
             _random_q4_0(rng, 72, 320)]                          # Q4_0
    for w in cases:
        x = rng.standard_normal((m, w.shape[1] * 32)).astype(np.float32)
        y = jax.jit(matmul)(jnp.asarray(x), jnp.asarray(w))
        assert y.shape == (m, w.shape[0]) and y.dtype == jnp.float32
        _check(y, x, w)


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

    engine = surge.Engine.from_pretrained(smollm2_gguf, dtype="quantized", backend="cpu", max_num_seqs=8,
                                          max_model_len=128, max_num_batched_tokens=128, token_buckets=[8, 128],
                                          num_pages=100, progress=False)
    prompts = ["The capital of France is", "def fibonacci(n):", "Once upon a time,", "The quick brown fox"]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    together = [o.outputs[0].token_ids for o in engine.generate(prompts, params)]
    alone = [engine.generate([p], params)[0].outputs[0].token_ids for p in prompts]
    assert together == alone
    assert "Paris" in engine.generate(prompts[:1], params)[0].outputs[0].text
