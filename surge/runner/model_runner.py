"""The model runner: one jitted step per engine iteration.

In: a SchedulerOutput. Out: a PendingStep, whose `result()` gives the sampled
token id of every scheduled sequence, as numpy, and the log-probs that requests
asked for as `TokenLogprobs` (surge.runner.step_logprobs).
Per step: host arrays are built and padded to a compiled (tokens, seqs) bucket,
packed into one buffer per dtype (surge.runner.transfer), run through one
compiled program (model forward + on-device sampling) with the KV cache donated
and updated in place. `execute` returns as soon as the step is dispatched; the
step's sampled ids stay on the device too and feed the next step's tokens that
the host does not know yet (async scheduling), and their copy to the host
starts at once. Every bucket is compiled at start-up; `execute` never compiles.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from dataclasses import dataclass, field
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from surge.runner.batch import StepInput, build_attention_inputs, build_prompt_targets
from surge.runner.buckets import Buckets
from surge.runner import step_logprobs, transfer
from surge.parallel.lockstep import StepBroadcast
from surge.parallel.tensor_parallel import PlacedModel, place_model
from surge.runner.mesh import shard_state
from surge.sampling.logprobs import TokenLogprobs
from surge.sampling.prompt_logprobs import prompt_logprobs
from surge.sampling.sampler import SamplerOutput, sample
from surge.sampling.tensors import SamplingRow, build_sampling_tensors
from surge.scheduler.output import SchedulerOutput
from surge.structured.bitmask import build_token_bitmask

logger = logging.getLogger("surge")


@dataclass
class StepResult:
    # int32[num_scheduled]: the token sampled for each scheduled sequence (meaningful where it samples).
    token_ids: np.ndarray
    # Per request that asked for log-probs and sampled: one TokenLogprobs per sampled row (surge.runner.step_logprobs).
    logprobs: dict[str, list[TokenLogprobs]] = field(default_factory=dict)
    # Per request that asked for prompt log-probs and ran prompt tokens: (first prompt position covered,
    # one TokenLogprobs per covered prompt token).
    prompt_logprobs: dict[str, tuple[int, list[TokenLogprobs]]] = field(default_factory=dict)


class ModelRunner:
    def __init__(self, *, model, arch, backend, kv_caches, page_size: int, max_model_len: int, engine_config,
                 mesh: jax.sharding.Mesh, placed: Optional[PlacedModel] = None,
                 broadcast: Optional[StepBroadcast] = None) -> None:
        """`placed`: the model already prepared by the backend and placed on the mesh (split over `tp`,
        surge.parallel.tensor_parallel); default: placed here from `model`. `broadcast`: many processes
        (surge.parallel.lockstep): each step's inputs go to every process before the program runs, and
        `run_followed` runs what process 0 sent."""
        self.arch = arch
        self.backend = backend
        self.page_size = page_size
        self.max_model_len = max_model_len
        self.pages_per_seq = math.ceil(max_model_len / page_size)
        self.num_logprobs = engine_config.max_logprobs
        # Sampling rows per sequence: 1, or 1 + k with speculative decoding (its draft positions).
        spec = engine_config.speculative
        self.rows_per_seq = 1 + spec.num_speculative_tokens if spec.enabled else 1
        self.buckets = Buckets(engine_config)
        self.mesh = mesh
        # The model's own hook for its per-token position inputs (RoPE tables for these models), built on the
        # host each step: the runner does not know what they are.
        self._position_inputs = model.position_inputs_fn()
        if placed is None:
            placed = place_model(model, backend, mesh, place_state=lambda state: shard_state(state, mesh))
        self.placed = placed
        self.graphdef = placed.graphdef
        # The weights go to each call as a flat list: flattening the nnx State (a few hundred
        # Variables) on every step would cost the host more than the step's own inputs.
        self._weights, self._weights_treedef = placed.weights, placed.treedef
        self.kv_caches = kv_caches
        # The previous step's sampled ids, padded to the widest bucket, and each sampling request's row.
        self._max_seqs = max(s for _, s in self.buckets)
        self._replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        self._last_sampled = jax.device_put(np.zeros(self._max_seqs, np.int32), self._replicated)
        self._last_rows: dict[str, int] = {}
        self.num_device_fed_tokens = 0  # scheduled tokens whose ids came from the previous step on the device
        self._jitted = jax.jit(self._step, donate_argnums=(1,), static_argnums=(4,))
        self._compiled: dict[tuple[int, int], object] = {}
        self.broadcast = broadcast

    @property
    def state(self):
        """The model's nnx State (weights as the backend prepared them; under tp each leaf stacked per shard),
        rebuilt from the flat list."""
        return jax.tree_util.tree_unflatten(self._weights_treedef, self._weights)

    # ---- the device program ----------------------------------------------------------------
    def _step(self, weights, kv_caches, buffers, last_sampled, layout: transfer.Layout):
        batch: StepInput = transfer.unpack(layout, buffers)
        input_ids = jnp.where(batch.input_src >= 0, last_sampled[jnp.maximum(batch.input_src, 0)], batch.input_ids)
        hidden, kv_caches = self.placed.hidden_states(weights, kv_caches, input_ids, batch.md, batch.position_inputs,
                                                      self.backend)

        def logits(h):
            return self.placed.logits(weights, h, self.backend)

        prompt = prompt_logprobs(hidden, logits, batch.prompt_targets, batch.any_prompt_logprobs, self.num_logprobs)

        def sample_rows(indices, sampling):
            return sample(logits(hidden[indices]), sampling, self.num_logprobs)

        num_seqs, num_rows = batch.md.page_table.shape[0], batch.logits_indices.shape[0]
        if num_rows == num_seqs:
            sampled = sample_rows(batch.logits_indices, batch.sampling)
        else:  # draft rows cost logits and sampling only in steps that carry drafts
            def seq_rows_only():
                part = sample_rows(batch.logits_indices[:num_seqs],
                                   jax.tree_util.tree_map(lambda a: a[:num_seqs] if a.ndim else a, batch.sampling))
                return jax.tree_util.tree_map(
                    lambda a: jnp.zeros((num_rows,) + a.shape[1:], a.dtype).at[:num_seqs].set(a), part)

            sampled = jax.lax.cond(batch.any_drafts, lambda: sample_rows(batch.logits_indices, batch.sampling),
                                   seq_rows_only)
        padded = jnp.zeros(self._max_seqs, jnp.int32).at[:num_seqs].set(sampled.token_ids[:num_seqs])
        return kv_caches, (sampled, prompt), jax.lax.with_sharding_constraint(padded, self._replicated)

    def num_rows(self, num_tokens: int, num_seqs: int) -> int:
        """Sampling rows of a bucket: its sequences, plus room for draft positions when speculating."""
        return min(num_tokens, num_seqs * self.rows_per_seq) if self.rows_per_seq > 1 else num_seqs

    def _dummy_batch(self, num_tokens: int, num_seqs: int) -> StepInput:
        from surge.scheduler.output import SchedulerOutput as _Empty

        num_rows = self.num_rows(num_tokens, num_seqs)
        input_ids, input_src, md, logits_indices = build_attention_inputs(
            _Empty(), num_tokens, num_seqs, self.pages_per_seq, self.page_size, num_rows=num_rows)
        sampling = build_sampling_tensors([], num_rows, self.arch.vocab_size, self.max_model_len)
        return StepInput(input_ids, input_src, md, logits_indices, sampling, self._position_inputs(md.positions),
                         *build_prompt_targets(_Empty(), num_tokens), np.bool_(False))

    def compile(self, num_tokens: int, num_seqs: int):
        key = (num_tokens, num_seqs)
        if key not in self._compiled:
            layout, buffers = transfer.pack(self._dummy_batch(num_tokens, num_seqs))
            if self.broadcast is not None:  # the inputs every process passes: global, replicated
                buffers = self.broadcast.input_specs(buffers)
            program = self._jitted.lower(self._weights, self.kv_caches, buffers, self._last_sampled, layout).compile()
            self._compiled[key] = (layout, program)
        return self._compiled[key]

    def compile_all(self, progress: bool = True) -> None:
        pairs = list(self.buckets)
        for num_tokens, num_seqs in tqdm(pairs, desc="compiling step buckets", disable=not progress, unit="bucket"):
            self.compile(num_tokens, num_seqs)

    @property
    def num_compiled_buckets(self) -> int:
        return len(self._compiled)

    def _launch(self, program, buffers):
        # numpy buffers go straight in: the call copies them to the device in its C++ path,
        # where a separate jax.device_put costs the host several times as long.
        self.kv_caches, outputs, self._last_sampled = program(self._weights, self.kv_caches, buffers,
                                                              self._last_sampled)
        if self.broadcast is not None:
            self.broadcast.launched(self._last_sampled)
        return outputs

    def buffer_shapes(self, key: tuple[int, int]) -> list:
        """(shape, dtype) of each input buffer of bucket `key` (compiled), as a follower receives them."""
        return transfer.buffer_shapes(self.compile(*key)[0])

    def run_followed(self, key: tuple[int, int], buffers) -> None:
        """A follower process runs the step process 0 broadcast (surge.parallel.lockstep); its outputs stay
        unread here, its KV cache and sampled ids advance as process 0's do."""
        if key not in self._compiled:
            raise RuntimeError(f"process 0 sent a step of bucket {key}, which this process has not compiled")
        self._launch(self._compiled[key][1], buffers)

    # ---- one step ------------------------------------------------------------------------
    def execute(self, out: SchedulerOutput) -> "PendingStep":
        """Dispatch one step and return without waiting for it."""
        num_seqs = len(out.scheduled)
        num_tokens, num_seqs_padded = self.buckets.select(out.num_batched_tokens, num_seqs)
        num_rows = self.num_rows(num_tokens, num_seqs_padded)
        input_ids, input_src, md, logits_indices = build_attention_inputs(
            out, num_tokens, num_seqs_padded, self.pages_per_seq, self.page_size, self._last_rows, num_rows)
        num_drafts = out.num_draft_tokens
        rows = [_sampling_row(item) for item in out.scheduled]
        if num_drafts:
            rows += [row for item in out.scheduled for row in _draft_sampling_rows(item)]
        # A speculating request's rows are masked position by position (its own row is its last position).
        speculated = [(item.request.grammar, item.draft_token_ids, rows)
                      for item, rows in zip(out.scheduled, out.sample_rows())
                      if item.draft_token_ids and item.request.grammar is not None] if num_drafts else []
        bitmask = build_token_bitmask([item.request.grammar if item.samples and not item.draft_token_ids else None
                                       for item in out.scheduled], num_rows, self.arch.vocab_size, speculated)
        sampling = build_sampling_tensors(rows, num_rows, self.arch.vocab_size, self.max_model_len,
                                          token_bitmask=bitmask)
        self.num_device_fed_tokens += int((input_src >= 0).sum())
        prompt_targets, any_prompt = build_prompt_targets(out, num_tokens)
        compiled_layout, program = self.compile(num_tokens, num_seqs_padded)
        try:
            buffers = transfer.pack_as(compiled_layout, StepInput(
                input_ids, input_src, md, logits_indices, sampling, self._position_inputs(md.positions),
                prompt_targets, any_prompt, np.bool_(num_drafts > 0)))
        except ValueError as error:
            raise RuntimeError(f"step inputs for bucket ({num_tokens}, {num_seqs_padded}) do not match the "
                               f"compiled layout: {error}") from None
        with self.broadcast.ordered() if self.broadcast is not None else contextlib.nullcontext():
            if self.broadcast is not None:
                buffers = self.broadcast.send_step((num_tokens, num_seqs_padded), buffers)
            result, prompt = self._launch(program, buffers)
        self._last_rows = {item.request.request_id: i for i, item in enumerate(out.scheduled) if item.samples}
        wants_logprobs = any(item.request.sampling_params.logprobs is not None for item in out.scheduled)
        pending = PendingStep(out, num_seqs + num_drafts, result if wants_logprobs else result.token_ids,
                              prompt if any_prompt else None)
        pending.start_copy()
        return pending


