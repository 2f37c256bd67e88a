"""The ``cpu`` kernel backend: surge's C++ ragged paged-attention kernel, called through XLA FFI.

In: per layer, q [T, H, hd], k and v [T, KV, hd], the layer's cache ``(k_pages, v_pages)``
each [num_pages, KV, page_size, hd] (a page holds each KV head's rows contiguously, so the
kernel walks one (sequence, KV head) over contiguous memory), and the AttentionMetadata.
Out: attention [T, H, hd] in q's dtype (zeros for padding tokens) and the cache with this
step's k, v written at ``slot_mapping``.

The backend also runs the model's projections through surge's C++ GEMM on weights it
packs into panels at load (``prepare_model``; see surge.kernels.cpu_matmul), the
mixture-of-experts projections as one C++ matmul per expert over that expert's rows and packed
weights (``surge_cpu_grouped_matmul``), the gated
MLP's SiLU-and-multiply in C++, and keeps activations in float32 (``compute_dtype``).

Every kernel runs in the instruction-set variant surge._C picked at load from the processor
(scalar, avx2, avx512, avx512_bf16; neon, neon_dotprod on AArch64): ``isa()`` names it,
``backend.cpu_isa`` (or the SURGE_CPU_ISA environment variable) forces a lower one, and
the backend logs which runs when it starts. A GGUF-quantized weight (what model.dtype=auto
keeps of a GGUF file here, or model.dtype=quantized / model.quantize=q8_0) is multiplied in its
quantized form (surge.kernels.cpu_matmul; ``multiplies_quantized``).

One FFI call (target ``surge_cpu_paged_attention`` in ``surge._C``) writes then attends, with
the contract's masks (causal, sliding window, attention chunk) and soft cap in the kernel.
The caches are aliased operand -> result, so under ``jit`` with the cache donated XLA
updates them in place. q and the cache may be float32 or bfloat16 (math in float32);
k and v are cast to the cache dtype. Bad metadata (a page id or slot outside the cache,
inconsistent lengths) raises an error from the call naming the input, never a crash.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from surge.kernels import native
from surge.kernels.base import AttentionSpec, KernelBackend, KVCache
from surge.kernels.metadata import AttentionMetadata
from surge.kernels.registry import register_backend

TARGET = "surge_cpu_paged_attention"
SILU_MUL_TARGET = "surge_cpu_silu_mul"
_STORAGE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16))

logger = logging.getLogger("surge")


def isa() -> str:
    """The instruction-set variant the kernels run now."""
    return native.module().cpu_isa()


def supported_isas() -> List[str]:
    """Variants this processor runs, lowest first."""
    return [info["name"] for info in native.module().cpu_isas() if info["supported"]]


def set_isa(name: str) -> None:
    """Switch every CPU kernel to variant `name` ("auto" = the best here), process-wide.

    ValueError names the features the processor lacks, or the variants this build has.
    """
    native.module().set_cpu_isa(str(name))


CPU_ISAS = ("auto", "scalar", "avx2", "avx512", "avx512_bf16", "neon", "neon_dotprod")


@dataclasses.dataclass(frozen=True)
class CpuOptions:
    # Threads of the cpu backend's one pool (GEMM, attention, SiLU-and-multiply), the caller
    # included; 0 = all cores.
    num_threads: int = 0
    # Instruction-set variant of the kernels: auto (the best this processor has, or the
    # SURGE_CPU_ISA environment variable), scalar, avx2, avx512, avx512_bf16 (x86), neon,
    # neon_dotprod (AArch64). A variant the processor lacks fails at start-up.
    cpu_isa: str = "auto"

    def __post_init__(self) -> None:
        if self.num_threads < 0:
            raise ValueError(f"invalid config value for 'backend.num_threads': {self.num_threads} must be >= 0")
        if self.cpu_isa not in CPU_ISAS:
            raise ValueError(f"invalid config value for 'backend.cpu_isa': {self.cpu_isa!r} is not "
                             f"{'|'.join(CPU_ISAS)}")


@register_backend("cpu", options=CpuOptions, platforms=("cpu",))
class CpuBackend(KernelBackend):
    multiplies_quantized = True

    def __init__(self, options: Optional[CpuOptions] = None) -> None:
        """Given options set the process-wide pool size and ISA; without, both stay as they are."""
        super().__init__(options)
        if native.unavailable_reason() is None:
            if options is not None:
                native.set_num_threads(options.num_threads)
                # auto: SURGE_CPU_ISA when set, else the best variant (undoing an earlier engine's choice).
                cpu_isa = options.cpu_isa
                set_isa(os.environ.get("SURGE_CPU_ISA") or "auto" if cpu_isa == "auto" else cpu_isa)
            logger.info("cpu kernels: %s (this processor runs %s)", isa(), ", ".join(supported_isas()))

    @classmethod
    def unavailable_reason(cls, options=None) -> Optional[str]:
        if native.unavailable_reason() is not None:
            return native.unavailable_reason()
        platform = jax.default_backend()
        if platform != "cpu":
            return f"the cpu kernel runs on jax's cpu platform, but the default backend is {platform}"
        return None

    def matmul(self, x: jax.Array, w: jax.Array, *, transpose_w: bool = False, out_dtype=None) -> jax.Array:
        """The projections through surge's C++ GEMM (float32 or bfloat16 weights, float32 math)."""
        from surge.kernels import cpu_matmul

        return cpu_matmul.matmul(x, w, transpose_w=transpose_w).astype(out_dtype or x.dtype)

    def grouped_matmul(self, x: jax.Array, w: jax.Array, group_sizes: jax.Array) -> jax.Array:
        """Expert projections in C++: each expert's rows times its own (packed) weights, nothing dense.

        Where the C++ kernel cannot run (no surge._C, another default platform, a quantized stack), XLA
        loops over each expert's own rows (surge.kernels.grouped_matmul; XLA:CPU runs ragged_dot densely).
        """
        from surge.kernels import cpu_matmul
        from surge.kernels.grouped_matmul import grouped_matmul_loops

        y = cpu_matmul.grouped_matmul(x, w, group_sizes)
        if y is None:
            if w.ndim == 2:
                raise RuntimeError("cpu grouped matmul: packed expert weights need the C++ kernel, which is "
                                   f"unavailable: {cpu_matmul.unavailable_reason()}")
            y = grouped_matmul_loops(x, w, group_sizes)
        return y.astype(x.dtype)

    def silu_and_mul(self, gate_up: jax.Array) -> jax.Array:
        """The gated MLP's activation in C++ (float32; XLA:CPU's exp is several times slower)."""
        if gate_up.dtype != jnp.float32 or SILU_MUL_TARGET not in native.TARGETS:
            return super().silu_and_mul(gate_up)
        width = gate_up.shape[-1]
        rows = gate_up.reshape(-1, width)
        call = jax.ffi.ffi_call(SILU_MUL_TARGET, jax.ShapeDtypeStruct((rows.shape[0], width // 2), jnp.float32),
                                vmap_method="sequential")
        return call(rows).reshape(*gate_up.shape[:-1], width // 2)

    def compute_dtype(self, weight_dtype):
        """float32 always: a CPU has no fast bfloat16 arithmetic and the GEMM widens bfloat16
        weights to float32 anyway, so float32 activations cost nothing and lose no precision."""
        return jnp.dtype(jnp.float32)

    def prepare_model(self, model) -> None:
        """Packs every projection (and the lm_head) into the GEMM's panel layout.

        A tied lm_head gets its own packed copy of the embedding's transpose (the table
        itself stays for the token lookup): vocab x hidden more weight memory, for an
        lm_head that streams contiguous panels instead of strided rows.
        """
        from flax import nnx

        from surge.kernels import cpu_matmul

        if not cpu_matmul.available():
            return

        def pack(owner, name: str) -> None:
            param = getattr(owner, name, None)
            if param is not None and cpu_matmul.can_pack(param[...]):
                setattr(owner, name, nnx.Param(cpu_matmul.pack(param[...])))

        for layer in getattr(model, "layers", ()):
            for name in ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"):
                pack(layer, name)
            moe = getattr(layer, "moe", None)
            if moe is not None:  # expert stacks [E, K, N] -> [E, K * N] of panels; the shared expert as any MLP
                for name in ("experts_gate_up", "experts_down"):
                    if cpu_matmul.can_pack_experts(getattr(moe, name)[...]):
                        setattr(moe, name, nnx.Param(cpu_matmul.pack_experts(getattr(moe, name)[...])))
                for name in ("shared_gate_up", "shared_down"):
                    pack(moe, name)
        if getattr(model, "lm_head", None) is not None:
            pack(model, "lm_head")
        elif hasattr(model, "embed_tokens") and cpu_matmul.can_pack(model.embed_tokens[...], transpose_w=True):
            model.lm_head = nnx.data(nnx.Param(cpu_matmul.pack(model.embed_tokens[...], transpose_w=True)))

    def kv_cache_shape(self, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int) -> tuple:
        return (num_pages, num_kv_heads, page_size, head_dim)

    def attention(self, q: jax.Array, k: jax.Array, v: jax.Array, kv_cache: KVCache, md: AttentionMetadata,
                  spec: AttentionSpec) -> Tuple[jax.Array, KVCache]:
        scale, sliding_window, logit_soft_cap, attention_chunk = (
            spec.scale, spec.sliding_window, spec.logit_soft_cap, spec.chunk_size)
        k_pages, v_pages = kv_cache
        _check_dtypes(q, k_pages, v_pages)
        call = jax.ffi.ffi_call(
            TARGET,
            (jax.ShapeDtypeStruct(q.shape, q.dtype),
             jax.ShapeDtypeStruct(k_pages.shape, k_pages.dtype),
             jax.ShapeDtypeStruct(v_pages.shape, v_pages.dtype)),
            input_output_aliases={3: 1, 4: 2},
        )
        out, k_pages, v_pages = call(
            q, k.astype(k_pages.dtype), v.astype(v_pages.dtype), k_pages, v_pages,
            _int32(md.slot_mapping), _int32(md.positions), _int32(md.cu_q_lens), _int32(md.page_table),
            _int32(md.kv_lens), _int32(md.num_seqs).reshape(()),
            scale=np.float32(scale),
            sliding_window=np.int32(sliding_window or 0),
            soft_cap=np.float32(logit_soft_cap or 0.0),
            attention_chunk=np.int32(attention_chunk or 0),
        )
        return out, (k_pages, v_pages)


def _int32(x) -> jax.Array:
    return jnp.asarray(x, jnp.int32)


def _check_dtypes(q: jax.Array, k_pages: jax.Array, v_pages: jax.Array) -> None:
    for label, array in (("q", q), ("k_pages", k_pages), ("v_pages", v_pages)):
        if jnp.dtype(array.dtype) not in _STORAGE_DTYPES:
            raise TypeError(f"cpu attention: {label} has dtype {array.dtype}; it must be float32 or bfloat16")
    if k_pages.dtype != v_pages.dtype:
        raise TypeError(f"cpu attention: k_pages ({k_pages.dtype}) and v_pages ({v_pages.dtype}) must share a dtype")
