"""The gates of `make test` (issue 20): ruff over the whole checkout, mypy over the package and import-linter's
layer contract, as configured in pyproject.toml, with the versions requirements-dev.txt pins. A finding fails
the suite with the tool's own report, so `make test` says what to fix and where."""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import REPO

GATES = {
    # pyflakes, pycodestyle, isort, bugbear, pyupgrade: [tool.ruff] in pyproject.toml
    "ruff": ["-m", "ruff", "check", "--no-cache", "--output-format", "concise", "."],
    # the package's types: [tool.mypy] in pyproject.toml (files = src/image_cache)
    "mypy": ["-m", "mypy"],
    # the layers: [tool.importlinter] in pyproject.toml
    "importlinter": ["-c", "from importlinter.cli import lint_imports_command as lint; lint()", "--no-cache",
                     "--config", str(REPO / "pyproject.toml")],
}
# Where each runs: lint-imports from src/, where `image_cache` is the package (at the root it is the launcher).
CWD = {"importlinter": REPO / "src"}


@pytest.mark.parametrize("tool", GATES)
def test_gate_passes(tool: str) -> None:
    argv = [sys.executable, *GATES[tool]]
    found = subprocess.run(argv, cwd=CWD.get(tool, REPO), capture_output=True, text=True, timeout=600)
    report = (found.stdout + found.stderr).strip()
    if found.returncode != 0 and f"No module named {tool}" in report:
        pytest.fail(f"{tool} is not installed in {sys.prefix}: `make venv` (or pip install -r requirements-dev.txt)")
    assert found.returncode == 0, f"`python {' '.join(GATES[tool])}` failed:\n{report}"