@dataclass
class PendingStep:
    """A dispatched step: its device outputs, copied to the host by `result()` (which waits for the step)."""

    out: SchedulerOutput
    # Sampling rows in use: one per scheduled sequence plus one per draft token (SchedulerOutput.sample_rows).
    num_seqs: int
    # The whole SamplerOutput when some request asked for log-probs, else only its token ids.
    sampled: object
    prompt: Optional[SamplerOutput]

    def __post_init__(self) -> None:
        # The loop clock asks `is_ready` several times a step: flatten the outputs once, not per ask.
        self._leaves = jax.tree_util.tree_leaves((self.sampled, self.prompt))

    def start_copy(self) -> None:
        for leaf in self._leaves:
            leaf.copy_to_host_async()

    def is_ready(self) -> bool:
        """Whether the step has finished on the device (never blocks)."""
        for leaf in self._leaves:
            if not leaf.is_ready():
                return False
        return True

    def result(self) -> StepResult:
        prompt = {}
        if self.prompt is not None:
            prompt = step_logprobs.prompt_logprobs(self.out, jax.device_get(self.prompt))
        if isinstance(self.sampled, jax.Array):
            # The copy to the host started at dispatch (start_copy): reading it is all device_get would do.
            return StepResult(np.asarray(self.sampled)[:self.num_seqs], prompt_logprobs=prompt)
        host = jax.device_get(self.sampled)
        return StepResult(host.token_ids[:self.num_seqs], step_logprobs.sampled_logprobs(self.out, host), prompt)


def _draft_sampling_rows(item) -> list[SamplingRow]:
    """The rows of a speculating request's positions before its last: output indices one after another."""
    base = _sampling_row(item, 0).step
    return [dataclasses.replace(_sampling_row(item, 0), step=base + j) for j in range(len(item.draft_token_ids))]


def _sampling_row(item, offset: Optional[int] = None) -> SamplingRow:
    """The row of the request's last position; `offset` overrides how many drafts precede it."""
    request = item.request
    params = request.sampling_params
    uses_history = params.uses_penalties
    # The output index of the token sampled now: tokens on the host plus those still on the device,
    # less this step's own token (the scheduler counted it in flight already); after d drafts, d more.
    drafts = len(item.draft_token_ids) if offset is None else offset
    step = request.num_output_tokens + request.num_tokens_in_flight - int(item.samples) + drafts
    return SamplingRow(params=params, seed=request.seed, step=step,
                       eos_token_ids=request.eos_token_ids,
                       history=request.token_ids if uses_history else None,
                       num_prompt_tokens=request.num_prompt_tokens)
