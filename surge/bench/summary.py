"""Sweep summary: one table (and plot) for every job of a `surge-bench -m` sweep.

In: the job folders under the sweep dir (`hydra.sweep.dir`): each job's
`result.json`, or, for a job that failed before writing one, its
`.hydra/overrides.yaml`. Out: `summary.csv` (every figure, one row per job),
`summary.md` (the swept keys and the mode's headline figures; with two or more
swept keys also the main figure pivoted: one row per combination of the other keys,
one column per value of the first numeric one, e.g. dtype x concurrency) and `summary.png`
(`summary_plot.py`), written by the `SweepSummary` Hydra callback after every
job (so a long or failing sweep still leaves a summary of what ran) and once
more when the sweep ends. The callback also prints the sweep's progress.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from surge.bench.summary_plot import numeric_axis_key, plot_summary
from surge.bench.sweep_progress import SweepProgress, swept_keys

logger = logging.getLogger("surge")

# Metric plotted and listed first, per bench mode.
MAIN_METRIC = {"offline": "output_tokens_per_s", "serve": "output_tokens_per_s", "prefix": "output_tokens_per_s",
               "attention": "decode_gb_per_s"}
# Headline columns of summary.md after the swept keys, per mode (the CSV has every figure).
TABLE_COLUMNS = {
    "offline": ["output_tokens_per_s", "requests_per_s", "ttft_ms.p50", "tpot_ms.p50", "e2e_ms.p50",
                "num_preemptions", "elapsed_s", "host_ms_per_step", "device_idle_ms_per_step"],
    "serve": ["output_tokens_per_s", "requests_per_s", "goodput_requests_per_s", "ttft_ms.p50", "ttft_ms.p99",
              "tpot_ms.p50", "itl_ms.p50", "e2e_ms.p50", "num_failed"],
    "prefix": ["output_tokens_per_s", "prefix_cache_hit_rate", "cold_warm.cold_ttft_ms", "cold_warm.warm_ttft_ms",
               "cold_warm.cold_over_warm"],
    "attention": ["decode_gb_per_s", "best_decode_backend", "memory_bandwidth_gb_per_s.ceiling"],
}


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif not isinstance(value, list):
        out[prefix] = value


def _job_dirs(sweep_dir: Path) -> list[Path]:
    dirs = [p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()] if sweep_dir.is_dir() else []
    return sorted(dirs, key=lambda p: int(p.name))


def _job_overrides(job_dir: Path, record: dict | None) -> list[str]:
    if record is not None:
        return list(record.get("overrides", []))
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    from omegaconf import OmegaConf

    return [str(o) for o in OmegaConf.load(path)]


def _sweep_keys(sweep_dir: Path) -> list[str] | None:
    """The keys the sweep varies, from the `multirun.yaml` Hydra saves in the sweep dir (None without it)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return None
    from omegaconf import OmegaConf

    return swept_keys([str(o) for o in OmegaConf.load(path).hydra.overrides.task])


def collect(sweep_dir: Path) -> tuple[list[str], list[dict], str]:
    """(swept keys, one row per job, mode). A job without result.json has status 'failed'."""
    rows, swept, mode = [], [], None
    for job_dir in _job_dirs(sweep_dir):
        path = job_dir / "result.json"
        record = json.loads(path.read_text()) if path.is_file() else None
        overrides = dict(o.split("=", 1) for o in _job_overrides(job_dir, record) if "=" in o)
        for key in overrides:
            if key not in swept:
                swept.append(key)
        metrics: dict = {}
        if record is not None:
            _flatten("", record["result"], metrics)
            mode = mode or metrics.get("mode")
        model = (record or {}).get("config", {}).get("model", {}).get("name")
        rows.append({"job": job_dir.name, **overrides, "status": "ok" if record is not None else "failed",
                     **({"model": model} if model else {}), **metrics})
    declared = _sweep_keys(sweep_dir)
    if declared is not None:
        swept = [k for k in swept if k in declared]
    else:  # keys that hold the same value in every job (a fixed workload override) are not "swept"
        swept = [k for k in swept if len({r.get(k) for r in rows}) > 1]
    return swept, rows, mode or "offline"


