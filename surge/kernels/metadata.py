"""The attention metadata every backend reads: one pytree, one meaning.

In: built on the host by the ModelRunner from a SchedulerOutput, padded to a
(num_tokens, num_seqs, num_pages_per_seq) bucket, and moved to the device once.
Out: read by the model (positions for RoPE) and by the kernel backend's attention
(where to write the new K/V, which pages to read for each query token).

The batch is ragged: the new tokens of several sequences are concatenated, the
tokens of sequence ``s`` occupying ``[cu_q_lens[s], cu_q_lens[s+1])``. A decode
contributes one token, a prefill chunk many; they share one kernel call.

Padding rules (every backend relies on them):
- padding tokens (index >= cu_q_lens[num_seqs]) have position 0, write their K/V
  to slot 0 (inside the reserved null page 0, a write sink that no valid read
  ever touches) and belong to no sequence (``token_seq_ids == num_seqs_bucket``);
  their attention output is unspecified and discarded;
- padding sequences have q_len 0 and kv_len 0;
- unused page-table entries hold 0 (the null page).
"""

from __future__ import annotations

import dataclasses

import jax


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AttentionMetadata:
    # int32[T]: position of each token within its sequence.
    positions: jax.Array
    # int32[T]: flat cache slot (page_id * page_size + offset) receiving the token's K/V.
    slot_mapping: jax.Array
    # int32[T]: sequence index of each token; padding tokens hold S (one past the last).
    token_seq_ids: jax.Array
    # int32[S, P]: page ids of each sequence, in order; unused entries 0.
    page_table: jax.Array
    # int32[S + 1]: query offsets of each sequence in the ragged token axis.
    cu_q_lens: jax.Array
    # int32[S]: tokens of each sequence in the cache once this step's K/V are written.
    kv_lens: jax.Array
    # int32[]: sequences that are real (the rest are padding).
    num_seqs: jax.Array

    @property
    def num_tokens(self) -> int:
        return self.positions.shape[0]

    @property
    def max_num_seqs(self) -> int:
        return self.page_table.shape[0]

    @property
    def pages_per_seq(self) -> int:
        return self.page_table.shape[1]
