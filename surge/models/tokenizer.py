"""Tokenizers for the models surge loads.

In: a Hugging Face directory with tokenizer files, or a ``.gguf`` file whose
vocabulary, merges and chat template are embedded. Out: a transformers fast
tokenizer.

A byte-level BPE vocabulary is built directly with the `tokenizers` library
(surge/models/gguf_tokenizer.py); other kinds go through transformers' GGUF
integration. Either takes seconds, so the converted
tokenizer is saved once (``save_pretrained``) next to the GGUF as
``<file>.tokenizer/`` — or under the surge cache when that directory is not
writable — stamped with the GGUF's size and modification time, and reused while
the stamp matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile

from surge.models.gguf_tokenizer import UnsupportedGGUFTokenizer, load_gguf_tokenizer

logger = logging.getLogger("surge")

_STAMP = "surge_gguf_source.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def has_tokenizer_files(directory: str) -> bool:
    return any(os.path.isfile(os.path.join(directory, name)) for name in _TOKENIZER_FILES)


def load_tokenizer(source: str):
    """The tokenizer of an HF directory (or tokenizer directory) or of a .gguf file."""
    if source.endswith(".gguf"):
        return _gguf_tokenizer(source)
    if not os.path.isdir(source) or not has_tokenizer_files(source):
        raise FileNotFoundError(f"{source}: no tokenizer files ({', '.join(_TOKENIZER_FILES)}); point "
                                "model.tokenizer at a directory that has them")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source)


def _gguf_tokenizer(path: str):
    from transformers import AutoTokenizer

    stamp = _stamp(path)
    for cached in _cache_candidates(path):
        if _read_stamp(cached) == stamp:
            return AutoTokenizer.from_pretrained(cached)
    logger.info("converting the tokenizer embedded in %s (once; cached afterwards)", path)
    try:
        tokenizer = load_gguf_tokenizer(path)
    except UnsupportedGGUFTokenizer:
        # Other vocabulary kinds go through transformers' GGUF integration (which needs PyTorch).
        try:
            tokenizer = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                                      gguf_file=os.path.basename(path))
        except Exception as exc:  # transformers raises assorted types for a GGUF without a usable vocabulary
            raise ValueError(f"{path}: cannot build a tokenizer from the GGUF's embedded vocabulary ({exc}); "
                             "point model.tokenizer at a Hugging Face tokenizer directory") from exc
    for cached in _cache_candidates(path):
        if _save(tokenizer, cached, stamp):
            break
    return tokenizer


def _cache_candidates(path: str) -> list[str]:
    from surge.paths import cache_dir

    absolute = os.path.abspath(path)
    digest = hashlib.sha1(absolute.encode()).hexdigest()[:12]
    fallback = os.path.join(cache_dir(), "tokenizers", f"{os.path.basename(path)}-{digest}")
    return [absolute + ".tokenizer", fallback]


def _stamp(path: str) -> dict:
    info = os.stat(path)
    return {"gguf": os.path.abspath(path), "size": info.st_size, "mtime_ns": info.st_mtime_ns}


def _read_stamp(directory: str):
    try:
        with open(os.path.join(directory, _STAMP)) as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError):
        return None


def _save(tokenizer, target: str, stamp: dict) -> bool:
    """Write atomically (temporary directory, then rename); False if the location is not writable."""
    parent = os.path.dirname(target)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tokenizer-", dir=parent)
    except OSError:
        return False
    try:
        tokenizer.save_pretrained(tmp)
        with open(os.path.join(tmp, _STAMP), "w") as handle:
            json.dump(stamp, handle)
        if os.path.isdir(target):
            shutil.rmtree(target, ignore_errors=True)
        os.rename(tmp, target)
        return True
    except OSError as exc:
        logger.warning("could not cache the converted tokenizer at %s: %s", target, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return os.path.isdir(target) and _read_stamp(target) == stamp  # another process won the race
