"""One line for a command line that does not compose: what Hydra or OmegaConf raised, named by key.

In: the exception raised while Hydra parsed the overrides and composed the config (before the
app's job started), and the app's name. Out: a single sentence naming the key, the option or the
token at fault and what to write instead — never Hydra's advice to append with '+' to a key
that the schema does not have.
"""

from __future__ import annotations

import re
import sys
from typing import Optional

from surge.config import config_keys, unknown_key_message

_APPEND_EXISTING = re.compile(r"An item is already at '([^']+)'")
_MISSING_OPTION = re.compile(r"Could not find '([^']+)'")


def explain(exc: BaseException, app: str) -> str:
    """The one-line message for a failed composition (without the 'surge-xxx: ' prefix)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, ConfigTypeError, OmegaConfBaseException,
                                  ValidationError)

    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    key = getattr(cause, "full_key", None) or None
    text = _one_line(exc)
    if isinstance(exc, MissingConfigException):
        return _missing_option(exc)
    if match := _APPEND_EXISTING.search(text):
        existing = match.group(1)
        return f"'{existing}' already exists, so it cannot be added with '+': set it as {existing}=VALUE"
    if isinstance(exc, OverrideParseException):
        return f"cannot parse the override: {text} (write key=value; quote values with spaces or brackets)"
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
        return _unknown_key(key, app)
    if isinstance(cause, ValidationError) and key:
        return f"invalid value for '{key}': {_one_line(cause)}"
    if isinstance(cause, ConfigTypeError) and "deletion" in str(cause) and key:
        return f"'{key}' cannot be deleted with '~': every key of surge's schema has a value; set it as {key}=VALUE"
    detail = _one_line(cause) if cause is not exc else ""
    given = " ".join(sys.argv[1:])
    return f"the command line ({given}) does not compose: {text}" + (f" ({detail})" if detail else "")


def _unknown_key(key: Optional[str], app: str) -> str:
    if key is None:
        return "unknown config key"
    if key.startswith("hydra."):
        return f"unknown Hydra key '{key}' (see {app} --hydra-help)"
    parent = key.rsplit(".", 1)[0]
    if any(k == parent for k in config_keys()):  # a free-form dict such as sampling.structured_outputs
        return f"'{parent}' has no '{key[len(parent) + 1:]}' yet: add it with '+{key}=VALUE'"
    return unknown_key_message(key) + f" (`{app} --help` lists the main keys, `{app} --cfg job` all of them)"


def _missing_option(exc) -> str:
    match = _MISSING_OPTION.search(str(exc))
    missing = match.group(1) if match else (exc.missing_cfg_file or "?")
    group, _, option = missing.rpartition("/")
    options = ", ".join(exc.options) if exc.options else ""
    if group:
        return f"config group '{group}' has no option '{option}'" + (f"; options: {options}" if options else "")
    return f"config '{missing}' was not found"


def _one_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines()]
    keep = [line for line in lines if line and not line.startswith(
        ("full_key:", "reference_type=", "object_type=", "See https://hydra.cc", "Config search path",
         "provider=", "Available options in"))]
    return " ".join(keep)
