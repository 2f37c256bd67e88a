"""Load a model for serving: weights, architecture, tokenizer, chat template.

In: a local Hugging Face directory (config.json + *.safetensors, sharded or
not, + tokenizer files) or a ``.gguf`` file, a dtype, a quantization applied at load ("none", or
"q8_0": a safetensors checkpoint's matrices become Q8_0 blocks, surge.models.quantize_on_load),
whether the kernel backend multiplies quantized weights (``KernelBackend.multiplies_quantized``),
and optionally a separate tokenizer source. The dtype (model.dtype):

- "auto": a GGUF file keeps its Q8_0 / Q4_0 / Q4_1 / Q4_K / Q5_K / Q6_K tensors quantized where the
  backend multiplies quantized weights (the cpu backend), else it is dequantized to the platform's
  float dtype (float32 on CPU, bfloat16 on accelerators), as a safetensors checkpoint always is;
- "float32" / "bfloat16": every tensor dequantized to that dtype;
- "quantized": a GGUF file's quantized tensors kept on any backend (one without quantized kernels
  dequantizes them at every use); not for safetensors (model.quantize=q8_0 is that).

Out: a ``LoadedModel`` with the CausalLM, its ModelArchConfig, its tokenizer and the dtype the
weights took ("float32", "bfloat16" or "quantized"; the other tensors of a quantized model are
float32). Catalogue names are resolved to paths by ``catalogue.resolve_model`` first.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import jax
import jax.numpy as jnp

from surge.models.arch import ModelArchConfig
from surge.models.catalogue import resolve_model
from surge.models.decoder import CausalLM
from surge.models.gguf_checkpoint import GGUFCheckpoint
from surge.models.hf_checkpoint import CheckpointError, SafetensorsCheckpoint, read_hf_config
from surge.models.quantize_on_load import QUANTIZE_TYPES, Q8_0Checkpoint
from surge.models.tokenizer import load_tokenizer
from surge.models.weights import build_model

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "quantized": jnp.float32}
DTYPES = ("auto", *_DTYPES)


def platform_dtype() -> str:
    """The float dtype "auto" means where weights are not kept quantized: float32 on CPU, bfloat16 on
    accelerators."""
    return "float32" if jax.default_backend() == "cpu" else "bfloat16"


def resolve_dtype(dtype: str, *, gguf: bool = False, quantized_matmul: bool = False) -> str:
    """"auto" -> "quantized" for a GGUF file on a backend that multiplies quantized weights, else
    ``platform_dtype()``; the other names pass through (checked)."""
    if dtype not in DTYPES:
        raise ValueError(f"model dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "quantized" if gguf and quantized_matmul else platform_dtype()
    return dtype


@dataclasses.dataclass
class LoadedModel:
    model: CausalLM
    arch: ModelArchConfig
    # transformers fast tokenizer.
    tokenizer: Any
    chat_template: Optional[str]
    # The resolved path the weights were read from.
    source: str
    # What the weights took: "float32", "bfloat16" or "quantized" (model.dtype with auto resolved).
    dtype: str = "float32"


def load_model(source: str, dtype: str = "float32", tokenizer: Any = None, quantize: str = "none",
               quantized_matmul: bool = False) -> LoadedModel:
    """Load a catalogue name, HF directory or .gguf file. `tokenizer` overrides the model's own: a path (HF
    directory, .gguf, catalogue name) or a tokenizer object with encode/decode, used as given. Exactly one
    tokenizer is loaded (none when an object is given), and it is the one the engine holds everywhere.
    `quantize` "q8_0" (model.quantize) turns a safetensors checkpoint's matrices into Q8_0 blocks at load;
    the other tensors take `dtype`. `quantized_matmul`: whether the backend that will run the model
    multiplies quantized weights (what "auto" keeps a GGUF's quantization for)."""
    given_path = tokenizer is None or isinstance(tokenizer, str)
    if not given_path and not (callable(getattr(tokenizer, "encode", None)) and
                               callable(getattr(tokenizer, "decode", None))):
        raise ValueError(f"tokenizer must be a path/name or a tokenizer object with encode/decode "
                         f"(got {type(tokenizer).__name__})")
    if dtype not in DTYPES:
        raise ValueError(f"model dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    if quantize not in QUANTIZE_TYPES:
        raise ValueError(f"model.quantize {quantize!r} is not one of {', '.join(QUANTIZE_TYPES)}")
    path = resolve_model(source)
    if os.path.isfile(path) and path.endswith(".gguf"):
        checkpoint = GGUFCheckpoint(path)
        arch = _arch(checkpoint.hf_config(), path)
    elif os.path.isdir(path):
        arch = _arch(read_hf_config(path), os.path.join(path, "config.json"))
        checkpoint = SafetensorsCheckpoint(path)
    else:
        raise CheckpointError(f"{path}: neither a Hugging Face model directory nor a .gguf file")
    dtype = resolve_dtype(dtype, gguf=isinstance(checkpoint, GGUFCheckpoint), quantized_matmul=quantized_matmul)
    if dtype == "quantized" and not isinstance(checkpoint, GGUFCheckpoint):
        raise ValueError(f"model dtype 'quantized' keeps a GGUF file's quantized tensors; {path} is a safetensors "
                         "checkpoint (use auto, float32 or bfloat16; model.quantize=q8_0 quantizes it at load)")
    if quantize == "q8_0":
        if isinstance(checkpoint, GGUFCheckpoint):
            raise ValueError(f"model.quantize=q8_0 quantizes a safetensors checkpoint at load; {path} is a GGUF "
                             "file (model.dtype=auto or quantized keeps its own quantized tensors)")
        if dtype == "quantized":
            raise ValueError("model.quantize=q8_0 sets the matrices' form; give model.dtype auto, float32 or bfloat16 "
                             "for the other tensors, not quantized")
        checkpoint = Q8_0Checkpoint(checkpoint)
    model = build_model(arch, checkpoint, _DTYPES[dtype], path,
                        keep_quantized=dtype == "quantized" or quantize != "none")
    tok = load_tokenizer(resolve_model(tokenizer) if tokenizer else path) if given_path else tokenizer
    template = getattr(tok, "chat_template", None)
    if template is None and isinstance(checkpoint, GGUFCheckpoint):
        template = checkpoint.chat_template()
    return LoadedModel(model=model, arch=arch, tokenizer=tok, chat_template=template, source=path, dtype=dtype)


def _arch(config: dict, where: str) -> ModelArchConfig:
    try:
        return ModelArchConfig.from_hf_config(config)
    except ValueError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
