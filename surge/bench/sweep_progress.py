"""Progress of a `surge-bench -m` sweep: which job runs, how many are done, how long the rest may take.

In: the sweep's overrides when it starts (`backend=reference,cpu engine.max_num_seqs=8,32`),
then each job's number, overrides and end. Out: one line per job start and end on
stderr, e.g. `[sweep 3/8] backend=cpu engine.max_num_seqs=8 ... done in 71 s, about
5 min left` (the estimate is the mean job time so far times the jobs left).
"""

from __future__ import annotations

import sys
import time
from typing import Optional, Sequence


def _sweeps(overrides: Sequence[str]) -> Optional[list]:
    """The parsed sweep overrides (`key=a,b`), None when Hydra's parser does not read them."""
    try:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        return [o for o in OverridesParser.create().parse_overrides(list(overrides)) if o.is_sweep_override()]
    except Exception:  # a sweeper plugin's own syntax: no total, still a progress line
        return None


def swept_keys(overrides: Sequence[str]) -> Optional[list[str]]:
    """The keys these overrides sweep over, in order."""
    sweeps = _sweeps(overrides)
    return None if sweeps is None else [o.key_or_group for o in sweeps]


def count_jobs(overrides: Sequence[str]) -> Optional[int]:
    """Jobs a basic sweep over these overrides runs (the product of each sweep's length), None if unknown."""
    sweeps = _sweeps(overrides)
    if sweeps is None:
        return None
    total = 1
    for override in sweeps:
        total *= len(list(override.sweep_string_iterator()))
    return total


class SweepProgress:
    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stderr
        self.total: Optional[int] = None
        self.durations: list[float] = []
        self._started: Optional[float] = None

    def start_sweep(self, sweep_overrides: Sequence[str]) -> None:
        self.total = count_jobs(sweep_overrides)
        if self.total:
            self._say(f"[sweep] {self.total} job(s): {' '.join(sweep_overrides)}")

    def start_job(self, num: int, overrides: Sequence[str]) -> None:
        self._started = time.perf_counter()
        self._say(f"{self._tag(num)} started: {' '.join(overrides)}")

    def end_job(self, num: int, ok: bool) -> None:
        if self._started is None:
            return
        elapsed = time.perf_counter() - self._started
        self.durations.append(elapsed)
        line = f"{self._tag(num)} {'done' if ok else 'FAILED'} in {_duration(elapsed)}"
        left = self.total - (num + 1) if self.total else 0
        if left > 0:
            mean = sum(self.durations) / len(self.durations)
            line += f", about {_duration(mean * left)} left ({left} job(s))"
        self._say(line)
        self._started = None

    def _tag(self, num: int) -> str:
        return f"[sweep {num + 1}/{self.total}]" if self.total else f"[sweep job {num}]"

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"
