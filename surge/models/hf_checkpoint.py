"""Read a Hugging Face checkpoint directory: config.json and its safetensors shards.

In: a directory holding ``config.json`` and either ``model.safetensors``, several
``*.safetensors`` files, or shards listed in ``model.safetensors.index.json``.
Out: the config dict and a ``SafetensorsCheckpoint`` that hands out each tensor,
by its Hugging Face name, as a read-only numpy view of the memory-mapped file.

The safetensors layout (an 8-byte little-endian header length, a JSON header of
name -> dtype, shape, byte range, then the raw data) is read directly so that
bfloat16 tensors come out as ml_dtypes' bfloat16 without a framework round trip.
"""

from __future__ import annotations

import glob
import json
import os
import struct
from typing import Dict, List

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
INDEX_FILE = "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint file is missing, malformed or does not fit the model."""


def read_hf_config(directory: str) -> dict:
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(f"{directory}: not a Hugging Face model directory (no config.json)")
    try:
        with open(path) as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: not valid JSON ({exc})") from None


class SafetensorsCheckpoint:
    """Tensors of one HF directory, by name; each file is memory-mapped once."""

    def __init__(self, directory: str):
        self.directory = directory
        self._file_of: Dict[str, str] = {}
        self._entries: Dict[str, dict] = {}
        self._buffers: Dict[str, np.memmap] = {}
        for path in self._shard_paths():
            for name, entry in _read_header(path).items():
                self._file_of[name] = path
                self._entries[name] = entry

    def _shard_paths(self) -> List[str]:
        index_path = os.path.join(self.directory, INDEX_FILE)
        if os.path.isfile(index_path):
            with open(index_path) as handle:
                weight_map = json.load(handle).get("weight_map", {})
            shards = sorted(set(weight_map.values()))
            for shard in shards:
                if not os.path.isfile(os.path.join(self.directory, shard)):
                    raise CheckpointError(f"{index_path} names shard {shard!r}, which is not in {self.directory}")
            return [os.path.join(self.directory, shard) for shard in shards]
        paths = sorted(glob.glob(os.path.join(self.directory, "*.safetensors")))
        if not paths:
            raise CheckpointError(f"{self.directory}: no *.safetensors weights (and no {INDEX_FILE})")
        return paths

    def names(self) -> List[str]:
        return list(self._file_of)

    def location(self, name: str) -> str:
        return self._file_of.get(name, self.directory)

    def shape(self, name: str) -> tuple:
        return tuple(self._entries[name]["shape"])

    def get(self, name: str) -> np.ndarray:
        path, entry = self._file_of[name], self._entries[name]
        if entry["dtype"] not in _DTYPES:
            raise CheckpointError(f"{path}: tensor {name!r} has dtype {entry['dtype']}, which surge cannot read")
        if path not in self._buffers:
            self._buffers[path] = np.memmap(path, dtype=np.uint8, mode="r")
        start, end = entry["offsets"]
        return self._buffers[path][start:end].view(_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def _read_header(path: str) -> Dict[str, dict]:
    size = os.path.getsize(path)
    with open(path, "rb") as handle:
        raw = handle.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{path}: too short to be a safetensors file")
        (header_len,) = struct.unpack("<Q", raw)
        if header_len > size - 8:
            raise CheckpointError(f"{path}: corrupt safetensors header (length {header_len} > file size {size})")
        try:
            header = json.loads(handle.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{path}: corrupt safetensors header ({exc})") from None
    data_start = 8 + header_len
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        if data_start + end > size:
            raise CheckpointError(f"{path}: tensor {name!r} runs past the end of the file (truncated download?)")
        entries[name] = {"dtype": info["dtype"], "shape": list(info["shape"]),
                         "offsets": (data_start + begin, data_start + end)}
    return entries
