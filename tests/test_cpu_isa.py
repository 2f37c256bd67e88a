"""The CPU kernels in every instruction-set variant this machine runs, and the runtime choice.

Each variant (surge._C.cpu_isas(): scalar, avx2, avx512, avx512_bf16 on x86; neon,
neon_dotprod on AArch64) is forced in turn and runs the same float64-oracle checks as the
default one: matmul in its three weight layouts (float32 and bfloat16), paged attention
(GQA, windows, soft caps, bfloat16 caches, NaN-filled free pages) and SiLU-and-multiply. A
variant the processor lacks is skipped, naming the features it needs, so the same suite runs
wherever it has them. The C++ unit tests of the kernels (csrc/tests/cpu_kernel_tests.cc) run
natively and, cross-compiled for AArch64, under qemu-aarch64: that is where NEON is tested
on an x86 machine, and under qemu-x86_64 -cpu Haswell, an x86 CPU without AVX-512, where the build
must still start and run avx2 (skipped, saying why, where the toolchain or qemu is absent).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from surge.kernels import cpu
from surge.kernels.base import KernelBackend
from surge.kernels.cpu import CpuBackend

import test_cpu_attention as attention_tests  # noqa: E402  (tests/ is on sys.path under pytest)
import test_cpu_matmul as matmul_tests  # noqa: E402

pytestmark = pytest.mark.skipif(CpuBackend.unavailable_reason() is not None,
                                reason=str(CpuBackend.unavailable_reason()))

REPO = pathlib.Path(__file__).resolve().parents[1]
X86_ISAS = ["scalar", "avx2", "avx512", "avx512_bf16"]


def _variants():
    from surge import _C
    return {info["name"]: info for info in _C.cpu_isas()}


@pytest.fixture(params=X86_ISAS if os.uname().machine in ("x86_64", "AMD64") else ["scalar", "neon", "neon_dotprod"])
def isa(request):
    info = _variants().get(request.param)
    if info is None:
        pytest.skip(f"this build has no {request.param} variant")
    if not info["supported"]:
        pytest.skip(f"{request.param} needs {info['needs']}, which this processor lacks")
    before = cpu.isa()
    cpu.set_isa(request.param)
    try:
        yield request.param
    finally:
        cpu.set_isa(before)


def test_the_default_is_the_best_supported_variant():
    supported = cpu.supported_isas()
    assert supported[0] == "scalar"
    if "SURGE_CPU_ISA" not in os.environ:
        assert cpu.isa() == supported[-1]
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    if " avx512f " in flags and " avx512bw " in flags and " avx512vl " in flags and " avx512dq " in flags:
        assert "avx512" in supported
    if " avx512_bf16 " in flags and " avx512_vnni " in flags:
        assert "avx512_bf16" in supported
    if " avx2 " in flags and " fma " in flags:
        assert "avx2" in supported


def test_set_isa_switches_and_rejects_bad_names(isa):
    assert cpu.isa() == isa
    with pytest.raises(ValueError, match="unknown cpu isa 'sse9'.*auto, scalar"):
        cpu.set_isa("sse9")
    assert cpu.isa() == isa
    unsupported = [name for name, info in _variants().items() if not info["supported"]]
    for name in unsupported:
        with pytest.raises(ValueError, match=f"cpu isa '{name}' needs"):
            cpu.set_isa(name)


def _run_isa_probe(value):
    env = dict(os.environ, SURGE_CPU_ISA=value)
    return subprocess.run([sys.executable, "-c", "from surge import _C; print(_C.cpu_isa())"], env=env,
                          capture_output=True, text=True, timeout=120)


def test_environment_variable_forces_a_variant_and_refuses_unknown_ones():
    proc = _run_isa_probe("scalar")
    assert proc.returncode == 0 and proc.stdout.strip() == "scalar", proc.stderr[-2000:]
    proc = _run_isa_probe("avx9000")
    assert proc.returncode != 0 and "unknown cpu isa 'avx9000'" in proc.stderr


def test_backend_config_forces_a_variant_and_logs_it(caplog):
    from surge.config import BackendConfig

    before = cpu.isa()
    try:
        with caplog.at_level("INFO", logger="surge"):
            CpuBackend(cpu.CpuOptions(cpu_isa="scalar"))
        assert cpu.isa() == "scalar"
        assert any("cpu kernels: scalar" in r.getMessage() for r in caplog.records)
        with pytest.raises(ValueError, match="backend.cpu_isa"):
            BackendConfig(name="cpu", options={"cpu_isa": "mmx"})
    finally:
        cpu.set_isa(before)


MATMUL_CASES = [(m, k, n) for m in (1, 7, 33) for k in (64, 576) for n in (1, 24, 100, 3072)
                if m * k * n <= 7 * 576 * 3072]


@pytest.mark.parametrize("transpose_w", [False, True], ids=["kn", "nk"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_matmul_matches_float64_oracle(isa, dtype, transpose_w):
    for m, k, n in MATMUL_CASES + [(1, 576, 49152), (5, 13, 100), (3, 1, 30)]:
        x, w_exact, w_read, w_arg = matmul_tests._operands(m, k, n, dtype, transpose_w)
        y = matmul_tests._jitted[transpose_w](jnp.asarray(x), w_arg)
        matmul_tests._check(y, x, w_read, w_exact, dtype)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
def test_packed_matmul_matches_float64_oracle(isa, dtype):
    for m, k, n in [(1, 64, 48), (3, 70, 32), (5, 128, 80), (33, 96, 112), (130, 48, 16), (1, 576, 960)]:
        x, w, w_read, stored = matmul_tests._operands(m, k, n, dtype, False)
        packed = matmul_tests.cpu_matmul.pack(stored)
        matmul_tests._check(jax.jit(matmul_tests.matmul)(jnp.asarray(x), packed), x, w_read, w, dtype)


@pytest.mark.parametrize("case", [c.values for c in attention_tests.CASES], ids=[c.id for c in attention_tests.CASES])
def test_attention_matches_numpy_oracle(isa, case):
    attention_tests.test_matches_numpy_oracle_and_writes_slots(*case)


def test_silu_and_mul_matches_jax(isa):
    backend = CpuBackend()
    for shape in [(1, 2 * 576), (37, 2 * 1536), (3, 5, 2 * 12)]:
        x = jnp.asarray(np.random.default_rng(len(shape)).standard_normal(shape) * 6, jnp.float32)
        got = jax.jit(backend.silu_and_mul)(x)
        want = KernelBackend.silu_and_mul(backend, x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-6, atol=1e-6)


# ---- the C++ kernel tests: native, under qemu-aarch64, and under qemu-x86_64 as a CPU without AVX-512 ----

KERNEL_SOURCES = ["csrc/tests/cpu_kernel_tests.cc", "csrc/cpu/isa.cc", "csrc/attention/kernel.cc",
                  "csrc/matmul/work.cc", "csrc/common/pool.cc", "csrc/cpu/scalar/kernels.cc"]
ARCH_SOURCES = {
    "x86_64": ["csrc/cpu/x86/avx2/kernels.cc", "csrc/cpu/x86/avx512/kernels.cc",
               "csrc/cpu/x86/avx512_bf16/kernels.cc"],
    "aarch64": ["csrc/cpu/arm/neon/kernels.cc", "csrc/cpu/arm/neon_dotprod/kernels.cc"],
}


def _build_kernel_tests(compiler: str, arch: str) -> pathlib.Path:
    """Compile the kernel test binary (cached by a hash of every csrc file and the compiler)."""
    sources = KERNEL_SOURCES + ARCH_SOURCES[arch]
    digest = hashlib.sha256(compiler.encode())
    for path in sorted((REPO / "csrc").rglob("*")):
        if path.is_file():
            digest.update(path.read_bytes())
    cache = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache")) / "surge" / "kernel-tests"
    binary = cache / f"cpu_kernel_tests-{arch}-{digest.hexdigest()[:16]}"
    if binary.exists():
        return binary
    cache.mkdir(parents=True, exist_ok=True)
    partial = binary.with_suffix(".partial")
    cmd = [compiler, "-std=c++17", "-O2", "-fno-math-errno", f"-I{REPO / 'csrc'}", *(str(REPO / s) for s in sources),
           "-lpthread", "-o", str(partial)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    partial.rename(binary)
    return binary


@pytest.mark.slow
def test_cpp_kernel_tests_native():
    arch = os.uname().machine
    if arch not in ARCH_SOURCES:
        pytest.skip(f"no kernel variants besides scalar for {arch}")
    compiler = shutil.which("c++") or shutil.which("g++")
    if compiler is None:
        pytest.skip("no C++ compiler (c++ / g++) on PATH")
    proc = subprocess.run([str(_build_kernel_tests(compiler, arch))], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-6000:]
    for name in cpu.supported_isas():
        assert f"PASS {name} " in proc.stdout


@pytest.mark.slow
def test_cpp_kernel_tests_neon_under_qemu():
    if os.uname().machine == "aarch64":
        pytest.skip("native AArch64: test_cpp_kernel_tests_native runs the NEON variants")
    compiler = shutil.which("aarch64-linux-gnu-g++")
    qemu = shutil.which("qemu-aarch64")
    sysroot = pathlib.Path("/usr/aarch64-linux-gnu")
    if compiler is None or qemu is None or not sysroot.is_dir():
        pytest.skip("needs aarch64-linux-gnu-g++, qemu-aarch64 and /usr/aarch64-linux-gnu "
                    "(Debian: apt-get install g++-aarch64-linux-gnu qemu-user)")
    binary = _build_kernel_tests(compiler, "aarch64")
    proc = subprocess.run([qemu, "-L", str(sysroot), str(binary), "scalar", "neon", "neon_dotprod"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    for name in ("neon", "neon_dotprod"):
        assert f"PASS {name} " in proc.stdout
    assert "3 variant(s) tested, 0 failure(s)" in proc.stdout


@pytest.mark.slow
def test_cpp_kernel_tests_on_an_x86_cpu_without_avx512_under_qemu():
    """The x86 build (with its AVX-512 variants inside) starts and picks avx2 on a Haswell (AVX2 + FMA, no
    AVX-512): a load-time initializer compiled inside a variant's target region would run there and die
    of an illegal instruction, as the avx512 variants' tile table once did at import."""
    if os.uname().machine != "x86_64":
        pytest.skip("builds the x86-64 kernel test binary: needs an x86-64 host")
    compiler = shutil.which("c++") or shutil.which("g++")
    qemu = shutil.which("qemu-x86_64")
    if compiler is None or qemu is None:
        pytest.skip("needs a C++ compiler and qemu-x86_64 (Debian: apt-get install qemu-user)")
    binary = _build_kernel_tests(compiler, "x86_64")
    env = {k: v for k, v in os.environ.items() if k != "SURGE_CPU_ISA"}  # start-up's own choice
    proc = subprocess.run([qemu, "-cpu", "Haswell", str(binary), "scalar", "avx2"],
                          capture_output=True, text=True, timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "DEFAULT avx2\n" in proc.stdout  # the best variant Haswell has
    assert "PASS avx2 " in proc.stdout and "PASS scalar " in proc.stdout
    assert "2 variant(s) tested, 0 failure(s)" in proc.stdout
