"""The kernel registry, and every backend that runs here against `reference` through the common interface.

Per-backend suites with wider case matrices sit beside each kernel (test_cpu_attention.py,
test_triton_kernels.py under Triton's interpreter, test_pallas_kernels.py in interpret mode);
this file checks what they share: one signature, one metadata pytree, each backend's own layout.
"""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.kernels import registry
from surge.kernels.base import AttentionSpec
from surge.kernels.metadata import AttentionMetadata


def test_auto_resolves_by_platform_and_lists_availability():
    available = registry.available()
    assert set(available) == set(registry.names()) >= {"reference", "cpu", "triton", "pallas"}
    assert available["reference"] is None
    assert jax.default_backend() == "cpu"
    assert registry.resolve("auto") == ("cpu" if available["cpu"] is None else "reference")
    assert available["triton"] is not None  # no GPU on this machine


def test_unknown_and_unavailable_backends_fail_loudly():
    with pytest.raises(registry.BackendUnavailable, match="unknown kernel backend 'cuda'"):
        registry.resolve("cuda")
    with pytest.raises(registry.BackendUnavailable, match="triton"):
        registry.get_backend("triton")
    with pytest.raises(registry.BackendUnavailable, match="pallas"):
        registry.get_backend("pallas")


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
    configs = [(n, {}) for n in names]
    if "pallas" not in names:
        configs.append(("pallas", {"interpret": True}))
    return configs


@pytest.mark.parametrize("name,options", _runnable_backends(), ids=lambda x: x if isinstance(x, str) else "")
@pytest.mark.parametrize("gqa,head_dim,page_size,window", [(3, 64, 16, None), (1, 128, 32, 20), (8, 64, 16, None)])
def test_backend_matches_reference(name, options, gqa, head_dim, page_size, window):
    rng = np.random.default_rng(gqa * 1000 + head_dim + page_size)
    num_kv_heads = 2
    num_heads = num_kv_heads * gqa
    num_pages = 40
    batch = _logical_batch(rng, num_pages=num_pages, page_size=page_size, num_kv_heads=num_kv_heads,
                           head_dim=head_dim, q_lens=[1, 37, 1, 5], kv_lens=[21, 37, 70, 33], num_heads=num_heads)
    md, q, k, v, logical_k, logical_v, num_real = batch
    outputs = {}
    for backend in (registry.get_backend("reference"), registry.get_backend(name, options)):
        caches = tuple(_to_layout(backend, x, num_pages, page_size, num_kv_heads, head_dim)
                       for x in (logical_k, logical_v))
        run = jax.jit(lambda q, k, v, c, md: backend.attention(
            q, k, v, c, md, AttentionSpec(head_dim ** -0.5, sliding_window=window)),
                      donate_argnums=(3,))
        out, _ = run(q, k, v, caches, md)
        outputs[backend.name] = np.asarray(out)[:num_real]
    assert np.isfinite(outputs["reference"]).all()
    np.testing.assert_allclose(outputs[name], outputs["reference"], rtol=2e-4, atol=2e-5)


def test_attention_spec_is_checked_hashable_and_static_under_jit():
    spec = AttentionSpec(scale=0.125, sliding_window=8, logit_soft_cap=50, chunk_size=16)
    assert (spec.scale, spec.sliding_window, spec.logit_soft_cap, spec.chunk_size) == (0.125, 8, 50.0, 16)
    assert hash(spec) == hash(AttentionSpec(0.125, 8, 50.0, 16)) and spec == AttentionSpec(0.125, 8, 50.0, 16)
    for bad, field in ((dict(scale=0.0), "scale"), (dict(scale=1.0, sliding_window=0), "sliding_window"),
                       (dict(scale=1.0, chunk_size=2.5), "chunk_size"),
                       (dict(scale=1.0, logit_soft_cap=-1.0), "logit_soft_cap")):
        with pytest.raises(ValueError, match=f"AttentionSpec.{field}"):
            AttentionSpec(**bad)
    traces = []

    @jax.jit
    def scaled(x, spec):
        traces.append(spec)
        return x * spec.scale

    assert jax.tree_util.tree_leaves(spec) == []
    for s in (spec, AttentionSpec(0.125, 8, 50.0, 16), AttentionSpec(0.5)):
        scaled(jnp.ones(2), s)
    assert traces == [spec, AttentionSpec(0.5)]  # equal specs share one compilation
    np.testing.assert_array_equal(scaled(jnp.ones(2), AttentionSpec(0.5)), [0.5, 0.5])



