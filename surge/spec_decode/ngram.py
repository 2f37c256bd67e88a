"""N-gram prompt lookup: drafts copied from the request's own earlier tokens.

In: a request's token ids (prompt then output), the most drafts wanted, the n-gram lengths to try.
Out: up to k token ids that followed an earlier occurrence of the longest matching suffix n-gram
(lengths tried from `max_n` down to `min_n`), or [] when none occurs. The occurrence is the latest
one followed by k tokens (recent context predicts best), else the earliest (the longest run; in a
repeating loop the latest is right behind the suffix and offers only a token or two). Cost: one numpy pass
over the sequence per n tried.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def propose_ngram(token_ids: Sequence[int], k: int, min_n: int, max_n: int) -> list[int]:
    if k <= 0:
        return []
    tokens = np.asarray(token_ids, dtype=np.int64)
    length = len(tokens)
    for n in range(min(max_n, length - 1), min_n - 1, -1):
        suffix = tokens[length - n:]
        # Windows starting at i <= length - 1 - n, so at least one token follows each and the suffix
        # itself (at length - n) is excluded.
        windows = np.lib.stride_tricks.sliding_window_view(tokens[:length - 1], n)
        hits = np.flatnonzero((windows == suffix).all(axis=1))
        if hits.size:
            full = hits[hits + n + k <= length]
            start = int(full[-1] if full.size else hits[0]) + n
            return tokens[start:start + k].tolist()
    return []


__all__ = ["propose_ngram"]
