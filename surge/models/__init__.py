"""Models: the Llama-family decoder, its architecture config, loaders and the catalogue."""

from surge.models.arch import ModelArchConfig
from surge.models.catalogue import resolve_model
from surge.models.decoder import CausalLM, kv_cache_spec, num_params
from surge.models.loader import LoadedModel, load_model

__all__ = ["CausalLM", "LoadedModel", "ModelArchConfig", "kv_cache_spec", "load_model", "num_params",
           "resolve_model"]
