"""Many processes serving one model: who this process is, and joining the others through jax.distributed.

In: the engine.distributed config (each key at its default read from JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID). Out: a `Cluster` (coordinator, number of processes, this process's
index) and, for more than one process, the JAX distributed runtime started (`join`) before any device is
used, with gloo as the CPU collectives, so `jax.devices()` lists every process's devices and the mesh
spans them all.

A lost process: the coordinator (in process 0) counts a process lost once it has sent no heartbeat for
engine.distributed.heartbeat_timeout_s, and the runtime then ends every other process with an error that
names it ("The following tasks are unhealthy (stopped sending heartbeats): 1"); a process whose
coordinator is gone ends the same way. No process hangs in a collective whose peer died.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Optional

from surge.config import ConfigError, DistributedConfig

logger = logging.getLogger("surge")

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


@dataclass(frozen=True)
class Cluster:
    coordinator_address: str  # "" for one process
    num_processes: int
    process_id: int

    @property
    def is_multi_process(self) -> bool:
        return self.num_processes > 1

    @property
    def is_leader(self) -> bool:
        """Process 0: it runs the scheduler and the server; the others follow its steps."""
        return self.process_id == 0


def _env_int(environ: Mapping[str, str], name: str) -> Optional[int]:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"${name}={raw!r} is not an integer") from None


def resolve(cfg: DistributedConfig, environ: Mapping[str, str] = os.environ) -> Cluster:
    """The cluster `cfg` describes, its unset keys read from the JAX environment variables; ConfigError
    naming the key or variable when the result cannot work."""
    address = cfg.coordinator_address or environ.get(ENV_COORDINATOR, "").strip()
    num = cfg.num_processes or _env_int(environ, ENV_NUM_PROCESSES) or 1
    pid = cfg.process_id if cfg.process_id >= 0 else _env_int(environ, ENV_PROCESS_ID)
    where = "engine.distributed"
    if num < 1:
        raise ConfigError(f"{where}.num_processes (or ${ENV_NUM_PROCESSES}) is {num}: it must be >= 1")
    if num == 1:
        if pid not in (None, 0):
            raise ConfigError(f"{where}.process_id (or ${ENV_PROCESS_ID}) is {pid} but there is one process")
        return Cluster("", 1, 0)
    if not address:
        raise ConfigError(f"{where}.num_processes={num} needs {where}.coordinator_address (or "
                          f"${ENV_COORDINATOR}): host:port of process 0")
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}.coordinator_address (or ${ENV_COORDINATOR}) {address!r} is not host:port")
    if pid is None:
        raise ConfigError(f"{where}.num_processes={num} needs {where}.process_id (or ${ENV_PROCESS_ID})")
    if not 0 <= pid < num:
        raise ConfigError(f"{where}.process_id (or ${ENV_PROCESS_ID}) is {pid}: it must be in [0, {num})")
    return Cluster(address, num, pid)


_joined: Optional[Cluster] = None


def join(cfg: DistributedConfig) -> Cluster:
    """Resolve the cluster and, for many processes, start the JAX distributed runtime (once per process;
    a second call with the same cluster returns it). Must run before anything touches a device, and on the
    main thread before any signal handler of our own is installed: the runtime installs its own SIGTERM
    handler (a preemption notifier), which a later handler replaces."""
    global _joined
    cluster = resolve(cfg)
    if _joined is not None:
        if _joined != cluster:
            raise RuntimeError(f"this process already joined {_joined}, not {cluster}")
        return _joined
    if cluster.is_multi_process:
        import jax

        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(cluster.coordinator_address, cluster.num_processes, cluster.process_id,
                                   initialization_timeout=cfg.initialization_timeout_s,
                                   heartbeat_timeout_seconds=cfg.heartbeat_timeout_s)
    _joined = cluster
    return cluster


def describe(cluster: Cluster) -> str:
    """The start-up line of a multi-process engine: which process this is, and its devices."""
    import jax

    return (f"process {cluster.process_id} of {cluster.num_processes}, {jax.local_device_count()} local devices "
            f"({jax.device_count()} in all)")


def shutdown() -> None:
    """Leave the distributed runtime (every process calls it at a clean stop)."""
    global _joined
    if _joined is not None and _joined.is_multi_process:
        import jax

        jax.distributed.shutdown()
    _joined = None


__all__ = ["Cluster", "describe", "join", "resolve", "shutdown"]
