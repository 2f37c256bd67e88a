"""The packed token bitmask of one step: one int32 row of allowed-token bits per sequence.

In: for each row of the step, the request's ``GrammarState`` (or None for an
unconstrained row or one that does not sample this step), the padded row
count and the model's vocabulary size. Out: an int32[S, ceil(V / 32)] numpy
array — bit ``t % 32`` of word ``t // 32`` says token ``t`` is allowed — that
rides in the step's ``SamplingTensors``, or None when no row is constrained
(the sampler then gets a shared all-ones table and skips the mask).
Unconstrained and padding rows are all ones (-1); constrained rows are filled
by llguidance in parallel, straight into the array.

A speculating request (``speculated``: its state, its draft ids and its rows in
position order, as ``SchedulerOutput.sample_rows`` gives them) has a row per
verified position: row j is the mask after drafts[:j], filled by consuming the
drafts one by one and rolling the matcher back after.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence, Tuple

import numpy as np

from surge.structured.state import GrammarState

_executor = None
_executor_lock = threading.Lock()


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def build_token_bitmask(states: Sequence[Optional[GrammarState]], num_rows_padded: int, vocab_size: int,
                        speculated: Sequence[Tuple[GrammarState, Sequence[int], Sequence[int]]] = ()
                        ) -> Optional[np.ndarray]:
    """The bitmask of a step whose row i belongs to states[i] and whose speculating requests' rows are in
    `speculated`; None when nothing is constrained."""
    rows = [(state.matcher, i) for i, state in enumerate(states) if state is not None]
    if not rows and not speculated:
        return None
    from llguidance.numpy import fill_next_token_bitmask, fill_next_token_bitmask_par

    table = np.full((num_rows_padded, bitmask_width(vocab_size)), -1, dtype=np.int32)
    if rows:
        fill_next_token_bitmask_par(_shared_executor(), rows, table)
    for state, drafts, positions in speculated:
        if len(positions) != len(drafts) + 1:
            raise ValueError(f"{len(positions)} rows for {len(drafts)} drafts (expected one more)")
        matcher = state.matcher
        consumed = 0
        for j, row in enumerate(positions):
            fill_next_token_bitmask(matcher, table, row)
            if j < len(drafts):
                if not matcher.consume_token(drafts[j]):
                    matcher.rollback(consumed)
                    raise ValueError(f"draft token {drafts[j]} at position {j} breaks the grammar "
                                     f"({matcher.get_error()}); drafts must come from legal_drafts")
                consumed += 1
        matcher.rollback(consumed)
    return table


def _shared_executor():
    global _executor
    with _executor_lock:
        if _executor is None:
            import llguidance

            _executor = llguidance.LLExecutor()
        return _executor


__all__ = ["bitmask_width", "build_token_bitmask"]
