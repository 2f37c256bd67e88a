"""Percentiles and per-request latency figures of a benchmark run.

In: finished RequestOutputs (with metrics times) or raw latency lists.
Out: dicts of p50/p90/p99 (and mean) in milliseconds.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np


def percentiles(values: Iterable[float], scale: float = 1000.0) -> dict:
    data = np.asarray(list(values), dtype=np.float64) * scale
    if data.size == 0:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    return {"mean": float(data.mean()), "p50": float(np.percentile(data, 50)),
            "p90": float(np.percentile(data, 90)), "p99": float(np.percentile(data, 99))}


def request_latencies(outputs) -> tuple[list[float], list[float], list[float]]:
    """(TTFT, TPOT, E2E) in seconds for each finished output that has the timestamps."""
    ttft, tpot, e2e = [], [], []
    for out in outputs:
        m = out.metrics
        if m is None or m.first_token_time is None or m.finished_time is None:
            continue
        ttft.append(m.first_token_time - m.arrival_time)
        e2e.append(m.finished_time - m.arrival_time)
        num = len(out.outputs[0].token_ids)
        if num > 1:
            tpot.append((m.finished_time - m.first_token_time) / (num - 1))
    return ttft, tpot, e2e
