"""The Triton kernels of triton_kernels/ under Triton's CPU interpreter, and compiled ahead of time for sm_90.

The interpreter runs the very kernels the GPU runs (write_kv_kernel, then
paged_attention_kernel, with the grids and constexprs of triton_kernels.launch)
on torch CPU tensors, against a float64 NumPy oracle written here. Batches are
ragged: decodes (q_len 1), prefill chunks on cached tokens, fresh prefills,
q lengths on and around block boundaries, kv lengths that are not multiples of
the page size, padding tokens and a padding sequence. Free pages, the null page
and every unused slot hold NaN, and the padding tokens' q/k/v are NaN, so a key
a token must not see shows up as NaN in the comparison.

TRITON_INTERPRET must be set before triton and the kernels are imported, so
this module sets it first (re-importing the kernels if they were imported
without it) and leaves it set: triton's own library functions were decorated
for the interpreter and later lazy imports inside triton check the variable.
The ahead-of-time compile runs in a subprocess without the interpreter.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import textwrap

import ml_dtypes
import numpy as np
import pytest

os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton", reason="triton is not installed (pip install triton)")
torch = pytest.importorskip("torch", reason="the Triton interpreter tests feed torch CPU tensors")
import triton.runtime.interpreter as triton_interpreter  # noqa: E402

from surge.triton_kernels import launch  # noqa: E402
from surge.triton_kernels import paged_attention as kernels  # noqa: E402

if not isinstance(kernels.paged_attention_kernel, triton_interpreter.InterpretedFunction):
    kernels = importlib.reload(kernels)  # imported earlier without the interpreter


def _numpy_rejects_size1_int() -> bool:
    try:
        int(np.ones(1, np.int32))
    except TypeError:
        return True
    return False


# Two shims for bugs of Triton 3.6's interpreter (not of the kernels, which the GPU compiles as they are):
if _numpy_rejects_size1_int() and hasattr(triton_interpreter, "_patch_lang_tensor"):
    # It holds scalars as shape-(1,) arrays and converts loop bounds with int(array), which
    # numpy >= 2.4 refuses; convert the single element instead.
    _patch_lang_tensor = triton_interpreter._patch_lang_tensor

    def _patch_lang_tensor_with_index(tensor, scope):
        _patch_lang_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    triton_interpreter._patch_lang_tensor = _patch_lang_tensor_with_index

_interpreted_dot = triton_interpreter.InterpreterBuilder.create_dot


def _dot_decoding_bfloat16(self, a, b, d, input_precision, max_num_imprecise_acc):
    # It stores bfloat16 as raw uint16 bits and hands them to np.matmul as integers; widen them to
    # float32 first (exact), then multiply-accumulate in float32 as the tensor cores do.
    def widened(x):
        if x.dtype.scalar != triton.language.bfloat16:
            return x
        data = triton_interpreter._convert_float(x.data, triton.language.bfloat16, triton.language.float32, None)
        return triton_interpreter.TensorHandle(data.view(np.float32), triton.language.float32)

    return _interpreted_dot(self, widened(a), widened(b), d, input_precision, max_num_imprecise_acc)


triton_interpreter.InterpreterBuilder.create_dot = _dot_decoding_bfloat16


# (tokens already cached, new tokens) of each real sequence.
MIXED = [(37, 1), (20, 19), (0, 23), (5, 1), (70, 1)]
BOUNDARY = [(15, 16), (0, 17), (31, 1), (2, 33)]  # q lengths 16, 17, 1, 33 against 16-token blocks
NUM_PADDING_TOKENS = 5
NUM_FREE_PAGES = 3
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16}
_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class Batch:
    """A ragged batch in the kernels' layout, values rounded to the storage dtype, held in float32."""

    def __init__(self, rng, seqs, *, num_kv_heads, group, head_dim, page_size, dtype):
        self.seqs, self.page_size, self.dtype = seqs, page_size, dtype
        self.num_kv_heads, self.num_heads, self.head_dim = num_kv_heads, num_kv_heads * group, head_dim
        self.max_seqs = len(seqs) + 1  # the last sequence is padding
        pages_needed = [-(-(cached + new) // page_size) for cached, new in seqs]
        self.pages_per_seq = max(pages_needed) + 1
        num_pages = 1 + sum(pages_needed) + NUM_FREE_PAGES
        free = list(rng.permutation(np.arange(1, num_pages)))  # shuffled, so a wrong page lookup shows

        def rounded(*shape):
            return rng.standard_normal(shape).astype(_NP_DTYPES[dtype]).astype(np.float32)

        cache_shape = launch.kv_cache_shape(num_pages, page_size, num_kv_heads, head_dim)
        self.k_cache = np.full(cache_shape, np.nan, np.float32)
        self.v_cache = np.full(cache_shape, np.nan, np.float32)
        self.page_table = np.zeros((self.max_seqs, self.pages_per_seq), np.int32)
        positions, slots, seq_ids, cu_q_lens, kv_lens = [], [], [], [0], []
        for s, (cached, new) in enumerate(seqs):
            pages = [int(free.pop()) for _ in range(pages_needed[s])]
            self.page_table[s, :len(pages)] = pages
            for pos in range(cached):
                page, offset = pages[pos // page_size], pos % page_size
                self.k_cache[page, :, offset] = rounded(num_kv_heads, head_dim)
                self.v_cache[page, :, offset] = rounded(num_kv_heads, head_dim)
            for pos in range(cached, cached + new):
                positions.append(pos)
                slots.append(pages[pos // page_size] * page_size + pos % page_size)
                seq_ids.append(s)
            cu_q_lens.append(cu_q_lens[-1] + new)
            kv_lens.append(cached + new)
        self.num_real = len(positions)
        self.num_tokens = self.num_real + NUM_PADDING_TOKENS
        self.positions = np.array(positions + [0] * NUM_PADDING_TOKENS, np.int32)
        self.slot_mapping = np.array(slots + [0] * NUM_PADDING_TOKENS, np.int32)
        self.token_seq_ids = np.array(seq_ids + [self.max_seqs] * NUM_PADDING_TOKENS, np.int32)
        self.cu_q_lens = np.array(cu_q_lens + [cu_q_lens[-1]], np.int32)
        self.kv_lens = np.array(kv_lens + [0], np.int32)
        self.q = rounded(self.num_tokens, self.num_heads, head_dim)
        self.k = rounded(self.num_tokens, num_kv_heads, head_dim)
        self.v = rounded(self.num_tokens, num_kv_heads, head_dim)
        self.q[self.num_real:] = self.k[self.num_real:] = self.v[self.num_real:] = np.nan


def reference(b: Batch, scale, window, cap):
    """Float64 oracle: the caches after the write, and each real token's attention output."""
    k_cache, v_cache = b.k_cache.astype(np.float64), b.v_cache.astype(np.float64)
    for t in range(b.num_real):
        page, offset = divmod(int(b.slot_mapping[t]), b.page_size)
        k_cache[page, :, offset] = b.k[t]
        v_cache[page, :, offset] = b.v[t]
    group = b.num_heads // b.num_kv_heads
    out = np.zeros((b.num_real, b.num_heads, b.head_dim))
    for t in range(b.num_real):
        s, pos = b.token_seq_ids[t], b.positions[t]
        seen = np.arange(b.kv_lens[s])
        seen = seen[(seen <= pos) & ((seen > pos - window) if window else True)]
        pages, offsets = b.page_table[s, seen // b.page_size], seen % b.page_size
        keys, values = k_cache[pages, :, offsets], v_cache[pages, :, offsets]  # [n, KV, hd]
        q = b.q[t].astype(np.float64).reshape(b.num_kv_heads, group, b.head_dim)
        scores = np.einsum("kgd,nkd->kgn", q, keys) * scale
        if cap:
            scores = cap * np.tanh(scores / cap)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        out[t] = np.einsum("kgn,nkd->kgd", weights, values).reshape(b.num_heads, b.head_dim)
    return out, k_cache, v_cache


def run_kernels(b: Batch, scale, window, cap, block_rows, block_keys):
    dtype = _TORCH_DTYPES[b.dtype]

    def tensor(array, dt=dtype):
        return torch.from_numpy(np.ascontiguousarray(array)).to(dt)

    k_cache, v_cache = tensor(b.k_cache), tensor(b.v_cache)
    grid, meta = launch.write_kv_launch(b.num_tokens, b.num_kv_heads, b.head_dim, b.page_size)
    kernels.write_kv_kernel[grid](tensor(b.k), tensor(b.v), tensor(b.slot_mapping, torch.int32),
                                  k_cache, v_cache, k_cache, v_cache, **meta)
    grid, meta = launch.attention_launch(
        num_tokens=b.num_tokens, num_heads=b.num_heads, num_kv_heads=b.num_kv_heads, head_dim=b.head_dim,
        page_size=b.page_size, max_seqs=b.max_seqs, pages_per_seq=b.pages_per_seq, scale=scale,
        sliding_window=window, logit_soft_cap=cap, cache_dtype=b.dtype, block_rows=block_rows,
        block_keys=block_keys)
    out = torch.zeros((b.num_tokens, b.num_heads, b.head_dim), dtype=dtype)
    kernels.paged_attention_kernel[grid](
        tensor(b.q), k_cache, v_cache, tensor(b.page_table, torch.int32), tensor(b.cu_q_lens, torch.int32),
        tensor(b.kv_lens, torch.int32), tensor(b.positions, torch.int32),
        torch.tensor(len(b.seqs), dtype=torch.int32), out, **meta)
    return (out.float().numpy(), k_cache.float().numpy(), v_cache.float().numpy())


CASES = [
    # kv_heads, group, head_dim, page_size, window, cap, dtype, block_rows, block_keys, seqs
    (2, 1, 64, 16, None, None, "float32", 64, 64, MIXED),
    (1, 3, 128, 32, None, None, "bfloat16", 64, 64, MIXED),
    (1, 8, 64, 16, 24, None, "float32", 64, 64, MIXED),
    (2, 3, 64, 32, None, 2.0, "bfloat16", 64, 16, MIXED),  # key tiles smaller than a page
    (1, 8, 128, 32, 40, 5.0, "bfloat16", 64, 64, MIXED),
    (2, 1, 128, 16, 7, 2.0, "float32", 16, 32, BOUNDARY),  # 16-token blocks, q lengths 16/17/33
    (1, 3, 64, 16, 10, None, "float32", 16, 16, BOUNDARY),
    (2, 8, 64, 32, None, 2.0, "bfloat16", 64, 64, BOUNDARY),
]


def _case_id(case):
    kv, group, hd, ps, window, cap, dtype, rows, keys, seqs = case
    return (f"kv{kv}-gqa{group}-hd{hd}-ps{ps}-win{window or 0}-cap{cap or 0}-{dtype}-rows{rows}-keys{keys}-"
            f"{'mixed' if seqs is MIXED else 'boundary'}")


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_interpreted_kernels_match_numpy(case):
    num_kv_heads, group, head_dim, page_size, window, cap, dtype, block_rows, block_keys, seqs = case
    rng = np.random.default_rng(CASES.index(case))
    b = Batch(rng, seqs, num_kv_heads=num_kv_heads, group=group, head_dim=head_dim, page_size=page_size,
              dtype=dtype)
    assert any(kv_len % page_size for kv_len in b.kv_lens[:-1]), "want partially filled last pages"
    scale = 2.0 / np.sqrt(head_dim)  # scores of a few units, so a soft cap of 2 or 5 bends them
    out, k_cache, v_cache = run_kernels(b, scale, window, cap, block_rows, block_keys)
    expected, expected_k, expected_v = reference(b, scale, window, cap)

    # Every slot holds exactly what the write put there (NaN where nothing was written).
    np.testing.assert_array_equal(k_cache, expected_k.astype(np.float32))
    np.testing.assert_array_equal(v_cache, expected_v.astype(np.float32))
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(out[:b.num_real], expected, rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(out[b.num_real:], 0.0)  # padding rows untouched (zeroed by the caller)


def test_every_token_is_covered_once_by_the_block_grid():
    """Seven one-token sequences over 16-token blocks: each sequence gets its own block, and with a
    single visible key the softmax weight is exactly 1, so each row returns its own value row."""
    rng = np.random.default_rng(11)
    seqs = [(0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1), (0, 1)]  # 7 single-token prefills
    b = Batch(rng, seqs, num_kv_heads=1, group=1, head_dim=16, page_size=16, dtype="float32")
    out, _, _ = run_kernels(b, 1.0, None, None, block_rows=16, block_keys=16)
    np.testing.assert_array_equal(out[:b.num_real, 0], b.v[:b.num_real, 0])


def test_launch_rejects_bad_sizes_by_name():
    base = dict(num_tokens=8, num_heads=6, num_kv_heads=4, head_dim=64, page_size=16, max_seqs=2,
                pages_per_seq=4, scale=0.1, sliding_window=None, logit_soft_cap=None, cache_dtype="float32")
    with pytest.raises(ValueError, match="num_heads=6 is not a multiple of num_kv_heads=4"):
        launch.attention_launch(**base)
    with pytest.raises(ValueError, match="sliding_window=0"):
        launch.attention_launch(**{**base, "num_kv_heads": 2, "sliding_window": 0})
    with pytest.raises(ValueError, match="block_keys=24"):
        launch.attention_launch(**{**base, "num_kv_heads": 2, "block_keys": 24})
    with pytest.raises(ValueError, match="num_tokens=0"):
        launch.write_kv_launch(0, 2, 64, 16)


def _to_torch(array: np.ndarray):
    if array.dtype == ml_dtypes.bfloat16:
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(array.copy())


def _to_numpy(tensor) -> np.ndarray:
    if tensor.dtype == torch.bfloat16:
        return tensor.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return tensor.numpy()


def _interpreted_triton_call(*args, kernel, out_shape, grid, input_output_aliases=None, zeroed_outputs=(),
                             num_warps=None, num_stages=None, name="", **constexprs):
    """Stands in for jax_triton.triton_call on CPU with its calling convention: array inputs, then one
    pointer per output, then the constexprs by name; an aliased output is the input's own buffer, a
    zeroed output starts at 0, any other output starts as NaN (uninitialised on a GPU)."""
    import jax

    out_shapes = list(out_shape) if isinstance(out_shape, (tuple, list)) else [out_shape]
    aliases = dict(input_output_aliases or {})
    num_pointers = len(args) + len(out_shapes)
    assert len(kernel.arg_names) == num_pointers + len(constexprs), f"{name}: wrong number of arguments"
    assert set(kernel.arg_names[num_pointers:]) == set(constexprs), f"{name}: constexprs are not the last arguments"
    for source, target in aliases.items():
        assert (args[source].shape, args[source].dtype) == (out_shapes[target].shape, out_shapes[target].dtype)

    def host(*arrays):
        inputs = [_to_torch(np.asarray(a)) for a in arrays]
        outputs = []
        for index, spec in enumerate(out_shapes):
            aliased = [source for source, target in aliases.items() if target == index]
            if aliased:
                outputs.append(inputs[aliased[0]])
            else:
                fill = 0.0 if index in zeroed_outputs else float("nan")
                outputs.append(torch.full(spec.shape, fill, dtype=_TORCH_DTYPES[np.dtype(spec.dtype).name]))
        kernel[grid](*inputs, *outputs, **constexprs)
        return tuple(_to_numpy(t) for t in outputs)

    results = jax.pure_callback(host, tuple(jax.ShapeDtypeStruct(o.shape, o.dtype) for o in out_shapes), *args)
    return tuple(results) if isinstance(out_shape, (tuple, list)) else results[0]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_backend_call_matches_reference_backend(monkeypatch, dtype):
    """TritonBackend.__call__ (argument order, aliasing, zeroed output, layout) against surge's reference
    backend, with jax_triton replaced by the interpreter behind jax_triton's calling convention."""
    import types

    import jax
    import jax.numpy as jnp

    from surge.kernels.metadata import AttentionMetadata
    from surge.kernels.base import AttentionSpec
    from surge.kernels.reference import ReferenceBackend
    from surge.kernels.triton import TritonBackend

    monkeypatch.setitem(sys.modules, "jax_triton", types.SimpleNamespace(triton_call=_interpreted_triton_call))
    rng = np.random.default_rng(21)
    b = Batch(rng, MIXED, num_kv_heads=2, group=4, head_dim=64, page_size=16, dtype=dtype)
    md = AttentionMetadata(positions=b.positions, slot_mapping=b.slot_mapping, token_seq_ids=b.token_seq_ids,
                           page_table=b.page_table, cu_q_lens=b.cu_q_lens, kv_lens=b.kv_lens,
                           num_seqs=np.int32(len(b.seqs)))
    jdtype = jnp.dtype(dtype)
    new = [jnp.asarray(x, jdtype) for x in (b.q, b.k, b.v)]
    spec = AttentionSpec(scale=0.25, sliding_window=30, logit_soft_cap=4.0)

    triton_backend = TritonBackend()
    assert triton_backend.kv_cache_shape(b.k_cache.shape[0], 16, 2, 64) == b.k_cache.shape
    out, (k_cache, v_cache) = jax.jit(lambda *a: triton_backend.attention(*a, spec), donate_argnums=(3,))(
        *new, (jnp.asarray(b.k_cache, jdtype), jnp.asarray(b.v_cache, jdtype)), md)
    reference_layout = (0, 2, 1, 3)  # [pages, KV, page_size, hd] <-> [pages, page_size, KV, hd]
    want, (want_k, want_v) = jax.jit(lambda *a: ReferenceBackend().attention(*a, spec))(
        *new, (jnp.asarray(b.k_cache.transpose(reference_layout), jdtype),
               jnp.asarray(b.v_cache.transpose(reference_layout), jdtype)), md)

    assert out.dtype == jdtype and out.shape == b.q.shape
    for got, expected in ((k_cache, want_k), (v_cache, want_v)):  # float32: numpy's NaN-aware compare
        np.testing.assert_array_equal(np.asarray(got, np.float32).transpose(reference_layout),
                                      np.asarray(expected, np.float32))
    tolerance = 1e-5 if dtype == "float32" else 2e-2
    np.testing.assert_allclose(np.asarray(out[:b.num_real], np.float32), np.asarray(want[:b.num_real], np.float32),
                               rtol=tolerance, atol=tolerance)
    np.testing.assert_array_equal(np.asarray(out[b.num_real:], np.float32), 0.0)


def test_backend_reports_why_it_cannot_run_here_without_importing_jax_triton():
    import jax

    from surge.kernels import registry
    from surge.kernels.triton import TritonBackend

    assert "jax_triton" not in sys.modules
    if jax.default_backend() == "cpu":
        reason = TritonBackend.unavailable_reason()
        assert reason is not None and "GPU" in reason and "'cpu'" in reason
        assert registry.unavailable_reason("triton") == reason
    assert "jax_triton" not in sys.modules
    assert TritonBackend().kv_cache_shape(10, 16, 2, 64) == (10, 2, 16, 64)


_AOT_SCRIPT = textwrap.dedent("""
    import json, sys
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    from surge.triton_kernels import launch, paged_attention as kernels

    if "nvidia" not in backends:
        print("AOT-SKIP this triton has no CUDA backend; it has " + ", ".join(sorted(backends)))
        raise SystemExit(0)
    TYPES = {"bfloat16": "bf16", "float32": "fp32"}
    target = GPUTarget("cuda", 90, 32)
    results = []
    for variant in json.loads(sys.argv[1]):
        cache_dtype = variant.pop("cache_dtype")
        dtype = TYPES[cache_dtype]
        if variant.pop("kernel") == "write":
            grid, meta = launch.write_kv_launch(**variant)
            fn, pointers = kernels.write_kv_kernel, {name: "*" + dtype for name in (
                "k_new", "v_new", "k_cache_in", "v_cache_in", "k_cache", "v_cache")}
            pointers["slot_mapping"] = "*i32"
            order, options = list(fn.arg_names[:7]), {"num_warps": 1, "num_stages": 1}
        else:
            grid, meta = launch.attention_launch(cache_dtype=cache_dtype, **variant)
            fn = kernels.paged_attention_kernel
            pointers = {name: "*i32" for name in ("page_table", "cu_q_lens", "kv_lens", "positions", "num_seqs")}
            pointers.update({name: "*" + dtype for name in ("q", "k_cache", "v_cache", "out")})
            order, options = list(fn.arg_names[:9]), {"num_warps": 4, "num_stages": 2}
        signature = {**{name: pointers[name] for name in order}, **{k: "constexpr" for k in meta}}
        compiled = triton.compile(triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=meta),
                                  target=target, options=options)
        results.append({"name": fn.__name__, "ptx": compiled.asm["ptx"],
                        "cubin": len(compiled.asm.get("cubin", b""))})
    print("AOT-RESULT " + json.dumps(results))
""")

_ATTENTION_SIZES = dict(num_tokens=256, max_seqs=64, pages_per_seq=128, scale=0.088)


def _compile_for_sm90(variants):
    """Compile each variant in a subprocess without the interpreter; [(kernel name, ptx, cubin bytes)]."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [repo, env.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-c", _AOT_SCRIPT, json.dumps(variants)], capture_output=True,
                          text=True, env=env, timeout=600, cwd=repo)
    skipped = [line for line in proc.stdout.splitlines() if line.startswith("AOT-SKIP ")]
    if skipped:
        pytest.skip(skipped[-1][len("AOT-SKIP "):])
    lines = [line for line in proc.stdout.splitlines() if line.startswith("AOT-RESULT ")]
    if proc.returncode != 0 or not lines:
        pytest.fail(f"AOT compile for sm_90 failed (rc={proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads(lines[-1][len("AOT-RESULT "):])
    for result in results:
        assert ".target sm_90" in result["ptx"]
        assert f".entry {result['name']}(" in result["ptx"], f"{result['name']} entry missing from the PTX"
        assert result["cubin"] > 0, f"ptxas produced no cubin for {result['name']}"
    return results


def test_kernels_compile_ahead_of_time_for_sm90():
    results = _compile_for_sm90([
        dict(kernel="write", cache_dtype="bfloat16", num_tokens=256, num_kv_heads=8, head_dim=128, page_size=16),
        # Llama-3-8B-like layer, then GQA 3 (padded head group), head_dim 64, window and soft cap.
        dict(kernel="attention", cache_dtype="bfloat16", num_heads=32, num_kv_heads=8, head_dim=128, page_size=16,
             sliding_window=None, logit_soft_cap=None, **_ATTENTION_SIZES),
        dict(kernel="attention", cache_dtype="bfloat16", num_heads=12, num_kv_heads=4, head_dim=64, page_size=32,
             sliding_window=128, logit_soft_cap=30.0, **_ATTENTION_SIZES),
    ])
    assert [r["name"] for r in results] == ["write_kv_kernel"] + ["paged_attention_kernel"] * 2
    for result in results[1:]:
        assert "wgmma" in result["ptx"], "the attention dots should run on Hopper tensor cores"


@pytest.mark.slow
def test_float32_kernels_compile_ahead_of_time_for_sm90():
    # float32 dots use DOT_PRECISION="ieee" (exact, no TF32), which compiles slowly (~15 s).
    _compile_for_sm90([
        dict(kernel="write", cache_dtype="float32", num_tokens=64, num_kv_heads=2, head_dim=64, page_size=16),
        dict(kernel="attention", cache_dtype="float32", num_heads=8, num_kv_heads=2, head_dim=64, page_size=16,
             sliding_window=32, logit_soft_cap=None, **_ATTENTION_SIZES),
    ])


def test_kernels_live_in_surges_namespace_and_import_without_jax():
    """Installed as `surge.triton_kernels` (never a top-level `triton_kernels` that would shadow OpenAI's)."""
    probe = ("import sys, surge.triton_kernels.paged_attention as k, surge.triton_kernels.launch; "
             "print(k.__name__, 'jax' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["surge.triton_kernels.paged_attention", "False"]
