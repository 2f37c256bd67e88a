"""Config overrides for the benchmark scripts in benchmarks/: `key=value` words in, a SurgeConfig out.

In: words such as `backend=cpu`, `cache.page_size=32` or `bench.prefix_shares=[0.0,0.9]`
(short names of `Engine.from_pretrained` or dotted config keys; values are read as
YAML, so lists and numbers keep their types) and fixed keys the script sets first.
Out: the validated SurgeConfig (a bad key or value raises ConfigError naming it).
"""

from __future__ import annotations

from typing import Sequence

import yaml

from surge.config import SurgeConfig, make_config


def config_from_words(words: Sequence[str], model: str | None = None, **fixed) -> SurgeConfig:
    overrides = dict(fixed)
    for word in words:
        key, sep, value = word.partition("=")
        if not sep or not key:
            raise SystemExit(f"expected key=value, got {word!r}")
        overrides[key] = yaml.safe_load(value) if value else ""
    return make_config(model, **overrides)
