"""EngineStats from the flat string-keyed form, for tests: the inverse of `EngineStats.to_dict()`.

In: flat keys as `to_dict()` spells them (`num_total_pages`, `spec_decode_num_drafts`, ...). Out: the
`EngineStats` they describe. `make_stats(**some)` fills what is not given with zeros (a part whose keys are
all absent is None) for tests that feed a collector or a console without an engine; `from_flat(d)` takes
every field from `d`. Either way a derived key (a property, e.g. prefix_cache_hit_rate) must equal what
the fields give, and an unknown key fails.
"""

from __future__ import annotations

import dataclasses
import typing

from surge.engine.stats import EngineStats

ZERO = {int: 0, float: 0.0, str: ""}


def _part(kind):
    """The dataclass a field holds (through Optional), or None."""
    for candidate in (kind, *typing.get_args(kind)):
        if dataclasses.is_dataclass(candidate):
            return candidate
    return None


def _build(cls, flat: dict, prefix: str, fill: bool, used: set):
    hints, values = typing.get_type_hints(cls), {}
    for f in dataclasses.fields(cls):
        kind, part = hints[f.name], _part(hints[f.name])
        if part is not None:
            sub = prefix + f.metadata.get("prefix", f.name + "_")
            optional = type(None) in typing.get_args(kind)
            values[f.name] = (None if optional and not any(k.startswith(sub) for k in flat)
                              else _build(part, flat, sub, fill, used))
            continue
        key = prefix + f.name
        if key in flat:
            used.add(key)
            value = flat[key]
            values[f.name] = tuple(value) if typing.get_origin(kind) is tuple else value
        elif fill:
            values[f.name] = () if typing.get_origin(kind) is tuple else ZERO[kind]
        else:
            raise KeyError(f"{key!r} missing")
    built = cls(**values)
    for name, attr in vars(cls).items():
        if isinstance(attr, property) and prefix + name in flat:
            used.add(prefix + name)
            assert flat[prefix + name] == getattr(built, name), f"{prefix + name} disagrees with the fields"
    return built


def _from(flat: dict, fill: bool) -> EngineStats:
    used: set = set()
    stats = _build(EngineStats, flat, "", fill, used)
    unknown = set(flat) - used
    if unknown:
        raise KeyError(f"not EngineStats keys: {sorted(unknown)}")
    return stats


def from_flat(flat: dict) -> EngineStats:
    return _from(flat, fill=False)


def make_stats(**flat) -> EngineStats:
    return _from(flat, fill=True)
