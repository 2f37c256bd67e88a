"""The layer order of DESIGN.md, enforced: import-linter's contract in pyproject.toml holds for surge/,
and the same contract breaks on a copy of surge/ with one upward import added.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("importlinter", reason="import-linter is a test dependency (pip install -e '.[test]')")

REPO = pathlib.Path(__file__).resolve().parents[1]
# PathFinder first: `surge` is the copy on PYTHONPATH, not whatever an (editable) install maps it to.
LINT = ("import sys, importlib.machinery; sys.meta_path.insert(0, importlib.machinery.PathFinder); "
        "from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True))")


def lint(package_parent: pathlib.Path) -> subprocess.CompletedProcess:
    """Run the project's contract over the `surge` package found under `package_parent`."""
    return subprocess.run([sys.executable, "-c", LINT, str(REPO / "pyproject.toml")], cwd=package_parent,
                          env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"},
                          capture_output=True, text=True, timeout=300)


def test_surge_keeps_its_layers():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "2 kept, 0 broken" in done.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    shutil.copytree(REPO / "surge", tmp_path / "surge", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    kernel = tmp_path / "surge" / "kernels" / "reference.py"
    kernel.write_text(kernel.read_text() + "\nfrom surge.engine import engine as _upward  # noqa\n")
    done = lint(tmp_path)
    assert done.returncode != 0
    assert "surge.kernels is not allowed to import surge.engine" in done.stdout
    assert "surge.kernels.reference -> surge.engine.engine" in done.stdout
