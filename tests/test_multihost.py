"""Multi-host serving on one machine: two real `surge-serve` processes on loopback, 4 CPU devices each.

The two processes join through jax.distributed (engine.distributed.*, gloo collectives) and hold one
tensor-parallel replica over all 8 devices (tp = 8; the tiny Llama's 4 KV heads replicated twice).
Process 0 serves HTTP; process 1 runs its steps in lockstep. A streamed chat completion to process 0
must give the greedy text a single-process server gives (tp = 1); SIGTERM to process 0 stops both
with exit code 0; killing process 1 makes process 0 exit non-zero within 60 s with an error naming
process 1.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import time

import httpx
import pytest

from surge.server.process import ServerProcess

MODEL_SHAPE = dict(num_attention_heads=8, num_key_value_heads=4)
ENGINE = ["model.served_name=tiny", "backend=reference", "engine.max_model_len=64", "engine.max_num_seqs=2",
          "engine.max_num_batched_tokens=32", "engine.token_buckets=[32]", "engine.seq_buckets=[2]",
          "cache.page_size=16", "cache.num_pages=16", "engine.compilation_cache=false"]
PROMPT = [{"role": "user", "content": "Say something about the sea"}]
MAX_TOKENS = 12


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env(devices: int) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
        env.pop(name, None)
    return env


def _cluster(model_path: str, tmp_path, name: str) -> tuple[ServerProcess, ServerProcess]:
    """Process 0 (listening, not yet ready) and process 1 of a fresh two-process cluster."""
    address = f"127.0.0.1:{_free_port()}"

    def process(pid: int) -> ServerProcess:
        overrides = [f"model.path={model_path}", *ENGINE, "engine.tensor_parallel_size=8",
                     f"engine.distributed.coordinator_address={address}", "engine.distributed.num_processes=2",
                     f"engine.distributed.process_id={pid}", "engine.distributed.heartbeat_timeout_s=10"]
        cwd = tmp_path / f"{name}-{pid}"
        cwd.mkdir()
        return ServerProcess(overrides, cwd=str(cwd), env=_env(4)).start()

    leader, follower = process(0), process(1)
    return leader, follower


def _stream_chat(url: str) -> str:
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": MAX_TOKENS, "temperature": 0, "stream": True}
    text = []
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[len("data: "):])["choices"]
                if delta:
                    text.append(delta[0]["delta"].get("content") or "")
    return "".join(text)


def _wait_exit(process: ServerProcess, timeout: float) -> int:
    return process.process.wait(timeout=timeout)


@pytest.fixture(scope="module")
def model_path(tiny_checkpoint):
    return tiny_checkpoint("llama", **MODEL_SHAPE).path


def test_two_processes_stream_the_single_process_text_and_sigterm_stops_both(model_path, tmp_path):
    leader, follower = _cluster(model_path, tmp_path, "serve")
    single = ServerProcess([f"model.path={model_path}", *ENGINE], cwd=str(tmp_path), env=_env(1)).start()
    try:
        single.wait_ready(timeout=240)
        expected = _stream_chat(single.url)
        leader.wait_ready(timeout=240)
        assert "process 0 of 2, 4 local devices" in leader.log()
        assert "process 1 of 2, 4 local devices" in follower.log()
        assert "mesh dp x tp = 1 x 8" in leader.log()
        got = _stream_chat(leader.url)
        assert expected and got == expected
        started = time.monotonic()
        assert leader.stop(timeout=60) == 0
        assert _wait_exit(follower, 60) == 0, follower.log()[-3000:]
        assert time.monotonic() - started < 60
        assert "process 1: stop received from process 0" in follower.log()
    finally:
        for process in (single, leader, follower):
            process.stop()


def test_killing_process_1_makes_process_0_exit_naming_it(model_path, tmp_path):
    leader, follower = _cluster(model_path, tmp_path, "kill")
    try:
        leader.wait_ready(timeout=240)
        follower.process.send_signal(signal.SIGKILL)
        follower.process.wait(timeout=10)
        started = time.monotonic()
        code = _wait_exit(leader, 60)
        assert time.monotonic() - started < 60
        assert code != 0
        log = leader.log()
        assert "tasks are unhealthy (stopped sending heartbeats):\n1" in log, log[-3000:]
    finally:
        for process in (leader, follower):
            process.stop()
