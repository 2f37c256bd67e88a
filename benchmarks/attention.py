"""Attention kernels benchmark (the `attention` mode of surge-bench) as a plain script.

In: optional `key=value` config overrides (`backend=cpu` times only that backend;
the default `auto` times every backend that can run here, `cache.page_size=32`,
`model.dtype=bfloat16`). Out: the table of `surge.bench.attention.format_attention`
on stdout, and with `--json PATH` the full result dict.

Run: python benchmarks/attention.py [--json out.json] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

from surge.bench.attention import format_attention, run_attention
from surge.bench.overrides import config_from_words


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="also write the result dict to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    cfg = config_from_words(args.overrides, **{"bench.mode": "attention"})
    result = run_attention(cfg)
    print(format_attention(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
