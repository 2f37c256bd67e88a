"""The sweep summary's picture: the headline figure (and TTFT, when there is one) against a swept key.

In: the swept keys, one row per finished job (flattened result figures plus the
overrides), the mode's main metric and the mode. Out: `summary.png` with one
panel per figure — the main metric, then TTFT p50 when the mode measures it —
whose x axis is the first swept key with numeric values (else the first swept
key), one line per combination of the other swept keys, labelled axes, a legend
and a title naming the workload.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

# Axis labels of the figures a panel may show.
LABELS = {
    "output_tokens_per_s": "generated tokens / s",
    "decode_gb_per_s": "decode attention bandwidth (GB/s)",
    "ttft_ms.p50": "TTFT p50 (ms)",
}


def plot_summary(path: Path, swept: list[str], rows: list[dict], metric: str, mode: str) -> Optional[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows or not any(_number(r.get(metric)) is not None for r in rows):
        return None
    metrics = [metric] + [m for m in ("ttft_ms.p50",) if any(_number(r.get(m)) is not None for r in rows)]
    x_key = numeric_axis_key(swept, rows)
    others = [k for k in swept if k != x_key]
    numeric_x = x_key is not None and all(_number(r.get(x_key)) is not None for r in rows)
    categories = _ordered({str(r.get(x_key)) for r in rows}) if x_key and not numeric_x else []

    fig, axes = plt.subplots(1, len(metrics), figsize=(6.4 * len(metrics), 4.6), dpi=120, squeeze=False)
    for ax, name in zip(axes[0], metrics):
        groups: dict[str, list[tuple]] = {}
        for row in rows:
            # One other key: its name is the legend's title, its value the label; several: key=value pairs.
            label = (str(row.get(others[0])) if len(others) == 1
                     else ", ".join(f"{k}={row.get(k)}" for k in others) or "all jobs")
            groups.setdefault(label, []).append((row.get(x_key) if x_key else row["job"], _number(row.get(name))))
        for label, points in sorted(groups.items()):
            points = [p for p in points if p[1] is not None]
            if numeric_x:
                points.sort(key=lambda p: _number(p[0]))
                xs = [_number(p[0]) for p in points]
            else:
                points.sort(key=lambda p: categories.index(str(p[0])) if str(p[0]) in categories else 0)
                xs = [categories.index(str(p[0])) if categories else i for i, p in enumerate(points)]
            ax.plot(xs, [p[1] for p in points], marker="o", label=label)
        if numeric_x:
            ticks = sorted({_number(r.get(x_key)) for r in rows})
            ax.set_xticks(ticks, [_tick(t) for t in ticks])
        elif categories:
            ax.set_xticks(range(len(categories)), categories)
        ax.set_xlabel(x_key or "job")
        ax.set_ylabel(LABELS.get(name, name.replace("_", " ")))
        ax.set_title(f"{LABELS.get(name, name)} vs {x_key or 'job'}", fontsize=10)
        ax.set_ylim(bottom=0)
        ax.margins(x=0.08)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, title=others[0] if len(others) == 1 else None, title_fontsize=8)
    model = f"{rows[0]['model']}, " if rows[0].get("model") else ""
    fig.suptitle(f"surge-bench {mode} sweep: {model}{_workload(rows[0], mode)}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def numeric_axis_key(swept: list[str], rows: list[dict]) -> Optional[str]:
    """The x axis: the first swept key whose every value is a number, else the first swept key."""
    for key in swept:
        if all(_number(r.get(key)) is not None for r in rows):
            return key
    return swept[0] if swept else None


def _workload(row: dict, mode: str) -> str:
    if mode == "attention":
        return f"{row.get('platform', '?')} {row.get('dtype', '')}, SmolLM2 attention shapes"
    parts = [f"{row.get('num_prompts', '?')} prompts x {row.get('input_len', '?')} tokens in, "
             f"{row.get('output_len', '?')} out"]
    if mode == "serve":
        rate = _number(row.get("request_rate"))
        parts.append(f"rate {rate:g}/s" if rate else "all at once")
    return ", ".join(parts)


def _number(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _tick(value: float) -> str:
    return f"{value:g}"


def _ordered(values: set) -> list[str]:
    return sorted(values, key=lambda v: (_number(v) is None, _number(v) or 0.0, v))
