"""The gates of `make test` (issue 20): ruff over the whole checkout and mypy over the package, as configured
in pyproject.toml, both with the versions requirements-dev.txt pins. A finding fails the suite with the
tool's own report, so `make test` says what to fix and where."""

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
}


@pytest.mark.parametrize("tool", GATES)
def test_gate_passes(tool: str) -> None:
    found = subprocess.run([sys.executable, *GATES[tool]], cwd=REPO, capture_output=True, text=True, timeout=600)
    report = (found.stdout + found.stderr).strip()
    if found.returncode != 0 and f"No module named {tool}" in report:
        pytest.fail(f"{tool} is not installed in {sys.prefix}: `make venv` (or pip install -r requirements-dev.txt)")
    assert found.returncode == 0, f"`python {' '.join(GATES[tool])}` failed:\n{report}"
