"""The Pallas TPU kernel in interpret mode on CPU against a float64 NumPy oracle, and lowered for TPU.

Interpret mode (``pltpu.InterpretParams``) simulates the TPU's memories, DMAs and
semaphores, and fills fresh VMEM with NaN, so a kernel that lets an unfetched
buffer row or a free page reach a multiply fails. Batches are ragged: decodes,
a prefill chunk on cached tokens, a fresh prefill, kv lengths that are not
multiples of the page size, padding tokens (NaN q/k/v) and a padding sequence;
free pages, the null page and unused slots hold NaN.

The lowering test traces the backend on this CPU host for the TPU platform,
``jax.jit(f).trace(*args).lower(lowering_platforms=("tpu",))``, and checks that
the kernel became a Mosaic ``tpu_custom_call`` whose module holds the page DMAs
and the matmuls.
"""

from __future__ import annotations

import base64
import json
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from surge.kernels.base import AttentionSpec
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.pallas import PallasBackend, PallasOptions, ragged_paged_attention, write_kv

# (tokens already cached, new tokens) of each real sequence.
MIXED = [(37, 1), (20, 19), (0, 23), (5, 1)]
DECODE = [(37, 1), (15, 1), (70, 1), (0, 1)]
NUM_FREE_PAGES = 3
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}


