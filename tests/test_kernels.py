"""The kernel registry, and every backend that runs here against `reference` through the common interface.

Per-backend suites with wider case matrices sit beside each kernel (test_cpu_attention.py,
test_triton_kernels.py under Triton's interpreter, test_pallas_kernels.py in interpret mode);
this file checks what they share: one signature, one metadata pytree, each backend's own layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.config import BackendConfig
from surge.kernels import registry
from surge.kernels.metadata import AttentionMetadata


def test_auto_resolves_by_platform_and_lists_availability():
    available = registry.available()
    assert set(available) == {"reference", "cpu", "triton", "pallas"}
    assert available["reference"] is None
    assert jax.default_backend() == "cpu"
    assert registry.resolve("auto") == ("cpu" if available["cpu"] is None else "reference")
    assert available["triton"] is not None  # no GPU on this machine


def test_unknown_and_unavailable_backends_fail_loudly():
    with pytest.raises(registry.BackendUnavailable, match="unknown kernel backend 'cuda'"):
        registry.resolve("cuda")
    with pytest.raises(registry.BackendUnavailable, match="triton"):
        registry.get_backend(BackendConfig(name="triton"))
    with pytest.raises(registry.BackendUnavailable, match="pallas"):
        registry.get_backend(BackendConfig(name="pallas"))


def _logical_batch(rng, *, num_pages, page_size, num_kv_heads, head_dim, q_lens, kv_lens, num_heads):
    """A ragged batch: per-sequence page lists, the new tokens' q/k/v, and the cache contents before the step."""
    num_seqs = len(q_lens)
    pages, free = [], list(range(1, num_pages))
    rng.shuffle(free)
    for kv_len in kv_lens:
        pages.append([free.pop() for _ in range(-(-kv_len // page_size))])
    num_tokens = sum(q_lens) + 3  # three padding tokens
    positions, slots, seq_ids = [], [], []
    for s, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens)):
        for pos in range(kv_len - q_len, kv_len):
            positions.append(pos)
            slots.append(pages[s][pos // page_size] * page_size + pos % page_size)
            seq_ids.append(s)
    pad = num_tokens - len(positions)
    max_seqs = num_seqs + 1
    page_table = np.zeros((max_seqs, max(len(p) for p in pages)), np.int32)
    for s, p in enumerate(pages):
        page_table[s, :len(p)] = p
    md = AttentionMetadata(
        positions=np.array(positions + [0] * pad, np.int32), slot_mapping=np.array(slots + [0] * pad, np.int32),
        token_seq_ids=np.array(seq_ids + [max_seqs] * pad, np.int32), page_table=page_table,
        cu_q_lens=np.array([0, *np.cumsum(q_lens), sum(q_lens)], np.int32),
        kv_lens=np.array(list(kv_lens) + [0], np.int32), num_seqs=np.int32(num_seqs))
    # Logical cache: [num_pages, page_size, KV, hd]; free pages and unwritten slots hold NaN.
    logical_k = np.full((num_pages, page_size, num_kv_heads, head_dim), np.nan, np.float32)
    logical_v = np.full_like(logical_k, np.nan)
    for s, (q_len, kv_len) in enumerate(zip(q_lens, kv_lens)):
        for pos in range(kv_len - q_len):
            page, off = pages[s][pos // page_size], pos % page_size
            logical_k[page, off] = rng.standard_normal((num_kv_heads, head_dim))
            logical_v[page, off] = rng.standard_normal((num_kv_heads, head_dim))
    q = rng.standard_normal((num_tokens, num_heads, head_dim)).astype(np.float32)
    k = rng.standard_normal((num_tokens, num_kv_heads, head_dim)).astype(np.float32)
    v = rng.standard_normal((num_tokens, num_kv_heads, head_dim)).astype(np.float32)
    return md, q, k, v, logical_k, logical_v, sum(q_lens)


def _to_layout(backend, logical, num_pages, page_size, num_kv_heads, head_dim):
    shape = backend.kv_cache_shape(num_pages, page_size, num_kv_heads, head_dim)
    if shape == logical.shape:
        return jnp.asarray(logical)
    if shape == (num_pages, num_kv_heads, page_size, head_dim):
        return jnp.asarray(logical.transpose(0, 2, 1, 3))
    raise AssertionError(f"{backend.name}: layout {shape} is not handled by this test")


def _runnable_backends():
    names = [n for n, reason in registry.available().items() if reason is None]
    configs = [(n, BackendConfig(name=n)) for n in names]
    if "pallas" not in names:
        configs.append(("pallas", BackendConfig(name="pallas", interpret=True)))
    return configs


@pytest.mark.parametrize("name,config", _runnable_backends(), ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("gqa,head_dim,page_size,window", [(3, 64, 16, None), (1, 128, 32, 20), (8, 64, 16, None)])
def test_backend_matches_reference(name, config, gqa, head_dim, page_size, window):
    rng = np.random.default_rng(gqa * 1000 + head_dim + page_size)
    num_kv_heads = 2
    num_heads = num_kv_heads * gqa
    num_pages = 40
    batch = _logical_batch(rng, num_pages=num_pages, page_size=page_size, num_kv_heads=num_kv_heads,
                           head_dim=head_dim, q_lens=[1, 37, 1, 5], kv_lens=[21, 37, 70, 33], num_heads=num_heads)
    md, q, k, v, logical_k, logical_v, num_real = batch
    outputs = {}
    for backend in (registry.get_backend("reference"), registry.get_backend(config)):
        caches = tuple(_to_layout(backend, x, num_pages, page_size, num_kv_heads, head_dim)
                       for x in (logical_k, logical_v))
        run = jax.jit(lambda q, k, v, c, md: backend(q, k, v, c, md, scale=head_dim ** -0.5, sliding_window=window),
                      donate_argnums=(3,))
        out, _ = run(q, k, v, caches, md)
        outputs[backend.name] = np.asarray(out)[:num_real]
    assert np.isfinite(outputs["reference"]).all()
    np.testing.assert_allclose(outputs[config.name], outputs["reference"], rtol=2e-4, atol=2e-5)
