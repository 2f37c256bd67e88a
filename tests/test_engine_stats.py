"""EngineStats: every field typed and documented where declared, `to_dict()` losing nothing, one hit rate.

No engine here (tests/test_engine.py checks a real engine's stats); values are made up.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
import textwrap
import typing
from pathlib import Path

import pytest

import surge
from surge.cache.pool_stats import PoolStats
from surge.engine.stats import EngineStats
from surge.spec_decode.stats import DraftModelStats, SpecDecodeStats, SuffixIndexStats
from tests.engine_stats_cases import from_flat, make_stats

PARTS = (EngineStats, PoolStats, SpecDecodeStats, SuffixIndexStats, DraftModelStats)


def full_stats(spec: bool = True) -> EngineStats:
    """Every field set to a distinct value (so a swapped or dropped field shows)."""
    counter = iter(range(1, 1000))

    def fill(cls):
        values = {}
        for name, kind in typing.get_type_hints(cls).items():
            part = next((c for c in (kind, *typing.get_args(kind)) if dataclasses.is_dataclass(c)), None)
            if part is not None:
                values[name] = fill(part)
            elif kind is str:
                values[name] = f"{name}-{next(counter)}"
            elif kind is float:
                values[name] = next(counter) + 0.5
            elif typing.get_origin(kind) is tuple:
                values[name] = (next(counter), 0, next(counter))
            else:
                values[name] = next(counter)
        return cls(**values)

    stats = fill(EngineStats)
    return stats if spec else dataclasses.replace(stats, spec_decode=None)


@pytest.mark.parametrize("cls", PARTS, ids=lambda c: c.__name__)
def test_every_field_is_typed_and_documented_on_the_line_above(cls):
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen
    hints = typing.get_type_hints(cls)
    source = textwrap.dedent(inspect.getsource(cls))
    lines = source.splitlines()
    declared = [node for node in ast.parse(source).body[0].body if isinstance(node, ast.AnnAssign)]
    assert [node.target.id for node in declared] == [f.name for f in dataclasses.fields(cls)]
    for node in declared:
        name = node.target.id
        assert hints[name] is not typing.Any and hints[name] is not object, f"{cls.__name__}.{name} is untyped"
        above = lines[node.lineno - 2].strip()
        assert above.startswith("# ") and len(above) > 8, f"{cls.__name__}.{name} has no comment above it"
    for name, attr in vars(cls).items():
        if isinstance(attr, property):
            assert attr.__doc__, f"{cls.__name__}.{name} (derived) has no docstring"
            assert "return" in typing.get_type_hints(attr.fget), f"{cls.__name__}.{name} has no return type"


@pytest.mark.parametrize("spec", [True, False], ids=["spec_decode", "no_spec_decode"])
def test_to_dict_round_trips_and_every_key_is_one_field(spec):
    stats = full_stats(spec)
    flat = stats.to_dict()
    assert from_flat(flat) == stats
    assert json.loads(json.dumps(flat)) == flat  # plain values only
    leaves = [f for f in dataclasses.fields(PoolStats)] + [f for f in dataclasses.fields(EngineStats)
                                                           if f.name not in ("pages", "spec_decode")]
    derived = ["prefix_cache_hit_rate"]
    if spec:
        leaves += [f for cls in (SpecDecodeStats, SuffixIndexStats, DraftModelStats) for f in dataclasses.fields(cls)
                   if f.name not in ("suffix", "draft")]
        derived += ["spec_decode_acceptance_rate", "spec_decode_mean_acceptance_length"]
    assert len(flat) == len(leaves) + len(derived)  # no two fields share a key
    assert all(key in flat for key in derived)
    # The keys engine.stats() had as a dict (the README's print shows them; the bench's columns use them).
    assert {"num_total_pages", "num_used_pages", "num_cached_pages", "num_running", "num_waiting",
            "num_preemptions", "num_compiles", "backend", "max_model_len"} <= set(flat)
    assert any(key.startswith("spec_decode_") for key in flat) == spec
    if spec:
        assert flat["spec_decode_method"] == stats.spec_decode.method
        assert flat["spec_decode_draft_num_calls"] == stats.spec_decode.draft.num_calls
        assert flat["spec_decode_suffix_index_tokens"] == stats.spec_decode.suffix.index_tokens
        assert flat["spec_decode_acceptance_lengths"] == list(stats.spec_decode.acceptance_lengths)


def test_a_wrong_key_fails_by_name():
    with pytest.raises(KeyError, match="num_totl_pages"):
        make_stats(num_totl_pages=3)
    with pytest.raises(TypeError, match="num_requests"):
        PoolStats(num_total_pages=1, num_free_pages=1, num_cached_pages=0, num_used_pages=0, num_queried_pages=0,
                  num_hit_pages=0, num_evictions=0, max_cached_pages=0, num_capacity_evictions=0)


def test_the_prefix_cache_hit_rate_exists_once():
    stats = make_stats(prefix_cache_queried_tokens=400, prefix_cache_hit_tokens=100, num_queried_pages=10,
                       num_hit_pages=9)
    assert stats.prefix_cache_hit_rate == 0.25  # tokens, not pages (9/10)
    assert make_stats().prefix_cache_hit_rate == 0.0
    # One attribute, derived (never a field that could disagree with its counters), on EngineStats only.
    assert isinstance(vars(EngineStats)["prefix_cache_hit_rate"], property)
    owners = [cls.__name__ for cls in PARTS for name in [*(f.name for f in dataclasses.fields(cls)), *vars(cls)]
              if "hit_rate" in name]
    assert owners == ["EngineStats"]
    assert [key for key in stats.to_dict() if "hit_rate" in key] == ["prefix_cache_hit_rate"]
    # And one division: nowhere else in surge/ divides hits by lookups.
    package = Path(surge.__file__).parent
    dividing = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                      if re.search(r"hits?\w*\s*/\s*\(?\s*\w*quer", path.read_text()))
    assert dividing == ["engine/stats.py"], dividing


def test_engine_stats_is_a_public_name():
    assert surge.EngineStats is EngineStats
