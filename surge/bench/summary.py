"""Sweep summary: one table (and plot) for every job of a `surge-bench -m` sweep.

In: the `result.json` each job wrote under the sweep dir (`hydra.sweep.dir`).
Out: `summary.csv`, `summary.md` (one row per job, the swept keys as columns)
and `summary.png` (the main metric against the first swept key, one line per
combination of the others), written by a Hydra callback when the sweep ends.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

logger = logging.getLogger("surge")

# Metric plotted and listed first, per bench mode.
MAIN_METRIC = {"offline": "output_tokens_per_s", "serve": "output_tokens_per_s", "prefix": "output_tokens_per_s",
               "attention": "decode_gb_per_s"}


def _flatten(prefix: str, value: Any, out: dict) -> None:
    if isinstance(value, dict):
        for key, inner in value.items():
            _flatten(f"{prefix}.{key}" if prefix else key, inner, out)
    elif not isinstance(value, list):
        out[prefix] = value


def collect(sweep_dir: Path) -> tuple[list[str], list[dict], str]:
    """(swept keys, one row per job, main metric name)."""
    rows, swept = [], []
    for path in sorted(sweep_dir.glob("*/result.json"), key=lambda p: (len(p.parent.name), p.parent.name)):
        record = json.loads(path.read_text())
        overrides = dict(o.split("=", 1) for o in record.get("overrides", []) if "=" in o)
        for key in overrides:
            if key not in swept:
                swept.append(key)
        metrics: dict = {}
        _flatten("", record["result"], metrics)
        rows.append({"job": path.parent.name, **overrides, **metrics})
    mode = rows[0].get("mode", "offline") if rows else "offline"
    return swept, rows, MAIN_METRIC.get(mode, "output_tokens_per_s")


def write_summary(sweep_dir: Path) -> list[Path]:
    swept, rows, metric = collect(sweep_dir)
    if not rows:
        logger.warning("no result.json under %s: nothing to summarize", sweep_dir)
        return []
    columns = ["job", *swept] + [c for c in (metric, "requests_per_s", "ttft_ms.p50", "tpot_ms.p50", "elapsed_s")
                                 if any(c in r for r in rows) and c not in swept]
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
    md_path.write_text("\n".join(lines) + "\n")
    written = [csv_path, md_path]
    png = _plot(sweep_dir / "summary.png", swept, rows, metric)
    if png:
        written.append(png)
    return written


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "" if value is None else str(value)


def _plot(path: Path, swept: list[str], rows: list[dict], metric: str) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not swept or not any(metric in r for r in rows):
        return None
    x_key, others = swept[0], swept[1:]
    groups: dict[tuple, list[tuple]] = {}
    for row in rows:
        label = tuple(f"{k}={row.get(k)}" for k in others)
        groups.setdefault(label, []).append((row.get(x_key), row.get(metric)))
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for label, points in groups.items():
        points = sorted(points, key=lambda p: _sort_key(p[0]))
        xs = [str(p[0]) for p in points]
        ax.plot(xs, [p[1] for p in points], marker="o", label=", ".join(label) or metric)
    ax.set_xlabel(x_key)
    ax.set_ylabel(metric.replace("_", " "))
    ax.set_title(f"surge-bench: {metric.replace('_', ' ')} vs {x_key}")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _sort_key(value: Any):
    try:
        return (0, float(value))
    except (TypeError, ValueError):
        return (1, str(value))


class SweepSummary(Callback):
    """Hydra callback: summarize the sweep when the multirun ends."""

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        for path in write_summary(sweep_dir):
            print(f"surge-bench summary: {path}")
