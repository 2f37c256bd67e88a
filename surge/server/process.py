"""`surge-serve` as a child process: the one helper for tests, benchmarks and scripts.

In: Hydra overrides for the server, or (`ServerProcess.from_config`) a whole SurgeConfig, written as
the child's own primary config file so every value reaches it unchanged, whatever it holds. The port
is always 0, so the child picks a free one. Out: a `ServerProcess` that knows the child's port (read
from its `surge-serve listening on http://HOST:PORT` line), waits for `/health` to answer 200, and
stops it with SIGTERM (SIGKILL after a timeout), returning the exit code. The child's output goes to
a log file whose tail is quoted when something goes wrong.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

import httpx

from surge.config import SurgeConfig

_LISTENING = re.compile(r"surge-serve listening on (http://\S+)")


class ServerProcessError(RuntimeError):
    """The child server did not start (or exited); the message quotes its log."""


# Seconds `with ServerProcess(...)` waits for /health (from_config callers that compile many buckets pass more).
STARTUP_TIMEOUT_S = 300.0
CONFIG_NAME = "surge_server"


def config_yaml(cfg: SurgeConfig) -> str:
    """A primary config for surge-serve that reproduces `cfg` on a free loopback port."""
    import dataclasses

    from omegaconf import OmegaConf

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
    def __init__(self, overrides: Sequence[str] = (), *, host: str = "127.0.0.1", cwd: Optional[str] = None,
                 env: Optional[dict] = None, log_path: Optional[str] = None,
                 startup_timeout_s: float = STARTUP_TIMEOUT_S) -> None:
        self.overrides = [f"server.host={host}", "server.port=0", *overrides]
        self.cwd = cwd or tempfile.mkdtemp(prefix="surge-serve-")
        self.env = env
        self.log_path = log_path or os.path.join(self.cwd, "surge-serve.log")
        self.startup_timeout_s = startup_timeout_s
        self.url: Optional[str] = None
        self.process: Optional[subprocess.Popen] = None

    @classmethod
    def from_config(cls, cfg: SurgeConfig, **kwargs) -> "ServerProcess":
        """A child serving exactly `cfg` (model, engine, cache, backend, scheduler, server keys), on 127.0.0.1:0."""
        cwd = kwargs.pop("cwd", None) or tempfile.mkdtemp(prefix="surge-serve-")
        with open(os.path.join(cwd, f"{CONFIG_NAME}.yaml"), "w") as handle:
            handle.write(config_yaml(cfg))
        process = cls(cwd=cwd, **kwargs)
        process.overrides = ["--config-dir", cwd, "--config-name", CONFIG_NAME, *process.overrides]
        return process

    @property
    def base_url(self) -> str:
        """The OpenAI base URL (`.../v1`)."""
        return f"{self.url}/v1"

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def start(self) -> "ServerProcess":
        env = dict(os.environ if self.env is None else self.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([sys.executable, "-m", "surge.cli.serve", *self.overrides],
                                            stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd, env=env)
        return self

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def _fail(self, message: str) -> ServerProcessError:
        tail = "\n".join(self.log().splitlines()[-40:])
        return ServerProcessError(f"{message}\n--- surge-serve log ({self.log_path}) ---\n{tail}")

    def wait_listening(self, timeout: float = 120.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _LISTENING.search(self.log())
            if match:
                self.url = match.group(1)
                return self.url
            if self.process.poll() is not None:
                raise self._fail(f"surge-serve exited with code {self.process.returncode} before binding its port")
            time.sleep(0.1)
        raise self._fail(f"surge-serve did not bind a port within {timeout:.0f} s")

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until GET /health answers 200."""
        deadline = time.monotonic() + timeout
        if self.url is None:
            self.wait_listening(timeout)
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise self._fail(f"surge-serve exited with code {self.process.returncode} during start-up")
            try:
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise self._fail(f"surge-serve was not ready within {timeout:.0f} s")

    def stop(self, timeout: float = 30.0) -> Optional[int]:
        """SIGTERM, wait for the exit (SIGKILL after `timeout`); returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def __enter__(self) -> "ServerProcess":
        self.start()
        try:
            self.wait_ready(self.startup_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
