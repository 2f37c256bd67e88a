"""The markdown table of a benchmarks/cpu_vs_llamacpp.sh run.

In: the run folder: llama-<weights>-r<round>.log (llama-batched-bench's JSONL lines among its log),
surge-<weights>-<isa>-<seqs>-r<round>/result.json (surge-bench jobs) and cpu.txt (lscpu).
Out: on stdout, generated tok/s over the whole run (prompt processing included) per weights x engine x
round and concurrent sequences — llama.cpp's as B x 128 / T from its own columns, surge's as
surge-bench reports it — then surge / llama.cpp ratios of round medians, and the CPU's model and flags.

    python benchmarks/cpu_vs_llamacpp_table.py RUN_DIR > RUN_DIR/table.md
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from collections import defaultdict
from pathlib import Path

WEIGHTS_ORDER = ("f32", "bf16", "q8_0", "q4_1")
LLAMA_LOG = re.compile(r"^llama-(?P<w>[a-z0-9_]+)-r(?P<r>\d+)\.log$")
SURGE_DIR = re.compile(r"^surge-(?P<w>[a-z0-9_]+)-(?P<isa>[a-z0-9_]+)-(?P<n>\d+)-r(?P<r>\d+)$")


def llama_rates(path: Path) -> dict[int, float]:
    """{sequences: generated tok/s} from llama-batched-bench's JSONL lines."""
    rates = {}
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith('{"n_kv_max"'):
            row = json.loads(line)
            rates[int(row["pl"])] = row["pl"] * row["tg"] / row["t"]
    return rates


def collect(run: Path) -> tuple[dict, list[int]]:
    """{(weights, engine label): {round: {seqs: tok/s}}} and the sorted sequence counts seen."""
    table: dict = defaultdict(lambda: defaultdict(dict))
    seqs = set()
    for entry in sorted(run.iterdir()):
        if m := LLAMA_LOG.match(entry.name):
            for n, rate in llama_rates(entry).items():
                table[(m["w"], "llama.cpp")][int(m["r"])][n] = rate
                seqs.add(n)
        elif (m := SURGE_DIR.match(entry.name)) and (entry / "result.json").is_file():
            result = json.loads((entry / "result.json").read_text())["result"]  # surge-bench's record
            label = "surge" if m["isa"] == "auto" else f"surge {m['isa']}"
            table[(m["w"], label)][int(m["r"])][int(m["n"])] = result["output_tokens_per_s"]
            seqs.add(int(m["n"]))
    return table, sorted(seqs)


def cpu_lines(run: Path) -> list[str]:
    fields = {}
    for line in (run / "cpu.txt").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return [f"CPU: {fields.get('Model name', '?')}, {fields.get('CPU(s)', '?')} CPUs "
            f"({fields.get('Thread(s) per core', '?')} thread(s) per core)", "",
            f"Flags: `{fields.get('Flags', '?')}`"]


def main(run: Path) -> None:
    table, seqs = collect(run)
    order = {w: i for i, w in enumerate(WEIGHTS_ORDER)}
    keys = sorted(table, key=lambda k: (order.get(k[0], len(order)), k[0], k[1] != "llama.cpp", k[1]))
    cell = lambda v: "—" if v is None else f"{v:.1f}"
    print("| weights | engine | round | " + " | ".join(str(n) for n in seqs) + " |")
    print("|---|---|---|" + "---|" * len(seqs))
    for key in keys:
        for r in sorted(table[key]):
            print(f"| {key[0]} | {key[1]} | {r} | " + " | ".join(cell(table[key][r].get(n)) for n in seqs) + " |")
    print()
    print("surge / llama.cpp, medians over rounds, same file:")
    print()
    print("| weights | engine | " + " | ".join(str(n) for n in seqs) + " |")
    print("|---|---|" + "---|" * len(seqs))
    median = lambda key, n: (statistics.median(v) if (v := [r[n] for r in table[key].values() if n in r]) else None)
    for key in keys:
        base = (key[0], "llama.cpp")
        if key[1] == "llama.cpp" or base not in table:
            continue
        ratios = []
        for n in seqs:
            ours, theirs = median(key, n), median(base, n)
            ratios.append("—" if ours is None or theirs is None else f"{ours / theirs:.2f}x")
        print(f"| {key[0]} | {key[1]} | " + " | ".join(ratios) + " |")
    print()
    print("\n".join(cpu_lines(run)))


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/cpu_vs_llamacpp_table.py RUN_DIR")
    main(Path(sys.argv[1]))
