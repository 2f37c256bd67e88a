"""README.md's "eSurge and vSurge spellings" examples run as written.

In: the ```python blocks under that heading, executed unchanged (stdout captured). Out: asserts on
what each prints and on the objects it leaves behind, so an example that drifts from the API fails.
"""

from __future__ import annotations

import ast
import contextlib
import gc
import io
import pathlib
import re

import pytest

import surge

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
HEADING = "### eSurge and vSurge spellings"


def section_blocks(heading: str) -> list:
    """The ```python blocks between `heading` and the next heading of the same or a higher level."""
    text = README.read_text()
    start = text.index(heading) + len(heading)
    following = re.search(r"^#{1,3} ", text[start:], flags=re.MULTILINE)
    section = text[start:start + following.start()] if following else text[start:]
    return re.findall(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)


def run_block(code: str) -> tuple:
    """Execute a README block as a script; returns (its stdout, its global names)."""
    names = {"__name__": "__main__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, str(README), "exec"), names)
    return out.getvalue(), names


@pytest.fixture(autouse=True)
def collect_garbage():
    yield
    gc.collect()


def test_section_has_the_esurge_and_vsurge_examples():
    blocks = section_blocks(HEADING)
    assert len(blocks) == 2
    assert "surge.eSurge(" in blocks[0] and "engine.stream(" in blocks[0]
    assert "surge.vSurge.from_model(" in blocks[1] and "stream=True" in blocks[1]


@pytest.mark.slow
def test_esurge_example_generates_and_streams():
    stdout, names = run_block(section_blocks(HEADING)[0])
    engine, response = names["engine"], names["response"]
    answer = response[0].outputs[0]
    assert 1 <= len(answer.token_ids) <= 16 and "Paris" in answer.text
    assert engine.config.cache.prefix_cache_capacity == 0.3 and engine.kv_plan.page_size == 64
    # the stream printed exactly what a greedy generate of the same prompt returns
    story = engine.generate("Once upon a time, a robot",
                            sampling_params=surge.SamplingParams(max_tokens=16, temperature=0.0))[0].outputs[0].text
    assert stdout == answer.text + "\n" + story + "\n"


@pytest.mark.slow
def test_vsurge_example_returns_samples_then_streams_cumulative_text():
    stdout, names = run_block(section_blocks(HEADING)[1])
    lines = stdout.splitlines()
    finals = []
    for line in lines[:2]:
        text, rate = re.fullmatch(r"(.*): (\d+) tokens/s", line).groups()
        finals.append(ast.literal_eval(text))
        assert finals[-1] and int(rate) > 0
    updates = [ast.literal_eval(line) for line in lines[2:]]
    assert len(updates) > 2, "the stream yields more than one update per prompt"
    for earlier, later in zip(updates, updates[1:]):
        assert len(earlier) == len(later) == 2
        assert all(new.startswith(old) for old, new in zip(earlier, later)), "text is cumulative"
    assert updates[-1] == finals, "greedy: the stream ends where the non-streaming call did"


def layout_paths() -> list:
    """The paths the README's "## Layout" block names: the first word of each line that starts in column 0."""
    text = README.read_text()
    start = text.index("## Layout")
    block = re.search(r"^```\n(.*?)^```", text[start:], flags=re.MULTILINE | re.DOTALL).group(1)
    return [line.split()[0] for line in block.splitlines() if line and not line[0].isspace()]


def test_layout_section_matches_the_tree():
    repo = README.parent
    named = layout_paths()
    assert len(named) == len(set(named)), "a path is named twice"
    missing = [p for p in named if not (repo / p).exists() or p.endswith("/") != (repo / p).is_dir()]
    assert not missing, f"README's layout names paths that are not in the tree: {missing}"
    packages = sorted(f"surge/{p.name}/" for p in (repo / "surge").iterdir() if (p / "__init__.py").is_file())
    unnamed = [p for p in packages if p not in named]
    assert not unnamed, f"README's layout leaves out these packages of surge/: {unnamed}"
