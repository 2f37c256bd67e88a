"""model.quantize=q8_0: a safetensors checkpoint's matrices become GGUF Q8_0 blocks at load.

The quantizer gives the gguf package's own Q8_0 bytes; the loaded model keeps every projection and
the (tied) embedding as Q8_0 and the norms in float32; bad values fail naming model.quantize. Greedy
generation on a tiny random Llama, on the cpu backend (whose int8 kernels quantize the activations
per block of 32), is checked against a float64 transformers forward over the same dequantized
weights: at every generated position surge's token is the reference's argmax, or within a small
margin of it (a near-tie that 8-bit activations may flip), and the first tokens agree exactly.
"""

from __future__ import annotations

import gguf
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.config import ConfigError, ModelConfig
from surge.kernels import quantized
from surge.kernels.cpu import CpuBackend
from surge.models import load_model
from surge.models.quantize_on_load import quantize_q8_0


def test_quantize_q8_0_gives_ggufs_bytes_and_reads_back_within_a_rounding_step():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((48, 320)) * rng.uniform(0.01, 3.0, (48, 1))).astype(np.float32)
    w[5, :32] = 0.0  # an all-zero block
    blocks = quantize_q8_0(w)
    assert blocks.shape == (48, 10, 34) and blocks.dtype == np.uint8
    np.testing.assert_array_equal(blocks.reshape(48, -1), gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0))
    back = np.asarray(quantized.dequantize(jnp.asarray(blocks)))
    step = np.abs(w.reshape(48, 10, 32)).max(axis=-1, keepdims=True) / 127
    # half a step of rounding, plus float16 d: 127 q-steps off by at most 2^-11 of d each
    assert np.all(np.abs(back - w).reshape(48, 10, 32) <= step * (0.5 + 127 * 2.0**-11) * 1.001)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(np.ones((4, 33), np.float32))


def test_bad_quantize_values_name_the_key(smollm2_gguf, tiny_checkpoint):
    with pytest.raises(ConfigError, match="model.quantize"):
        ModelConfig(quantize="q4_k")
    with pytest.raises(ValueError, match="model.quantize"):
        load_model(tiny_checkpoint("llama").path, quantize="int8")
    with pytest.raises(ValueError, match="model.quantize=q8_0 quantizes a safetensors checkpoint"):
        load_model(smollm2_gguf, quantize="q8_0")


def _dequantized_hf_model(checkpoint, loaded):
    """The transformers model in float64 with every matrix surge quantized replaced by its Q8_0 reading."""
    import torch

    model = checkpoint.hf_model.__class__(checkpoint.hf_config).double().eval()
    state = {k: v.double() for k, v in checkpoint.hf_model.state_dict().items()}
    hidden = checkpoint.hf_config.hidden_size
    for name, value in state.items():
        if value.ndim == 2 and value.shape[1] % 32 == 0:
            state[name] = torch.from_numpy(np.asarray(quantized.dequantize(jnp.asarray(
                quantize_q8_0(value.float().numpy()))), np.float64))
    model.load_state_dict(state)
    layer = loaded.model.layers[0]
    assert quantized.quant_type(layer.qkv_proj[...]) == "Q8_0"
    assert quantized.quant_type(layer.down_proj[...]) == "Q8_0"
    assert quantized.quant_type(loaded.model.embed_tokens[...]) == "Q8_0"
    assert layer.input_norm.weight[...].dtype == jnp.float32 and layer.input_norm.weight[...].shape == (hidden,)
    return model


@pytest.mark.skipif(CpuBackend.unavailable_reason() is not None, reason=str(CpuBackend.unavailable_reason()))
def test_greedy_generation_on_q8_0_matches_a_float64_reference(tiny_checkpoint):
    import torch

    import surge
    from surge import SamplingParams

    checkpoint = tiny_checkpoint("llama")
    loaded = load_model(checkpoint.path, dtype="float32", quantize="q8_0")
    reference = _dequantized_hf_model(checkpoint, loaded)
    engine = surge.Engine.from_pretrained(checkpoint.path, dtype="float32", quantize="q8_0", backend="cpu",
                                          max_num_seqs=4, max_model_len=64, max_num_batched_tokens=64,
                                          num_pages=64, progress=False)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(3, 320, size).tolist() for size in (5, 9, 3, 12)]
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    outputs = [o.outputs[0].token_ids for o in engine.generate(sampling_params=params, prompt_token_ids=prompts, use_tqdm=False)]
    exact, worst_gap = 0, 0.0
    for prompt, tokens in zip(prompts, outputs):
        assert len(tokens) == 16
        with torch.no_grad():
            logits = reference(torch.tensor([prompt + tokens[:-1]])).logits[0, len(prompt) - 1:].numpy()
        scale = np.abs(logits).max()
        gaps = logits.max(axis=-1) - logits[np.arange(16), tokens]
        worst_gap = max(worst_gap, float(gaps.max() / scale))
        exact += int(gaps[0] == 0.0)
        # surge's token is the float64 argmax, or within 1% of the logit range of it (a near-tie)
        assert np.all(gaps <= 0.01 * scale), (gaps / scale).round(4).tolist()
    assert exact == len(prompts), f"first tokens: {exact} of {len(prompts)} equal the reference's argmax"
    print(f"q8_0 greedy vs float64: worst gap {worst_gap:.2e} of the logit range")
