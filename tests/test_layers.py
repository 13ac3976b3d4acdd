"""The layers contract in pyproject.toml bites: lint-imports reports an upward import.

Each test copies the portctl package and pyproject.toml into a folder of its own and runs
lint-imports there, the way scripts/test runs it on the checkout: once with one upward import
planted (a store importing the CLI), which must be reported, and once unmodified, which must
pass. The planted import exists only in the copy, so a report of it proves the copy was checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import portctl

PROJECT = Path(__file__).resolve().parents[1]
PLANTED_IN = Path("portctl/backends/base.py")
PLANTED = "import portctl.cli  # planted: a store importing the CLI above it\n"


def _lint_imports() -> str:
    beside = Path(sys.executable).with_name("lint-imports")
    found = str(beside) if beside.exists() else shutil.which("lint-imports")
    if found is None:
        pytest.skip("lint-imports is not installed (import-linter, in the test extra)")
    return found


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the package and of the project's contract, importable from its folder."""
    shutil.copytree(
        Path(portctl.__file__).parent, tmp_path / "portctl", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(PROJECT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def _run(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [_lint_imports(), "--no-cache"],
        cwd=tree,  # where lint-imports reads pyproject.toml
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_an_upward_import_breaks_the_contract(tree: Path) -> None:
    module = tree / PLANTED_IN
    lines = module.read_text().splitlines(keepends=True)
    line = len(lines) + 1
    module.write_text("".join(lines) + PLANTED)
    result = _run(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "portctl.backends is not allowed to import portctl.cli" in result.stdout
    assert f"- portctl.backends.base -> portctl.cli (l.{line})" in result.stdout


def test_the_unmodified_tree_keeps_the_contract(tree: Path) -> None:
    result = _run(tree)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 1 kept, 0 broken." in result.stdout