def make_batch(rng, seqs, *, num_kv_heads, group, head_dim, page_size, dtype, num_padding_tokens):
    """Host arrays of one ragged batch in the [num_pages, KV, page_size, hd] layout (float32 values,
    rounded to `dtype`), its metadata, and the number of real tokens."""
    max_seqs = len(seqs) + 1  # the last sequence is padding
    pages_needed = [-(-(cached + new) // page_size) for cached, new in seqs]
    pages_per_seq = max(pages_needed) + 1
    num_pages = 1 + sum(pages_needed) + NUM_FREE_PAGES
    free = list(rng.permutation(np.arange(1, num_pages)))

    def rounded(*shape):
        return rng.standard_normal(shape).astype(_NP_DTYPES[dtype]).astype(np.float32)

    k_cache = np.full((num_pages, num_kv_heads, page_size, head_dim), np.nan, np.float32)
    v_cache = k_cache.copy()
    page_table = np.zeros((max_seqs, pages_per_seq), np.int32)
    positions, slots, seq_ids, cu_q_lens, kv_lens = [], [], [], [0], []
    for s, (cached, new) in enumerate(seqs):
        pages = [int(free.pop()) for _ in range(pages_needed[s])]
        page_table[s, :len(pages)] = pages
        for pos in range(cached):
            k_cache[pages[pos // page_size], :, pos % page_size] = rounded(num_kv_heads, head_dim)
            v_cache[pages[pos // page_size], :, pos % page_size] = rounded(num_kv_heads, head_dim)
        for pos in range(cached, cached + new):
            positions.append(pos)
            slots.append(pages[pos // page_size] * page_size + pos % page_size)
            seq_ids.append(s)
        cu_q_lens.append(cu_q_lens[-1] + new)
        kv_lens.append(cached + new)
    num_real = len(positions)
    num_tokens = num_real + num_padding_tokens
    md = AttentionMetadata(
        positions=np.array(positions + [0] * num_padding_tokens, np.int32),
        slot_mapping=np.array(slots + [0] * num_padding_tokens, np.int32),
        token_seq_ids=np.array(seq_ids + [max_seqs] * num_padding_tokens, np.int32),
        page_table=page_table, cu_q_lens=np.array(cu_q_lens + [cu_q_lens[-1]], np.int32),
        kv_lens=np.array(kv_lens + [0], np.int32), num_seqs=np.int32(len(seqs)))
    q = rounded(num_tokens, num_kv_heads * group, head_dim)
    k = rounded(num_tokens, num_kv_heads, head_dim)
    v = rounded(num_tokens, num_kv_heads, head_dim)
    q[num_real:] = k[num_real:] = v[num_real:] = np.nan
    return q, k, v, k_cache, v_cache, md, num_real


def reference(q, k, v, k_cache, v_cache, md, num_real, scale, window, cap):
    """Float64 oracle: the caches after the write and each real token's attention output."""
    k_cache, v_cache = k_cache.astype(np.float64), v_cache.astype(np.float64)
    page_size = k_cache.shape[2]
    for t in range(num_real):
        page, offset = divmod(int(md.slot_mapping[t]), page_size)
        k_cache[page, :, offset], v_cache[page, :, offset] = k[t], v[t]
    num_heads, head_dim = q.shape[1:]
    num_kv_heads = k.shape[1]
    out = np.zeros((num_real, num_heads, head_dim))
    for t in range(num_real):
        s, pos = md.token_seq_ids[t], md.positions[t]
        seen = np.arange(md.kv_lens[s])
        seen = seen[(seen <= pos) & ((seen > pos - window) if window else True)]
        pages, offsets = md.page_table[s, seen // page_size], seen % page_size
        keys, values = k_cache[pages, :, offsets], v_cache[pages, :, offsets]  # [n, KV, hd]
        q_t = q[t].astype(np.float64).reshape(num_kv_heads, -1, head_dim)
        scores = np.einsum("kgd,nkd->kgn", q_t, keys) * scale
        if cap:
            scores = cap * np.tanh(scores / cap)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[t] = np.einsum("kgn,nkd->kgd", weights, values).reshape(num_heads, head_dim)
    return out, k_cache, v_cache


CASES = [
    # kv_heads, group, head_dim, page_size, window, cap, dtype, seqs, padding tokens, block_tokens
    (2, 1, 64, 16, None, None, "float32", MIXED, 3, None),  # through the backend, one 128-token block
    (1, 3, 128, 32, 24, 5.0, "bfloat16", MIXED, 3, 16),  # 16-token blocks straddling sequences
    (2, 4, 64, 16, None, 2.0, "float32", DECODE, 1, None),  # decode bucket (tokens <= sequences)
]


def _case_id(case):
    kv, group, hd, ps, window, cap, dtype, seqs, _, block = case
    kind = "mixed" if seqs is MIXED else "decode"
    return f"kv{kv}-gqa{group}-hd{hd}-ps{ps}-win{window or 0}-cap{cap or 0}-{dtype}-{kind}-block{block or 'auto'}"


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_interpreted_kernel_matches_numpy(case):
    num_kv_heads, group, head_dim, page_size, window, cap, dtype, seqs, num_padding, block_tokens = case
    rng = np.random.default_rng(CASES.index(case))
    q, k, v, k_cache, v_cache, md, num_real = make_batch(
        rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim, page_size=page_size, dtype=dtype,
        num_padding_tokens=num_padding)
    assert any(kv_len % page_size for kv_len in md.kv_lens[:-1]), "want partially filled last pages"
    scale = 2.0 / np.sqrt(head_dim)
    jdtype = jnp.dtype(dtype)
    args = (jnp.asarray(q, jdtype), jnp.asarray(k, jdtype), jnp.asarray(v, jdtype),
            (jnp.asarray(k_cache, jdtype), jnp.asarray(v_cache, jdtype)), md)
    if block_tokens is None:
        backend = PallasBackend(PallasOptions(interpret=True))
        assert backend.kv_cache_shape(k_cache.shape[0], page_size, num_kv_heads, head_dim) == k_cache.shape
        step = jax.jit(lambda q, k, v, cache, md: backend.attention(
            q, k, v, cache, md, AttentionSpec(scale, sliding_window=window, logit_soft_cap=cap)), donate_argnums=(3,))
    else:
        def step(q, k, v, cache, md):
            cache = write_kv(cache, k, v, md.slot_mapping)
            out = ragged_paged_attention(q, *cache, md, AttentionSpec(scale, sliding_window=window, logit_soft_cap=cap),
                                         interpret=True, block_tokens=block_tokens)
            return out, cache
        step = jax.jit(step)
    out, (new_k, new_v) = step(*args)
    expected, expected_k, expected_v = reference(q, k, v, k_cache, v_cache, md, num_real, scale, window, cap)

    assert out.dtype == jdtype and out.shape == q.shape
    np.testing.assert_array_equal(np.asarray(new_k, np.float32), expected_k.astype(np.float32))
    np.testing.assert_array_equal(np.asarray(new_v, np.float32), expected_v.astype(np.float32))
    out = np.asarray(out, np.float32)
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(out[:num_real], expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(out[num_real:], 0.0)  # padding tokens come out as zeros


def test_availability_follows_platform_and_interpret_flag():
    if jax.default_backend() != "tpu":
        reason = PallasBackend.unavailable_reason()
        assert reason is not None and "TPU" in reason and "interpret" in reason
        with pytest.raises(RuntimeError, match="pallas backend cannot run here"):
            PallasBackend(PallasOptions()).attention(*[None] * 5, AttentionSpec(1.0))
    assert PallasBackend.unavailable_reason(PallasOptions(interpret=True)) is None


def _lower_for_tpu(num_tokens=256, max_seqs=32, pages_per_seq=64, num_pages=512, page_size=16, num_kv_heads=8,
                   num_heads=32, head_dim=128, dtype=jnp.bfloat16):
    """StableHLO text of one layer step (write + attention) lowered for TPU on this host."""
    i32 = jnp.int32
    md = AttentionMetadata(
        positions=jax.ShapeDtypeStruct((num_tokens,), i32), slot_mapping=jax.ShapeDtypeStruct((num_tokens,), i32),
        token_seq_ids=jax.ShapeDtypeStruct((num_tokens,), i32),
        page_table=jax.ShapeDtypeStruct((max_seqs, pages_per_seq), i32),
        cu_q_lens=jax.ShapeDtypeStruct((max_seqs + 1,), i32), kv_lens=jax.ShapeDtypeStruct((max_seqs,), i32),
        num_seqs=jax.ShapeDtypeStruct((), i32))
    cache = jax.ShapeDtypeStruct((num_pages, num_kv_heads, page_size, head_dim), dtype)

    def step(q, k, v, cache, md):
        cache = write_kv(cache, k, v, md.slot_mapping)
        return ragged_paged_attention(q, *cache, md, AttentionSpec(0.088, sliding_window=128, logit_soft_cap=30.0)), cache

    traced = jax.jit(step, donate_argnums=(3,)).trace(
        jax.ShapeDtypeStruct((num_tokens, num_heads, head_dim), dtype),
        jax.ShapeDtypeStruct((num_tokens, num_kv_heads, head_dim), dtype),
        jax.ShapeDtypeStruct((num_tokens, num_kv_heads, head_dim), dtype), (cache, cache), md)
    return traced.lower(lowering_platforms=("tpu",)).as_text()


LOWERINGS = {
    "llama8b-bf16": {},
    "gqa3-hd64-ps32-f32-decode": dict(num_tokens=32, max_seqs=32, page_size=32, num_kv_heads=2, num_heads=6,
                                      head_dim=64, dtype=jnp.float32),
}


@pytest.mark.parametrize("sizes", LOWERINGS.values(), ids=LOWERINGS.keys())
def test_kernel_lowers_to_a_mosaic_custom_call_for_tpu(sizes):
    text = _lower_for_tpu(**sizes)
    calls = re.findall(r"stablehlo\.custom_call @tpu_custom_call\(", text)
    assert len(calls) == 1, "the attention must be exactly one Mosaic kernel"
    config = _mosaic_config(text)
    assert config["custom_call_config"]["body"], "the custom call carries a serialized Mosaic module"


def test_mosaic_module_fetches_pages_by_dma_and_multiplies_on_the_mxu():
    try:
        from jax._src.interpreters import mlir as jax_mlir
        from jax._src.lib import tpu as mosaic_dialect
        from jaxlib.mlir import ir
        from jaxlib.mlir.passmanager import PassManager
    except ImportError as exc:
        pytest.skip(f"this jax does not expose the Mosaic dialect bindings used to decode the kernel: {exc}")
    body = base64.b64decode(_mosaic_config(_lower_for_tpu())["custom_call_config"]["body"])
    context = jax_mlir.make_ir_context()
    mosaic_dialect.register_dialect(context)
    with context, ir.Location.unknown():
        context.allow_unregistered_dialects = True
        module = ir.Module.parse(body)
        PassManager.parse("builtin.module(mosaic-serde{serialize=false})").run(module.operation)
        mosaic = str(module)
    assert "func.func @surge_ragged_paged_attention" in mosaic
    assert "scalar_prefetch = 5" in mosaic
    for op in ("tpu.enqueue_dma", "tpu.wait_dma", "tpu.matmul"):
        assert op in mosaic, f"{op} missing from the Mosaic kernel"
    # The caches stay in HBM (memory space any); only pages are copied into VMEM.
    assert re.search(r"memref<512x8x16x128xbf16, #tpu\.memory_space<any>>", mosaic)


def _mosaic_config(text: str) -> dict:
    match = re.search(r'@tpu_custom_call\([^)]*\) \{backend_config = "((?:[^"\\]|\\.)*)"', text)
    assert match, "tpu_custom_call without a backend_config"
    raw = re.sub(r"\\([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), match.group(1))
    return json.loads(raw)