def test_registry_reads_declarations_without_importing_backends():
    probe = ("import sys; from surge.kernels import registry; e = registry.entries(); "
             "print(sorted(set(e) & {'cpu', 'pallas', 'reference', 'triton'}), e['triton'].platforms, "
             "e['reference'].fallback, e['cpu'].module, "
             "sorted(m for m in sys.modules if m.startswith('surge.kernels.') or m in ('jax', 'jax_triton')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ("['cpu', 'pallas', 'reference', 'triton'] ('gpu', 'cuda', 'rocm') True "
                                   "surge.kernels.cpu ['surge.kernels.registry']")
    # auto on a CPU imports the cpu backend's module, and only that one.
    probe = ("import sys; from surge.kernels import registry; print(registry.resolve('auto'), "
             "sorted(m for m in sys.modules if m in ('surge.kernels.triton', 'surge.kernels.pallas', "
             "'surge.kernels.cpu')))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["cpu", "['surge.kernels.cpu']"]


def _declare(folder, module, line):
    (folder / f"{module}.py").write_text(f"{line}\nclass Backend{module}:\n    pass\n")


def test_registry_rejects_inconsistent_declarations(tmp_path):
    _declare(tmp_path, "a", '@register_backend("one", platforms=("gpu",))')
    assert registry._scan(tmp_path, "pkg") == {"one": registry.Entry("one", "pkg.a", "Backenda", ("gpu",), False)}
    _declare(tmp_path, "b", '@register_backend("one")')
    with pytest.raises(registry.RegistryError, match="'one' is already taken by pkg.a"):
        registry._scan(tmp_path, "pkg")
    _declare(tmp_path, "b", '@registry.register_backend("two", platforms=("gpu",))')
    with pytest.raises(registry.RegistryError, match=r"\['one', 'two'\] all claim platform 'gpu'"):
        registry._scan(tmp_path, "pkg")
    _declare(tmp_path, "b", '@register_backend(NAME)')
    with pytest.raises(registry.RegistryError, match="b.py:1: register_backend's name must be a literal"):
        registry._scan(tmp_path, "pkg")
    _declare(tmp_path, "b", '@register_backend("auto")')
    with pytest.raises(registry.RegistryError, match="'auto' is already taken"):
        registry._scan(tmp_path, "pkg")


def test_backend_options_are_checked_by_name():
    from surge.kernels.cpu import CpuOptions
    from surge.kernels.pallas import PallasOptions

    assert registry.make_options("cpu", {"num_threads": 2}) == CpuOptions(num_threads=2)
    assert registry.make_options("reference") == registry.NoOptions()
    assert registry.options_type("pallas") is PallasOptions
    with pytest.raises(registry.BackendOptionError, match=r"'backend.num_thread'.*did you mean backend.num_threads"):
        registry.make_options("cpu", {"num_thread": 2})
    with pytest.raises(registry.BackendOptionError, match=r"'backend.num_threads': '2' is not a int"):
        registry.make_options("cpu", {"num_threads": "2"})
    with pytest.raises(registry.BackendOptionError, match=r"'backend.interpret'.*triton backend; it has no options"):
        registry.make_options("triton", {"interpret": True})
    with pytest.raises(ValueError, match="backend.num_threads"):
        registry.make_options("cpu", {"num_threads": -1})
    if registry.available()["cpu"] is None:  # auto checks the options against the backend it resolves to
        assert registry.get_backend("auto", {"num_threads": 0}).options == CpuOptions()
        with pytest.raises(registry.BackendOptionError, match=r"'backend.interpret'.*which backend=auto resolved"):
            registry.get_backend("auto", {"interpret": True})
