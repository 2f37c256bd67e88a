"""Host-side batch building: SchedulerOutput -> padded numpy arrays for one step.

In: the scheduled requests (tokens to run, their pages) and the bucket (T, S, P).
Out: a StepInput pytree of numpy arrays (input ids, where a token comes from the
previous step's sampled ids on the device instead, AttentionMetadata, the rows
whose logits are needed, sampling tensors) that the runner moves to the device
in one transfer. Loops run over sequences (at most max_num_seqs), never tokens.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import jax
import numpy as np

from surge.kernels.metadata import AttentionMetadata
from surge.scheduler.output import SchedulerOutput


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class StepInput:
    # int32[T]: token ids of the ragged batch (padding 0).
    input_ids: jax.Array
    # int32[T]: -1, or the row of the previous step whose sampled id (still on the device) is this token.
    input_src: jax.Array
    md: AttentionMetadata
    # int32[R]: the token row whose logits each sampling row reads: rows [0, S) are each sequence's last
    # token; with speculative decoding rows after the last sequence are draft positions
    # (SchedulerOutput.sample_rows), R = S otherwise.
    logits_indices: jax.Array
    # SamplingTensors of surge.sampling (per-sequence parameters, seeds, penalties).
    sampling: object
    # The model's position inputs at md.positions, from its own hook (CausalLM.position_inputs_fn: one
    # (cos, sin) float32[T, rope_dim] pair per RoPE for the decoder families).
    position_inputs: tuple
    # int32[T]: per token row, the prompt token after it when its request wants prompt log-probs, else -1;
    # and bool[]: whether any row has one (build_prompt_targets).
    prompt_targets: jax.Array
    any_prompt_logprobs: jax.Array
    # bool[]: whether any sequence carries draft tokens (else only rows [0, S) are sampled).
    any_drafts: jax.Array


def build_attention_inputs(out: SchedulerOutput, num_tokens: int, num_seqs: int, pages_per_seq: int,
                           page_size: int, previous_rows: Optional[Mapping[str, int]] = None,
                           num_rows: Optional[int] = None
                           ) -> tuple[np.ndarray, np.ndarray, AttentionMetadata, np.ndarray]:
    """`previous_rows`: request id -> its row in the previous step, for tokens that step sampled and the
    host does not have yet (async scheduling); such a token is always the last one scheduled.
    `num_rows`: the sampling rows of the bucket (default num_seqs); draft positions take rows after
    the last sequence's."""
    input_ids = np.zeros(num_tokens, np.int32)
    input_src = np.full(num_tokens, -1, np.int32)
    positions = np.zeros(num_tokens, np.int32)
    slot_mapping = np.zeros(num_tokens, np.int32)
    token_seq_ids = np.full(num_tokens, num_seqs, np.int32)
    page_table = np.zeros((num_seqs, pages_per_seq), np.int32)
    cu_q_lens = np.zeros(num_seqs + 1, np.int32)
    kv_lens = np.zeros(num_seqs, np.int32)
    logits_indices = np.zeros(num_seqs if num_rows is None else num_rows, np.int32)

    start = 0
    next_row = len(out.scheduled)
    for i, item in enumerate(out.scheduled):
        n, first = item.num_new_tokens, item.num_computed_tokens
        drafts = item.draft_token_ids
        end = start + n
        pages = np.asarray(item.page_ids, np.int32)
        page_table[i, : len(pages)] = pages
        pos = np.arange(first, first + n, dtype=np.int32)
        positions[start:end] = pos
        slot_mapping[start:end] = pages[pos // page_size] * page_size + pos % page_size
        known = item.request.token_ids[first : first + n - len(drafts)]
        input_ids[start : start + len(known)] = known
        if drafts:
            if len(known) != n - len(drafts):
                raise RuntimeError(f"request {item.request.request_id}: draft tokens scheduled while its own "
                                   f"tokens are not all on the host")
            input_ids[end - len(drafts) : end] = drafts
            logits_indices[next_row : next_row + len(drafts)] = np.arange(end - 1 - len(drafts), end - 1)
            next_row += len(drafts)
        elif len(known) < n:
            request_id = item.request.request_id
            if n - len(known) != 1 or previous_rows is None or request_id not in previous_rows:
                raise RuntimeError(f"request {request_id}: {n - len(known)} of its scheduled tokens are not on "
                                   f"the host and the previous step did not sample them")
            input_src[end - 1] = previous_rows[request_id]
        token_seq_ids[start:end] = i
        kv_lens[i] = first + n
        logits_indices[i] = end - 1
        start = end
        cu_q_lens[i + 1] = end
    cu_q_lens[len(out.scheduled) + 1 :] = start

    md = AttentionMetadata(
        positions=positions, slot_mapping=slot_mapping, token_seq_ids=token_seq_ids, page_table=page_table,
        cu_q_lens=cu_q_lens, kv_lens=kv_lens, num_seqs=np.asarray(len(out.scheduled), np.int32))
    return input_ids, input_src, md, logits_indices


def build_prompt_targets(out: SchedulerOutput, num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """Targets of prompt log-probs: row of position p -> prompt token p + 1, for requests that ask for them.

    Chunked prefill spreads a prompt over several steps; each step covers the positions it computes.
    """
    targets = np.full(num_tokens, -1, np.int32)
    start = 0
    for item in out.scheduled:
        request, first, n = item.request, item.num_computed_tokens, item.num_new_tokens
        if request.sampling_params.prompt_logprobs is not None:
            end = min(first + n, request.num_prompt_tokens - 1)
            if end > first:
                targets[start:start + end - first] = request.prompt_token_ids[first + 1:end + 1]
        start += n
    return targets, np.bool_(bool((targets >= 0).any()))
