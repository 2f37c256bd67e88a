"""A `surge-serve` subprocess for the serving benchmark.

In: the benchmark's SurgeConfig. Out: a running server on a free loopback port
with exactly that config (model, engine, cache, backend, scheduler, server
keys), its base URL once `GET /health` answers 200, and a clean stop (SIGTERM,
then SIGKILL if it does not exit) when the `with` block ends.

The config travels as a complete YAML file (its own primary config, composed on
the structured schema), not as command-line overrides, so every value reaches
the server unchanged whatever it holds. The server's port is 0 (the kernel
picks a free one) and is read from its `surge-serve listening on URL` line.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Optional

from omegaconf import OmegaConf

from surge.config import SurgeConfig

# Longest wait for the engine to load and compile every bucket (CPU start-up can take minutes).
STARTUP_TIMEOUT_S = 1800.0
# Seconds the server gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 30.0

_LISTENING = re.compile(r"surge-serve listening on (http://\S+)")


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message holds its last output lines."""


def server_yaml(cfg: SurgeConfig) -> str:
    """A primary config for surge-serve that reproduces `cfg` on a free loopback port."""
    cfg = dataclasses.replace(cfg, server=dataclasses.replace(cfg.server, host="127.0.0.1", port=0))
    body = OmegaConf.to_container(OmegaConf.structured(cfg))
    backend = body["backend"]
    body["backend"] = {"name": backend["name"], **backend["options"]}  # the YAML spelling: the backend's keys flat
    header = {
        "defaults": ["surge_schema", {"override hydra/job_logging": "none"},
                     {"override hydra/hydra_logging": "none"}, "_self_"],
        "hydra": {"output_subdir": None, "run": {"dir": "."}},
    }
    return OmegaConf.to_yaml(OmegaConf.create({**header, **body}))


class ServerProcess:
    """`with ServerProcess(cfg) as server:` runs surge-serve; `server.url` is its base URL."""

    def __init__(self, cfg: SurgeConfig, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.cfg = cfg
        self.startup_timeout_s = startup_timeout_s
        self.url: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None
        self._workdir: Optional[tempfile.TemporaryDirectory] = None
        self._tail: collections.deque[str] = collections.deque(maxlen=60)
        self._announced = threading.Event()

    def __enter__(self) -> "ServerProcess":
        self._workdir = tempfile.TemporaryDirectory(prefix="surge-bench-serve-")
        config_path = os.path.join(self._workdir.name, "bench_server.yaml")
        with open(config_path, "w") as handle:
            handle.write(server_yaml(self.cfg))
        command = [sys.executable, "-m", "surge.cli.serve", "--config-dir", self._workdir.name,
                   "--config-name", "bench_server"]
        self.process = subprocess.Popen(command, cwd=self._workdir.name, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True, bufsize=1)
        threading.Thread(target=self._read_output, daemon=True, name="surge-bench-server-output").start()
        try:
            self._wait_until_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _read_output(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            line = line.rstrip("\n")
            self._tail.append(line)
            match = _LISTENING.search(line)
            if match and self.url is None:
                self.url = match.group(1)
                self._announced.set()

    def _fail(self, problem: str) -> ServerStartError:
        tail = "\n".join(list(self._tail)[-25:])
        return ServerStartError(f"surge-serve {problem}; its last output:\n{tail}")

    def _wait_until_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout_s
        while not self._announced.wait(0.2):
            if self.process.poll() is not None:
                raise self._fail(f"exited with code {self.process.returncode} before binding its port")
            if time.monotonic() > deadline:
                raise self._fail(f"did not bind a port within {self.startup_timeout_s:.0f} s")
        with httpx.Client(timeout=5.0) as client:
            while True:
                if self.process.poll() is not None:
                    raise self._fail(f"exited with code {self.process.returncode} during start-up")
                try:
                    if client.get(self.url + "/health").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise self._fail(f"was not healthy within {self.startup_timeout_s:.0f} s")
                time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None
