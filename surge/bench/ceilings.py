"""What this machine can do at best: the ceilings a kernel's figures are read against.

In: nothing but the default JAX device (and a dtype for the matmul). Out:
- `memory_bandwidth()`: bytes/s of a large streaming copy — a jitted, in-place `x + 1`
  over a big array on the device (bytes read + written), and on CPU also numpy's
  single-threaded `copyto`; the best of them is the ceiling;
- `matmul_flops(dtype)`: FLOP/s of a jitted square matmul;
- `nominal_hbm_bandwidth(device_kind)`: a GPU's datasheet HBM bandwidth, when known.
Each figure is the median of a few timed runs after one warm-up run.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import numpy as np

# Datasheet HBM bandwidths (bytes/s), matched against jax's device_kind in this order.
_NOMINAL_HBM = (
    (("H200",), 4.8e12),
    (("H100", "PCIe"), 2.0e12),
    (("H100",), 3.35e12),
    (("A100", "40GB"), 1.555e12),
    (("A100",), 2.039e12),
    (("L40S",), 0.864e12),
    (("A10G",), 0.6e12),
    (("L4",), 0.3e12),
)


def nominal_hbm_bandwidth(device_kind: str) -> Optional[float]:
    for needles, bandwidth in _NOMINAL_HBM:
        if all(n.lower() in device_kind.lower() for n in needles):
            return bandwidth
    return None


def median_time(run: Callable[[], object], repeats: int = 5) -> float:
    """Median seconds of `run()` (which must block until its work is done) after one warm-up call."""
    run()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def memory_bandwidth(num_bytes: Optional[int] = None) -> dict:
    """{"jax_copy": B/s, "numpy_copy": B/s (CPU only), "ceiling": best}."""
    import jax
    import jax.numpy as jnp

    on_cpu = jax.default_backend() == "cpu"
    num_bytes = num_bytes or (256 << 20 if on_cpu else 2 << 30)
    n = num_bytes // 4
    # The input is donated, so the output reuses its buffer: no fresh pages to fault in on every call.
    add_one = jax.jit(lambda a: a + 1.0, donate_argnums=0)
    state = {"x": jnp.ones((n,), jnp.float32)}

    def run() -> None:
        state["x"] = add_one(state["x"])
        state["x"].block_until_ready()

    figures = {"jax_copy": 2 * n * 4 / median_time(run)}
    state.clear()  # free the device array before the numpy copy allocates its own
    if on_cpu:
        src = np.ones(n, np.float32)
        dst = np.empty_like(src)
        figures["numpy_copy"] = 2 * n * 4 / median_time(lambda: np.copyto(dst, src))
    figures["ceiling"] = max(figures.values())
    return figures


def matmul_flops(dtype="float32", size: Optional[int] = None) -> float:
    """FLOP/s of a jitted `size x size` matmul in `dtype` (XLA's default precision)."""
    import jax
    import jax.numpy as jnp

    size = size or (1024 if jax.default_backend() == "cpu" else 8192)
    keys = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(keys[0], (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(keys[1], (size, size), jnp.float32).astype(dtype)
    matmul = jax.jit(jnp.matmul)
    return 2 * size**3 / median_time(lambda: matmul(a, b).block_until_ready())
