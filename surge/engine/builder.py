"""Start-up: from a SurgeConfig to the live parts of an engine.

In: a validated SurgeConfig. Out: EngineParts — the loaded model and tokenizer,
the resolved kernel backend, the KV cache (sized and logged), and per data-parallel
replica (surge.parallel.data_parallel; one unless engine.data_parallel_size > 1) a
block manager, scheduler and model runner (all buckets compiled) on its own row of
the device mesh; and the output processor. Start-up fails early, with the knob to
turn, when the mesh needs more devices than are visible or max_model_len cannot fit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from surge.cache.block_manager import BlockManager
from surge.cache.kv_cache import KVCachePlan, allocate_kv_cache, plan_kv_cache
from surge.config import SurgeConfig
from surge.engine.loop_clock import LoopClock
from surge.engine.output_processor import OutputProcessor
from surge.kernels import quantized
from surge.kernels.registry import get_backend
from surge.models.catalogue import resolve_model
from surge.models.loader import load_model
from surge.models.decoder import num_params
from surge.parallel import distributed
from surge.parallel.data_parallel import Replica, replica_meshes
from surge.parallel.lockstep import StepBroadcast
from surge.parallel.tensor_parallel import describe_placement, place_model
from surge.runner import compile_counter
from surge.runner.buckets import Buckets
from surge.runner.compilation_cache import enable_compilation_cache
from surge.runner.mesh import make_mesh, shard_state
from surge.runner.model_runner import ModelRunner
from surge.scheduler.scheduler import Scheduler
from surge.spec_decode import Speculator
from surge.spec_decode.draft_model import build_draft_proposer
from surge.spec_decode.step_cost import StepCostModel

logger = logging.getLogger("surge")


@dataclass
class EngineParts:
    tokenizer: object
    arch: object
    max_model_len: int
    kv_plan: KVCachePlan
    backend_name: str
    # What model.dtype resolved to: "float32", "bfloat16" or "quantized" (surge.models.loader).
    dtype: str
    eos_token_ids: tuple[int, ...]
    replicas: list[Replica]  # one per data-parallel replica, in mesh-row order
    output_processor: OutputProcessor

    # Replica 0's parts (the only ones unless engine.data_parallel_size > 1).
    @property
    def block_manager(self) -> BlockManager:
        return self.replicas[0].block_manager

    @property
    def scheduler(self) -> Scheduler:
        return self.replicas[0].scheduler

    @property
    def runner(self) -> ModelRunner:
        return self.replicas[0].runner


def build_engine_parts(cfg: SurgeConfig, progress: bool = True, tokenizer: Any = None) -> EngineParts:
    """Every part of an engine for `cfg`. `tokenizer`: a tokenizer object to use instead of loading one
    (model.tokenizer or the model's own); the one tokenizer is shared by the input side, the output side
    and the grammar compiler."""
    _configure_logging(cfg.engine.log_level)
    cluster = distributed.join(cfg.engine.distributed)  # before any device is used
    if cluster.is_multi_process:
        logger.info(distributed.describe(cluster))
        _check_multi_process(cfg)
    compile_counter.install()
    if cfg.engine.compilation_cache:
        enable_compilation_cache()
    started = time.perf_counter()
    mesh = make_mesh(cfg.engine)  # before any weight loads: a mesh that needs absent devices fails at once
    # Before the weights: model.dtype=auto keeps a GGUF's quantization only where the backend multiplies it.
    backend = get_backend(cfg.backend.name, cfg.backend.options)
    source = cfg.model.path or resolve_model(cfg.model.name)
    loaded = load_model(source, dtype=cfg.model.dtype, quantize=cfg.model.quantize,
                        tokenizer=tokenizer if tokenizer is not None else cfg.model.tokenizer or None,
                        quantized_matmul=backend.multiplies_quantized)
    weight_forms = _weight_forms(loaded)
    arch = loaded.arch
    model_limit = arch.max_position_embeddings or cfg.engine.max_model_len
    max_model_len = cfg.engine.max_model_len or model_limit
    if max_model_len > model_limit:
        logger.warning("engine.max_model_len=%d exceeds the model's max_position_embeddings=%d",
                       max_model_len, model_limit)

    replica_mesh_rows = replica_meshes(mesh)
    replicas = [_build_replica(cfg, index, replica_mesh, loaded=loaded, arch=arch, backend=backend,
                               max_model_len=max_model_len, weight_forms=weight_forms, progress=progress,
                               model=(loaded.model if index == len(replica_mesh_rows) - 1
                                      else _model_copy(loaded.model)))
                for index, replica_mesh in enumerate(replica_mesh_rows)]
    plan = replicas[0].kv_plan
    eos = set(arch.eos_token_ids or ())
    if getattr(loaded.tokenizer, "eos_token_id", None) is not None:
        eos.add(int(loaded.tokenizer.eos_token_id))
    logger.info("engine ready in %.1f s", time.perf_counter() - started)
    return EngineParts(
        tokenizer=loaded.tokenizer, arch=arch, max_model_len=max_model_len, kv_plan=plan, backend_name=backend.name, dtype=loaded.dtype,
        eos_token_ids=tuple(sorted(eos)), replicas=replicas, output_processor=OutputProcessor(loaded.tokenizer))


def _model_copy(model):
    """A second module tree over the same (immutable) arrays: place_model's backend.prepare_model rewrites
    the module it is given in place (tp = 1 packs its weights), so every replica but the last places a
    copy and the last the loaded model itself (no array is copied here; each replica's prepared weights
    are its own)."""
    from flax import nnx

    return nnx.merge(*nnx.split(model))


def _weight_forms(loaded) -> str:
    """How the loaded weights are held, for the model log line: "float32", or e.g. "Q4_1 + Q8_0, rest float32"."""
    from flax import nnx

    kinds = quantized.quant_types(jax.tree_util.tree_leaves(nnx.state(loaded.model)))
    rest = jnp.dtype(loaded.model.dtype).name
    return f"{' + '.join(kinds)}, rest {rest}" if kinds else rest


def _build_replica(cfg: SurgeConfig, index: int, mesh, *, loaded, model, arch, backend, max_model_len: int,
                   weight_forms: str, progress: bool) -> Replica:
    """One replica on its (1, tp) mesh: its weights (placed by place_model), KV pool, block manager,
    scheduler, runner (compiled)."""
    where = f"replica {index}: " if cfg.engine.data_parallel_size > 1 else ""
    # Prepared by the backend (per shard under tp) and placed on the mesh; the KV pool is sized per device.
    placed = place_model(model, backend, mesh, place_state=lambda state: shard_state(state, mesh))
    weights_bytes = max(placed.weight_bytes_per_device().values())
    draft, held_bytes = None, weights_bytes
    if cfg.engine.speculative.method == "draft_model":
        # Loaded (weights and its own KV pool) before the target's pool is sized, which counts its bytes.
        draft = build_draft_proposer(cfg, target_arch=arch, target_tokenizer=loaded.tokenizer, backend=backend,
                                     mesh=mesh, max_model_len=max_model_len, dtype=cfg.model.dtype,
                                     place_weights=lambda state: shard_state(state, mesh))
        held_bytes += draft.num_bytes
    kv_dtype = jnp.dtype(cfg.cache.dtype if cfg.cache.dtype != "auto" else model.dtype)
    page_shape = backend.kv_cache_shape(1, cfg.cache.page_size, placed.cache_kv_heads // placed.tp, arch.head_dim)
    plan = plan_kv_cache(cfg.cache, num_layers=arch.num_layers, page_shape=page_shape, dtype=kv_dtype,
                         weights_bytes=held_bytes, max_model_len=max_model_len,
                         max_num_seqs=cfg.engine.max_num_seqs)
    if index == 0:
        # The bytes the placed weights' arrays hold on one device (quantized blocks at their own size).
        logger.info("model %s: %d layers, %.1f M parameters (%s, %.0f MiB held); kernel backend %s",
                    cfg.model.name, arch.num_layers, num_params(arch) / 1e6, weight_forms, weights_bytes / 2**20,
                    backend.name)
        logger.info(plan.describe(max_model_len))
    kv_caches = allocate_kv_cache(plan, num_layers=arch.num_layers, backend=backend,
                                  num_kv_heads=placed.cache_kv_heads, head_dim=arch.head_dim, dtype=kv_dtype,
                                  mesh=mesh, spec=placed.kv_spec)
    logger.info("%s%s", where, describe_placement(
        placed, kv_caches, data_parallel_size=cfg.engine.data_parallel_size, num_pages=plan.num_usable_pages))

    block_manager = BlockManager(plan.num_pages, plan.page_size, cfg.cache.enable_prefix_caching,
                                 prefix_cache_capacity=cfg.cache.prefix_cache_capacity)
    speculator = None
    if draft is not None and cfg.engine.compile_at_startup:
        compile_started = time.perf_counter()
        draft.compile_all()
        logger.info("%scompiled %d draft-model buckets in %.1f s", where, draft.num_compiled_buckets,
                    time.perf_counter() - compile_started)
    if cfg.engine.speculative.enabled:
        # The engine times each step into the cost model, by the token buckets the runner pads to.
        cost_model = (StepCostModel(sorted({t for t, _ in Buckets(cfg.engine)}))
                      if cfg.engine.speculative.cost_model == "measured" else None)
        speculator = Speculator(cfg.engine.speculative, draft=draft, cost_model=cost_model)
    # Pages behind every layer's reach are given back (models whose every layer is windowed or chunked).
    scheduler = Scheduler(cfg.scheduler, cfg.engine, block_manager, max_model_len, sliding_window=arch.kv_reach(),
                          speculator=speculator,
                          first_needed_key=arch.first_needed_key if arch.kv_reach() is not None else None)
    runner = ModelRunner(model=model, arch=arch, backend=backend, kv_caches=kv_caches,
                         page_size=plan.page_size, max_model_len=max_model_len, engine_config=cfg.engine, mesh=mesh,
                         placed=placed, broadcast=StepBroadcast(mesh) if jax.process_count() > 1 else None)
    if cfg.engine.compile_at_startup:
        compile_started = time.perf_counter()
        runner.compile_all(progress=progress)
        logger.info("%scompiled %d step buckets in %.1f s", where, runner.num_compiled_buckets,
                    time.perf_counter() - compile_started)
    return Replica(index=index, mesh=mesh, kv_plan=plan, block_manager=block_manager, scheduler=scheduler,
                   runner=runner, loop_clock=LoopClock())


def _check_multi_process(cfg: SurgeConfig) -> None:
    """What many processes run: one replica over every process's devices, stepped in lockstep by process 0."""
    engine = cfg.engine
    if engine.data_parallel_size != 1:
        raise ValueError(f"engine.data_parallel_size={engine.data_parallel_size} with "
                         f"{jax.process_count()} processes: multi-process serving runs one replica (dp = 1) "
                         "whose tensor_parallel_size spans every process's devices")
    if engine.speculative.method == "draft_model":
        raise ValueError("engine.speculative.method=draft_model does not run over many processes (its draft "
                         "runner is not stepped in lockstep); use ngram/suffix or one process")
    if engine.tensor_parallel_size != jax.device_count():
        raise ValueError(f"engine.tensor_parallel_size={engine.tensor_parallel_size}: with "
                         f"{jax.process_count()} processes it must be the {jax.device_count()} devices they hold "
                         "together")


def _configure_logging(level: str) -> None:
    root = logging.getLogger("surge")
    root.setLevel(level.upper())
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s surge %(levelname)s: %(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False
