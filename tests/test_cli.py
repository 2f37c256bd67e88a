"""The command-line apps as a user meets them: `--help` says what each does, and a bad override of any
kind ends in one line naming the key, exit code 2, no traceback. Each case runs the console script
(or `python -m surge.cli.<app>` where the scripts are not installed) in a subprocess; none loads a model.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

APPS = {"serve": "surge-serve", "generate": "surge-generate", "bench": "surge-bench"}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """run(app, *args): the app in a subprocess, in a scratch working directory (surge-bench makes an output
    folder there), without HYDRA_FULL_ERROR."""
    cwd = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}

    def run(app: str, *args: str) -> subprocess.CompletedProcess:
        script = Path(sys.executable).parent / APPS[app]
        command = [str(script)] if script.exists() else [sys.executable, "-m", f"surge.cli.{app}"]
        return subprocess.run(command + list(args), capture_output=True, text=True, timeout=120, env=env, cwd=cwd)

    return run


@pytest.mark.parametrize("app,says,keys,example", [
    ("serve", "an OpenAI-compatible HTTP server",
     ["server.port=8000", "server.require_api_key=false", "server.max_request_bytes=8388608",
      "server.max_prompt_tokens=0", "server.default_max_tokens=1024", "server.max_queue=1024",
      "server.metrics_require_api_key=true", "engine.max_num_seqs=32", "cache.cpu_memory_gb=4.0",
      "/health stays open"],
     "surge-serve server.port=9000 server.require_api_key=true 'server.api_keys=[k1,k2]'"),
    ("generate", "complete one prompt",
     ['prompt="The capital of France is"', "sampling.max_tokens=64", "sampling.temperature=1.0",
      "sampling.seed=null", "chat=false"],
     'surge-generate prompt="The capital of France is" sampling.max_tokens=32 sampling=greedy'),
    ("bench", "measure surge",
     ["bench.mode=offline", "bench.num_prompts=32", "follows engine.max_num_seqs",
      "engine.max_num_seqs=1,8,32,128 model.dtype=float32,bfloat16", 'bench.url=""'],
     "surge-bench -m backend=reference,cpu engine.max_num_seqs=8,32"),
])
def test_help_says_what_the_app_does(cli, app, says, keys, example):
    proc = cli(app, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert text.startswith(f"{APPS[app]}: ") and says in text.splitlines()[0]
    assert "powered by Hydra" not in text and "Powered by Hydra" not in text
    for key in keys:
        assert key in text, f"{key!r} missing from {APPS[app]} --help"
    assert example in text
    assert "backend: auto, cpu, pallas, reference, triton" in text  # the groups and their options


def test_help_shows_the_values_the_overrides_give(cli):
    proc = cli("serve", "engine.max_num_seqs=8", "server.port=9001", "--help")
    assert proc.returncode == 0, proc.stderr
    assert "engine.max_num_seqs=8 " in proc.stdout and "server.port=9001 " in proc.stdout


@pytest.mark.parametrize("app,override,message", [
    # a typo: the key and the real one, never Hydra's advice to append it with '+'
    ("generate", "cache.page_sise=16", "unknown config key 'cache.page_sise'; did you mean 'cache.page_size'?"),
    # '+' on a misspelt key used to end in a FrozenInstanceError traceback
    ("serve", "+engine.max_num_seq=8", "unknown config key 'engine.max_num_seq'; did you mean 'engine.max_num_seqs'?"),
    ("bench", "+foo=1", "unknown config key 'foo'; the top-level keys are model, engine,"),
    # '+' on a key that exists
    ("serve", "+engine.max_num_seqs=8", "'engine.max_num_seqs' already exists, so it cannot be added with '+'"),
    # wrong types
    ("generate", "engine.max_num_seqs=abc", "invalid value for 'engine.max_num_seqs': Value 'abc' of type 'str'"),
    ("serve", "server.port=[1,2]", "invalid value for 'server.port'"),
    # a value out of range (the schema's own checks)
    ("serve", "server.max_request_bytes=0", "invalid config value for 'server.max_request_bytes'"),
    # a group option that does not exist
    ("generate", "backend=nope", "config group 'backend' has no option 'nope'; options: auto, cpu, pallas"),
    # not an override at all, and deleting a key
    ("generate", "engine.max_num_seqs", "cannot parse the override"),
    ("generate", "~engine.max_num_seqs", "'engine.max_num_seqs' cannot be deleted with '~'"),
    # a section the app does not read is refused, not silently ignored
    ("serve", "sampling.temperature=0", "surge-serve does not read 'sampling.temperature' (it reads backend, cache,"),
    ("generate", "server.port=9000", "surge-generate does not read 'server.port'"),
    ("serve", "prompt=hi", "surge-serve does not read 'prompt'"),
    ("bench", "sampling=greedy", "surge-bench does not read 'sampling'"),
    # a free-form dict's new key does need '+'
    ("generate", "sampling.structured_outputs.choice=[yes]",
     "add it with '+sampling.structured_outputs.choice=VALUE'"),
])
def test_bad_override_is_one_line(cli, app, override, message):
    proc = cli(app, override)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"{APPS[app]}: ") and message in lines[0], lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout and "HYDRA_FULL_ERROR" not in proc.stderr


def test_a_model_that_does_not_exist_is_one_line(cli, tmp_path):
    missing = tmp_path / "no-such-model.gguf"
    proc = cli("generate", f"model.path={missing}", "engine.compile_at_startup=false")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines[-1] == (f"surge-generate: model '{missing}': no such path; give a catalogue name "
                         "(smollm2-135m-instruct), a Hugging Face directory (config.json + *.safetensors + "
                         "tokenizer) or a .gguf file")
    assert "Traceback" not in proc.stderr


def test_bad_override_in_a_sweep_is_one_line(cli, tmp_path):
    proc = cli("bench", "-m", "cache.page_sise=16,32", f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "surge-bench: unknown config key 'cache.page_sise'; did you mean 'cache.page_size'? "
        "(`surge-bench --help` lists the main keys, `surge-bench --cfg job` all of them)")
    assert "Traceback" not in proc.stderr
