"""Where surge keeps files between runs.

In: the SURGE_CACHE environment variable (optional). Out: `cache_dir()`, the one folder that holds
downloaded catalogue models (models/), converted tokenizers (tokenizers/), compiled step programs (xla/)
and the /v1/responses store (responses.sqlite). Every layer may ask; it belongs to none of them.
"""

from __future__ import annotations

import os


def cache_dir() -> str:
    """$SURGE_CACHE, else ~/.cache/surge."""
    return os.environ.get("SURGE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "surge")
