"""Lockstep steps across processes: process 0 broadcasts each step's inputs, every process runs the step.

In: the runner's mesh (spanning every process's devices), and per step on process 0 the step's bucket
key and packed input buffers (surge.runner.transfer). Out: on every process the same buffers as global
jax.Arrays replicated over the mesh, the inputs the compiled step program takes; on the followers the
loop (`follow`) that receives each step and runs the same program on the same state.

Each step is two broadcasts, both JAX collectives (gloo on CPU), no transport of our own: a fixed-shape
int32 header (command, num_tokens, num_seqs), then the buffers of that bucket's layout. A broadcast is a
global array sharded over a (processes, local devices) mesh, whose row p process p fills (process 0 with
the data, the others with zeros), and one jitted program that keeps row 0, replicated. The header of a
stop is the last broadcast: the followers return from `follow` and process 0 from `send_stop`.

Every process must launch its multi-process programs in the same order, so a broadcast is launched
only after the previous step program has finished (`_wait_previous`): the step's host work still
overlaps the device, only the two small broadcasts wait for it.

While process 0 is idle (no request), the followers wait inside a broadcast, and a CPU collective that
waits too long fails. So process 0 sends a keep-alive header (`KEEP_ALIVE`, which the followers skip)
whenever nothing was broadcast for `keep_alive_s`, from a thread started at its first step. Everything
process 0 launches across processes — a step's two broadcasts and its program, a keep-alive, the stop —
happens under one lock (`ordered`), so every process sees the same order.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Callable, Optional, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

logger = logging.getLogger("surge")

STEP, STOP, KEEP_ALIVE = 1, 2, 3
_HEADER_SIZE = 3
# Seconds of silence after which process 0 sends a keep-alive: far below any collective timeout.
KEEP_ALIVE_S = 60.0


class StepBroadcast:
    def __init__(self, mesh: Mesh, *, keep_alive_s: float = KEEP_ALIVE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        devices = np.asarray(mesh.devices).reshape(-1)
        num_processes, num_local = jax.process_count(), jax.local_device_count()
        if devices.size != num_processes * num_local:
            raise ValueError(f"multi-process: the mesh has {devices.size} devices, but {num_processes} processes "
                             f"hold {num_processes * num_local}; dp x tp must use every process's devices")
        by_process = devices.reshape(num_processes, num_local)
        if any(d.process_index != p for p in range(num_processes) for d in by_process[p]):
            raise ValueError("multi-process: the mesh's devices are not grouped by process in jax.devices() order")
        self._rows = Mesh(by_process, ("processes", "local"))
        self._row_sharding = NamedSharding(self._rows, PartitionSpec("processes"))
        # The step program takes these: replicated over the runner's mesh (the same devices).
        self.replicated = NamedSharding(mesh, PartitionSpec())
        self._keep_row0 = jax.jit(lambda tree: jax.tree_util.tree_map(lambda x: x[0], tree),
                                  out_shardings=self.replicated)
        self.is_source = jax.process_index() == 0
        self._num_processes = num_processes
        self._previous: Optional[jax.Array] = None
        if keep_alive_s <= 0:
            raise ValueError(f"lockstep: keep_alive_s must be > 0 (got {keep_alive_s})")
        self._keep_alive_s = keep_alive_s
        self._clock = clock
        self._lock = threading.RLock()
        self._last_sent = clock()
        self._stopped = threading.Event()
        self._keep_alive_thread: Optional[threading.Thread] = None

    # ---- both sides --------------------------------------------------------------------------
    def input_specs(self, buffers: Sequence[np.ndarray]) -> tuple:
        """What the step program is lowered for: the buffers as replicated global arrays."""
        return tuple(jax.ShapeDtypeStruct(b.shape, b.dtype, sharding=self.replicated) for b in buffers)

    def launched(self, program_output: jax.Array) -> None:
        """A step program was launched; the next broadcast waits for `program_output` (one of its outputs)."""
        self._previous = program_output

    def _wait_previous(self) -> None:
        if self._previous is not None:
            self._previous.block_until_ready()
            self._previous = None

    def _broadcast(self, arrays: Sequence[np.ndarray]) -> tuple:
        self._wait_previous()
        rows = []
        for array in arrays:
            array = np.asarray(array)
            local = array if self.is_source else np.zeros_like(array)
            rows.append(jax.make_array_from_process_local_data(self._row_sharding, local[None],
                                                               (self._num_processes,) + array.shape))
        self._last_sent = self._clock()
        return tuple(self._keep_row0(tuple(rows)))

    # ---- process 0 ---------------------------------------------------------------------------
    def ordered(self):
        """Held around a step's `send_step` and the launch of its program (the runner's execute)."""
        return self._lock

    def send_step(self, key: tuple[int, int], buffers: Sequence[np.ndarray]) -> tuple:
        """Broadcast a step of bucket `key`; returns its buffers as the program's global inputs. Call it
        with `ordered()` held until the step's program is launched."""
        with self._lock:
            if self._keep_alive_thread is None and self._num_processes > 1:
                self._keep_alive_thread = threading.Thread(target=self._keep_alive_loop, daemon=True,
                                                           name="surge-lockstep-keep-alive")
                self._keep_alive_thread.start()
            self._broadcast((np.array([STEP, *key], np.int32),))
            return self._broadcast(buffers)

    def keep_alive(self) -> bool:
        """Send a keep-alive header if nothing was broadcast for keep_alive_s; whether one was sent."""
        with self._lock:
            if self._stopped.is_set() or self._clock() - self._last_sent < self._keep_alive_s:
                return False
            self._broadcast((np.array([KEEP_ALIVE, 0, 0], np.int32),))
            return True

    def _keep_alive_loop(self) -> None:
        while not self._stopped.wait(self._keep_alive_s / 4):
            try:
                self.keep_alive()
            except Exception:  # the runtime reports a lost process itself; this thread only ends
                logger.exception("lockstep: keep-alive broadcast failed")
                return

    def send_stop(self) -> None:
        with self._lock:
            self._stopped.set()
            self._broadcast((np.array([STOP, 0, 0], np.int32),))

    # ---- the followers -----------------------------------------------------------------------
    def receive_header(self) -> tuple[int, tuple[int, int]]:
        (header,) = self._broadcast((np.zeros(_HEADER_SIZE, np.int32),))
        command, num_tokens, num_seqs = (int(v) for v in np.asarray(header))
        return command, (num_tokens, num_seqs)

    def receive_buffers(self, shapes: Sequence[tuple[tuple, np.dtype]]) -> tuple:
        return self._broadcast([np.zeros(shape, dtype) for shape, dtype in shapes])


def follow(broadcast: StepBroadcast, run_step: Callable[[tuple[int, int], tuple], None],
           buffer_shapes: Callable[[tuple[int, int]], Sequence[tuple[tuple, np.dtype]]]) -> int:
    """A follower's loop: receive each step from process 0 and run it (`run_step(key, buffers)`) until a
    stop; returns the number of steps run. `buffer_shapes(key)`: the (shape, dtype) of each of the bucket's
    buffers."""
    num_steps = 0
    while True:
        command, key = broadcast.receive_header()
        if command == KEEP_ALIVE:
            continue
        if command == STOP:
            logger.info("process %d: stop received from process 0 after %d steps", jax.process_index(), num_steps)
            return num_steps
        if command != STEP:
            raise RuntimeError(f"lockstep: unknown command {command} from process 0")
        run_step(key, broadcast.receive_buffers(buffer_shapes(key)))
        num_steps += 1


__all__ = ["KEEP_ALIVE", "KEEP_ALIVE_S", "STEP", "STOP", "StepBroadcast", "follow"]
