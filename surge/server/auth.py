"""API keys: which keys the server accepts, and which label each one bills to.

In: keys from `server.api_keys` (a list, or a dict key -> {"label": ...}),
`server.api_keys_file` (one key per line, optional label after a space, `#`
comments), keys issued at run time by `generate_api_key`, and each HTTP
request's presented key (`Authorization: Bearer`, `X-API-Key` or `?api_key=`).
Out: the label of the matching key, or None. Keys are compared with
`hmac.compare_digest` against every registered key, so the time taken does not
reveal how much of a guess matched. Labels, never keys, appear in metrics: a key
registered without a label is named by its place, `key-1`, `key-2`, ... in the
order keys were added — never by anything computed from the secret, which would
let anyone who reads /metrics check guesses of a weak key offline.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from typing import Iterable, Mapping, Optional, Union

KEY_PREFIX = "sk-surge-"

ApiKeysSpec = Union[None, Iterable[str], Mapping[str, Union[str, Mapping, None]]]


def generate_api_key() -> str:
    """A new random key: 'sk-surge-' and 43 URL-safe characters (256 bits)."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def positional_label(index: int) -> str:
    """The label of the `index`-th key added (from 1) when it came without one."""
    return f"key-{index}"


def parse_keys_file(text: str, source: str = "api_keys_file") -> dict[str, Optional[str]]:
    """Keys and labels (None where a line has none) from the text of an api-keys file: `KEY [LABEL...]` per
    line, blank lines and # comments."""
    keys: dict[str, Optional[str]] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, _, label = line.partition(" ")
        label = label.strip()
        if key in keys:
            raise ValueError(f"{source}:{number}: key is listed twice")
        keys[key] = label or None
    return keys


class ApiKeyStore:
    """The registered keys (key -> label) and whether a key is required."""

    def __init__(self, keys: ApiKeysSpec = None, *, require: bool = False, keys_file: str = "") -> None:
        self.require = require
        self._lock = threading.Lock()
        self._labels: dict[str, str] = {}
        self._num_added = 0
        for key, label in _normalize(keys).items():
            self.add(key, label)
        if keys_file:
            with open(keys_file, encoding="utf-8") as handle:
                for key, label in parse_keys_file(handle.read(), keys_file).items():
                    self.add(key, label)

    def add(self, key: str, label: Optional[str] = None) -> None:
        if not isinstance(key, str) or not key.strip() or any(c.isspace() for c in key):
            raise ValueError(f"an API key must be a non-empty string without spaces, got {key!r}")
        if label is not None and (not isinstance(label, str) or key in label):
            raise ValueError("an API key's label must be a string that does not contain the key")
        with self._lock:
            self._num_added += 1
            self._labels[key] = label or positional_label(self._num_added)

    def generate(self, label: Optional[str] = None) -> str:
        key = generate_api_key()
        self.add(key, label)
        return key

    def revoke(self, key: str) -> bool:
        with self._lock:
            return self._labels.pop(key, None) is not None

    @property
    def labels(self) -> list[str]:
        with self._lock:
            return sorted(set(self._labels.values()))

    def __len__(self) -> int:
        return len(self._labels)

    def lookup(self, presented: Optional[str]) -> Optional[str]:
        """The label of `presented` if it is a registered key, else None (compares against every key)."""
        if not presented:
            return None
        candidate = presented.encode()
        with self._lock:
            items = list(self._labels.items())
        found: Optional[str] = None
        for key, label in items:
            # No early exit: every key is compared, whatever matched before.
            if hmac.compare_digest(candidate, key.encode()):
                found = label
        return found


def presented_key(headers: Mapping[str, str], query: Mapping[str, str]) -> Optional[str]:
    """The key a request presents: Authorization Bearer, then X-API-Key, then ?api_key=."""
    authorization = headers.get("authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    header_key = headers.get("x-api-key", "").strip()
    if header_key:
        return header_key
    query_key = query.get("api_key", "").strip()
    return query_key or None


def _normalize(keys: ApiKeysSpec) -> dict[str, Optional[str]]:
    if keys is None:
        return {}
    if isinstance(keys, str):
        return {keys: None}
    if isinstance(keys, Mapping):
        result: dict[str, Optional[str]] = {}
        for key, info in keys.items():
            if isinstance(info, Mapping):
                result[key] = info.get("label")
            elif info is None or isinstance(info, str):
                result[key] = info
            else:
                raise ValueError(f"api_keys[{key!r}] must be a label string or a dict with 'label', "
                                 f"got {type(info).__name__}")
        return result
    return {key: None for key in keys}
