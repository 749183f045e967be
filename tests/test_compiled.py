"""The compiled modules (chart/_kernel.c, cache/_files.c): without a build, render and repair stop with
one clear error before any work, instead of recording windows as refused by the engine."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

BLOCK = ("import sys\n"
         "class Block:\n"
         "    def find_spec(self, name, path=None, target=None):\n"
         "        if name == {module!r}:\n"
         "            raise ImportError(name)\n"
         "sys.meta_path.insert(0, Block())\n")


def _cli(workdir: Path, blocked: str, *args: str) -> subprocess.CompletedProcess:
    (workdir / "site").mkdir(exist_ok=True)
    (workdir / "site" / "sitecustomize.py").write_text(BLOCK.format(module=blocked))
    env = {**os.environ, "PYTHONPATH": f"{workdir / 'site'}:{REPO / 'src'}:{REPO}"}
    return subprocess.run([sys.executable, str(REPO / "image_cache.py"), *args, "--config", "image_cache.toml"],
                          cwd=workdir, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("module, message", [
    ("image_cache.chart._kernel", "the drawing kernel image_cache/chart/_kernel.so is not built"),
    ("image_cache.cache._files", "the file writer image_cache/cache/_files.so is not built"),
])
def test_render_without_a_build_stops_before_any_work(workdir: Path, module: str, message: str):
    """The old render recorded every window as undrawable when the kernel was missing: rows that stayed
    refused after the build, until their candles changed."""
    proc = _cli(workdir, module, "render")
    assert proc.returncode == 1
    assert proc.stderr == (f"Error: {message}: run `make venv` (a checkout) or reinstall with `pip install .` "
                           "(both need a C compiler and the Python headers)\n")
    db = workdir / "image_cache.sqlite"
    if db.exists():
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0
    assert not list(workdir.rglob("*.png"))
    repair = _cli(workdir, module, "repair")
    assert repair.returncode == 1 and repair.stderr.startswith(f"Error: {message}")


def test_a_dry_run_needs_no_build(workdir: Path):
    proc = _cli(workdir, "image_cache.chart._kernel", "render", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "would draw" in proc.stdout


def test_a_build_naming_no_source_or_a_missing_source_is_unbuilt(tmp_path: Path, monkeypatch):
    """Either used to escape as an AttributeError or FileNotFoundError at import: a traceback."""
    from image_cache.core import compiled
    (tmp_path / "built_here.py").write_text("SOURCE_SHA256 = 'abc'\n")
    (tmp_path / "no_hash.py").write_text("")
    (tmp_path / "built_here.c").write_text("/* another source */\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for module, source in [("no_hash", tmp_path / "built_here.c"), ("built_here", tmp_path / "gone.c"),
                           ("built_here", tmp_path / "built_here.c")]:
        loaded = compiled.load(module, "the thing", source, LookupError)
        with pytest.raises(LookupError, match=f"the thing {module}.so was built from another {module}.c"):
            compiled.require_built(loaded)
