"""Prefix-caching benchmark (the `prefix` mode of surge-bench) as a plain script.

In: the model (`--model`, default the embedded SmolLM2) and optional `key=value`
config overrides, e.g. `bench.input_len=512 bench.output_len=32 backend=cpu
'bench.prefix_shares=[0.0,0.5,0.9]'`. Out: throughput, TTFT p50/p90 and hit rate per
shared-prefix fraction, and the cold-vs-warm TTFT of a 1,000-token prefix (see
surge/bench/prefix.py); with `--json PATH` the full result dict.

Run: python benchmarks/prefix_cache.py [--model NAME] [--json out.json] [key=value ...]
"""

from __future__ import annotations

import argparse
import json

from surge.bench.overrides import config_from_words
from surge.bench.prefix import format_prefix, run_prefix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct",
                        help="catalogue name, Hugging Face directory or .gguf file")
    parser.add_argument("--json", help="also write the result dict to this file")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    cfg = config_from_words(args.overrides, model=args.model, **{"bench.mode": "prefix"})
    result = run_prefix(cfg)
    print(format_prefix(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
