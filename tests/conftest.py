"""Shared fixtures: a small sample market built once per session, copied into each test's folder."""

from __future__ import annotations

import contextlib
import faulthandler
import hashlib
import io
import os
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Small images keep the suite fast; the goldens cover full-size presets.
CONFIG = """
[image_cache]
market_db = "market.sqlite"
index_db = "image_cache.sqlite"
image_root = "image-cache"
symbols = ["BTCUSDT", "ETHUSDT"]
intervals = ["1h", "4h"]
size = 128
window = 30
start = "2024-06-25"
jobs = 1
"""


PROGS = {None: "python image_cache.py", "ingest": "python -m ingest", "nightly": "python nightly.py"}


def run_cli(cwd: Path, *args: str, module: str | None = None, timeout: float = 300,
            process: bool = False) -> subprocess.CompletedProcess:
    """`python image_cache.py ARGS` (or `python -m MODULE ARGS`) in `cwd`: in this process through the command
    line's `main(argv)` (stdout and stderr captured), or with `process` as a real subprocess, for the tests
    whose subject is the process boundary (start-up, signals, crashes, concurrent runs)."""
    if process:
        command = [sys.executable, "-m", module] if module else [sys.executable, str(REPO / "image_cache.py")]
        env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
        return subprocess.run(command + list(args), cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              env=env)
    from image_cache.cli import cache, ingest, nightly
    main = {None: cache.main, "ingest": ingest.main, "nightly": nightly.main}[module]
    out, err = io.StringIO(), io.StringIO()
    before = os.getcwd()
    os.chdir(cwd)
    # A command that hangs (a pipe opened blocking, a wait without end) ends this test process with every
    # thread's stack, as the subprocess's timeout did: a failure, never a suite that hangs.
    faulthandler.dump_traceback_later(timeout, exit=True)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(args), prog=PROGS[module])
    finally:
        faulthandler.cancel_dump_traceback_later()
        os.chdir(before)
    return subprocess.CompletedProcess([PROGS[module], *args], code, out.getvalue(), err.getvalue())


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


def _can_build_offline() -> bool:
    """The running venv has a setuptools that builds wheels by itself (70.1 on; `make venv` pins one)."""
    try:
        from importlib.metadata import version
        major, minor = (int(n) for n in version("setuptools").split(".")[:2])
    except Exception:
        return False
    return (major, minor) >= (70, 1)


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """A fresh virtualenv with the checkout installed by pip (compiling both C modules), reusing the test
    venv's packages for the dependencies (a .pth file: fast and offline)."""
    root = tmp_path_factory.mktemp("install")
    copy = root / "checkout"
    # The sources as a clone has them: no in-place build, no caches.
    shutil.copytree(REPO, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", "tests", "bench", "docs", "demo-data", "*.so", "__pycache__", "build", "dist",
        "*.egg-info", "*.sqlite*", "image-cache", ".pytest_cache", ".hypothesis"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c",
                                "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    shared = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_image_cache_test_deps.pth").write_text("\n".join(sorted(shared)) + "\n")
    pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
           "--no-compile", "--disable-pip-version-check", "--quiet"]
    if _can_build_offline():
        pip += ["--no-build-isolation", "--no-index"]
    out = subprocess.run([*pip, str(copy)], capture_output=True, text=True, timeout=300)
    if out.returncode != 0 and not _can_build_offline() and "setuptools" in out.stderr:
        pytest.skip("this venv predates the setuptools pin of requirements-dev.txt and no index answered: "
                    "run `make venv`")
    assert out.returncode == 0, out.stderr
    return venv


def make_user_folder(folder: Path) -> Path:
    """A training project's folder: its own config.py, cache/ and core/, which must not shadow ours."""
    (folder / "config.py").write_text("WHOSE = 'the user'\n")
    for name in ("cache", "core", "chart", "ingest"):
        (folder / name).mkdir()
        (folder / name / "__init__.py").write_text(f"raise ImportError('the user {name} was imported')\n")
    return folder


@pytest.fixture
def user_folder(tmp_path: Path) -> Path:
    return make_user_folder(tmp_path)
