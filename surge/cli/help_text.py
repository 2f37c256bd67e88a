"""The `${surge.key:KEY}` resolver the `--help` templates (conf/hydra/help/*.yaml) use.

In: a dotted config key and the composed config (Hydra's `--help` composes it with the command
line's overrides). Out: "KEY=value" with the value written as an override would be
(true/false, null, [a,b], a quoted string when it has spaces), so the help shows defaults
that cannot drift from conf/ and can be pasted back on the command line.
"""

from __future__ import annotations

import re
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

RESOLVER = "surge.key"
_BARE = re.compile(r"^[A-Za-z0-9_./:+-]+$")


def override_value(value: Any) -> str:
    """A value in Hydra's override syntax."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple, ListConfig)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, (dict, DictConfig)):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and not _BARE.match(value):
        return '"' + value.replace('"', '\\"') + '"'
    return str(value)


def _key_equals_value(key: str, _root_: DictConfig) -> str:
    return f"{key}={override_value(OmegaConf.select(_root_, key, throw_on_missing=False))}"


def register_help_resolver() -> None:
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, _key_equals_value)
