"""The packed token bitmask of one step: one int32 row of allowed-token bits per sequence.

In: for each row of the step, the request's ``GrammarState`` (or None for an
unconstrained row or one that does not sample this step), the padded row
count and the model's vocabulary size. Out: an int32[S, ceil(V / 32)] numpy
array — bit ``t % 32`` of word ``t // 32`` says token ``t`` is allowed — that
rides in the step's ``SamplingTensors``, or None when no row is constrained
(the sampler then gets a shared all-ones table and skips the mask).
Unconstrained and padding rows are all ones (-1); constrained rows are filled
by llguidance in parallel, straight into the array.
"""

from __future__ import annotations

import threading
from typing import Optional, Sequence

import numpy as np

from surge.structured.state import GrammarState

_executor = None
_executor_lock = threading.Lock()


def bitmask_width(vocab_size: int) -> int:
    return (vocab_size + 31) // 32


def build_token_bitmask(states: Sequence[Optional[GrammarState]], num_rows_padded: int,
                        vocab_size: int) -> Optional[np.ndarray]:
    """The bitmask of a step whose row i belongs to states[i]; None when every state is None."""
    rows = [(state.matcher, i) for i, state in enumerate(states) if state is not None]
    if not rows:
        return None
    from llguidance.numpy import fill_next_token_bitmask_par

    table = np.full((num_rows_padded, bitmask_width(vocab_size)), -1, dtype=np.int32)
    fill_next_token_bitmask_par(_shared_executor(), rows, table)
    return table


def _shared_executor():
    global _executor
    with _executor_lock:
        if _executor is None:
            import llguidance

            _executor = llguidance.LLExecutor()
        return _executor


__all__ = ["bitmask_width", "build_token_bitmask"]
