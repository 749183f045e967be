"""Shared fixtures: a small sample market built once per session, copied into each test's folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small images keep the suite fast; the goldens cover full-size presets.
CONFIG = """
[image_cache]
market_db_path = "market.sqlite"
image_index_db = "image_cache.sqlite"
image_root_dir = "image-cache"
pairs = ["BTCUSDT", "ETHUSDT"]
intervals = ["1h", "4h"]
img_size_px = 128
window_len = 30
start = "2024-06-25"
jobs = 1
"""


def run_cli(cwd: Path, *args: str, module: str | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python image_cache.py ARGS` (or `python -m MODULE ARGS`) in `cwd` as a real subprocess."""
    command = [sys.executable, "-m", module] if module else [sys.executable, str(REPO / "image_cache.py")]
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    return subprocess.run(command + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def render_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli(cwd, "render", "--config", "image_cache.toml", *args)


@pytest.fixture(scope="session")
def sample_market(tmp_path_factory) -> Path:
    from image_cache.ingest.sample import build_sample
    path = tmp_path_factory.mktemp("market") / "market.sqlite"
    build_sample(str(path), symbols=["BTCUSDT", "ETHUSDT"], days=10, seed=7)
    return path


@pytest.fixture
def workdir(tmp_path: Path, sample_market: Path) -> Path:
    """A folder with its own copy of the sample market and a config file for small images."""
    shutil.copy(sample_market, tmp_path / "market.sqlite")
    (tmp_path / "image_cache.toml").write_text(CONFIG)
    return tmp_path


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under root but the root's marker (it names its index)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".image_cache_root"}


def index_rows(db: Path, where: str = "") -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT symbol, interval, end_open_time_ms, file_path, sha256, pixel_hash, status, "
                            f"reason, input_fingerprint FROM images {where} ORDER BY file_path").fetchall()


@pytest.fixture
def rendered(workdir: Path) -> Path:
    """workdir after one successful render."""
    result = render_cli(workdir)
    assert result.returncode == 0, result.stderr
    return workdir