def write_summary(sweep_dir: Path) -> list[Path]:
    sweep_dir = Path(sweep_dir)
    swept, rows, mode = collect(sweep_dir)
    if not rows:
        logger.warning("no job folders under %s: nothing to summarize", sweep_dir)
        return []
    metric = MAIN_METRIC.get(mode, "output_tokens_per_s")
    headline = [c for c in TABLE_COLUMNS.get(mode, [metric]) if any(c in r for r in rows) and c not in swept]
    columns = ["job", *swept, "status", *headline]
    extra = sorted({k for r in rows for k in r} - set(columns))
    csv_path = sweep_dir / "summary.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns + extra)
        writer.writeheader()
        writer.writerows(rows)
    md_path = sweep_dir / "summary.md"
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in columns) + " |")
    ok = [r for r in rows if r["status"] == "ok"]
    if len(swept) >= 2 and any(metric in r for r in ok):
        lines += ["", *pivot_table(swept, ok, metric)]
    md_path.write_text("\n".join(lines) + "\n")
    written = [csv_path, md_path]
    png = plot_summary(sweep_dir / "summary.png", swept, ok, metric, mode)
    if png:
        written.append(png)
    return written


def pivot_table(swept: list[str], rows: list[dict], metric: str) -> list[str]:
    """`metric` of each job in a grid: a column per value of the plot's x key (the first numeric swept key),
    a row per combination of the other swept keys, both in the order the jobs ran; '-' where no job ran."""
    x_key = numeric_axis_key(swept, rows)
    others = [k for k in swept if k != x_key]
    columns = list(dict.fromkeys(str(r.get(x_key)) for r in rows))
    grid: dict[tuple, dict[str, Any]] = {}
    for row in rows:
        grid.setdefault(tuple(str(row.get(k)) for k in others), {})[str(row.get(x_key))] = row.get(metric)
    lines = [f"{metric} by {x_key}:", "",
             "| " + " | ".join([*others, *(f"{x_key}={c}" for c in columns)]) + " |",
             "|" + "---|" * (len(others) + len(columns))]
    for combo, cells in grid.items():
        lines.append("| " + " | ".join([*combo, *(_cell(cells[c]) if c in cells else "-" for c in columns)]) + " |")
    return lines


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1 else f"{value:.2f}"
    return "" if value is None else str(value)


class SweepSummary(Callback):
    """Hydra callback: progress lines while a multirun goes, the summary after each job and at the end."""

    def __init__(self) -> None:
        self.progress = SweepProgress()

    def on_multirun_start(self, config, **kwargs) -> None:
        self.progress.start_sweep(list(config.hydra.overrides.task))

    def on_job_start(self, config, **kwargs) -> None:
        if _is_multirun(config):
            self.progress.start_job(int(config.hydra.job.num), list(config.hydra.overrides.task))

    def on_job_end(self, config, job_return=None, **kwargs) -> None:
        if not _is_multirun(config):
            return
        from hydra.core.utils import JobStatus

        ok = job_return is not None and job_return.status == JobStatus.COMPLETED
        self.progress.end_job(int(config.hydra.job.num), ok)
        try:
            write_summary(Path(config.hydra.sweep.dir))
        except Exception as exc:  # a summary problem must not fail the job that just ran
            logger.warning("sweep summary not updated: %s", exc)

    def on_multirun_end(self, config, **kwargs) -> None:
        for path in write_summary(Path(config.hydra.sweep.dir)):
            print(f"surge-bench summary: {path}")


def _is_multirun(config) -> bool:
    from hydra.types import RunMode

    return config.hydra.mode == RunMode.MULTIRUN
