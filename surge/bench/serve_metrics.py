"""Latency figures of streamed requests, with vLLM's benchmark definitions.

In: one `StreamRecord` per request — when it was sent, when each streamed chunk
that carried choices arrived, when the stream ended, and the token counts the
server's usage chunk reported — plus the wall time of the whole run.
Out: a dict of TTFT, TPOT, ITL and E2E (mean/p50/p90/p99, milliseconds),
request and token throughput, and goodput against the SLOs below.

Definitions (those of vLLM's `benchmark_serving`):
- TTFT: first chunk's arrival - send time.
- TPOT: (E2E - TTFT) / (output tokens - 1), per request; requests of one token have none.
- ITL: every gap between two consecutive chunks of a request, all requests pooled.
- E2E: end of the stream - send time.
- goodput: requests per second that met every SLO (a request of one token has no TPOT and
  is judged on TTFT alone); failed requests never count.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from surge.bench.stats import percentiles

# Service-level objectives of the goodput figure (BenchConfig has no keys for them on purpose:
# they are the same for every run, so goodputs of different runs compare).
SLO_TTFT_S = 1.0  # time to first token at most 1 s
SLO_TPOT_S = 0.100  # at most 100 ms per output token after the first (10 tokens/s per stream)


@dataclasses.dataclass
class StreamRecord:
    """One streamed request as the client saw it; times are `time.perf_counter()` seconds."""

    sent: float
    chunk_times: list[float] = dataclasses.field(default_factory=list)
    ended: Optional[float] = None
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.ended is not None and bool(self.chunk_times)

    @property
    def ttft(self) -> float:
        return self.chunk_times[0] - self.sent

    @property
    def e2e(self) -> float:
        return self.ended - self.sent

    @property
    def tpot(self) -> Optional[float]:
        if self.output_tokens < 2:
            return None
        return (self.e2e - self.ttft) / (self.output_tokens - 1)

    @property
    def itl(self) -> list[float]:
        return [b - a for a, b in zip(self.chunk_times, self.chunk_times[1:])]


def meets_slo(record: StreamRecord, slo_ttft_s: float = SLO_TTFT_S, slo_tpot_s: float = SLO_TPOT_S) -> bool:
    if not record.ok or record.ttft > slo_ttft_s:
        return False
    tpot = record.tpot
    return tpot is None or tpot <= slo_tpot_s


def summarize_streams(records: Sequence[StreamRecord], duration_s: float, slo_ttft_s: float = SLO_TTFT_S,
                      slo_tpot_s: float = SLO_TPOT_S) -> dict:
    """Figures of a run whose requests took `duration_s` from the first send to the last end."""
    done = [r for r in records if r.ok]
    num_input = sum(r.prompt_tokens for r in done)
    num_output = sum(r.output_tokens for r in done)
    num_good = sum(meets_slo(r, slo_ttft_s, slo_tpot_s) for r in done)
    per_s = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: 0.0)
    return {
        "num_completed": len(done),
        "num_failed": len(records) - len(done),
        "duration_s": duration_s,
        "num_input_tokens": num_input,
        "num_output_tokens": num_output,
        "requests_per_s": per_s(len(done)),
        "output_tokens_per_s": per_s(num_output),
        "total_tokens_per_s": per_s(num_input + num_output),
        "ttft_ms": percentiles(r.ttft for r in done),
        "tpot_ms": percentiles(t for t in (r.tpot for r in done) if t is not None),
        "itl_ms": percentiles(gap for r in done for gap in r.itl),
        "e2e_ms": percentiles(r.e2e for r in done),
        "goodput_requests_per_s": per_s(num_good),
        "num_within_slo": num_good,
        "slo": {"ttft_ms": slo_ttft_s * 1000, "tpot_ms": slo_tpot_s * 1000},
    }
