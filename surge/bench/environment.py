"""What a benchmark result must record to be reproducible.

Out: a dict with the git commit, jax/jaxlib versions, platform and device kind,
CPU model and thread count, and the surge version.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
        commit = out.stdout.strip()
        return commit + ("-dirty" if dirty.stdout.strip() else "") if commit else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_environment() -> dict:
    import jax
    import jaxlib

    import surge

    device = jax.devices()[0]
    return {
        "surge_version": surge.__version__,
        "git_commit": _git_commit(),
        "jax_version": jax.__version__,
        "jaxlib_version": jaxlib.__version__,
        "platform": device.platform,
        "device_kind": device.device_kind,
        "num_devices": jax.device_count(),
        "cpu_model": _cpu_model(),
        "cpu_threads": os.cpu_count(),
        "python": platform.python_version(),
    }
