"""The index failing under a render: deleted, full, damaged or read-only. Each stops the run with one
`Error:` line naming the file and the cause, exit 1: never a success without rows, never a traceback."""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, render_cli, run_cli
from core.db import immediate


def _errors(stderr: str) -> list[str]:
    assert "Traceback" not in stderr, stderr
    return [line for line in stderr.splitlines() if line.startswith("Error:")]


def _mount(folder: Path, options: str) -> None:
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")


@pytest.fixture
def index_dir(workdir: Path):
    """A 1 MiB tmpfs for the index: full long before a render of 1m candles has written its rows."""
    folder = workdir / "idx"
    _mount(folder, "size=1m")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_index_deleted_while_a_render_runs_is_an_error(workdir: Path):
    render = subprocess.Popen([sys.executable, str(REPO / "image_cache.py"), "render", "--config", "image_cache.toml",
                               "--interval", "1m"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    drawing = workdir / "image-cache" / "BTCUSDT" / "1m"
    deadline = time.monotonic() + 60
    while not drawing.exists() and render.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.unlink(workdir / "image_cache.sqlite")  # as `rm image_cache.sqlite` would, while it draws ~17,000 images
    stdout, stderr = render.communicate(timeout=300)
    assert render.returncode == 1, stdout
    assert _errors(stderr) == ["Error: image index image_cache.sqlite was deleted or replaced while this run wrote "
                               "to it: the rows of this run are lost (repair --reindex rebuilds an index from the "
                               "image files)"]
    assert "drawn" not in stdout


def test_index_disk_full_is_one_line_and_the_index_stays_truthful(workdir: Path, index_dir: Path):
    result = render_cli(workdir, "--interval", "1m", "--index-db", "idx/i.sqlite")
    assert result.returncode == 1
    assert _errors(result.stderr) == ["Error: image index idx/i.sqlite: disk full (database or disk is full)"]
    with contextlib.closing(sqlite3.connect(index_dir / "i.sqlite")) as conn:  # closed: the folder is unmounted
        rows = conn.execute("SELECT file_path, sha256 FROM images WHERE status = 'ok'").fetchall()
    assert rows
    for path, sha256 in rows:  # every row committed names its file, whole
        assert hashlib.sha256((workdir / "image-cache" / path).read_bytes()).hexdigest() == sha256

    subprocess.run(["mount", "-o", "remount,size=64m", str(index_dir)], check=True)
    assert render_cli(workdir, "--interval", "1m", "--index-db", "idx/i.sqlite").returncode == 0
    verify = run_cli(workdir, "verify", "--config", "image_cache.toml", "--interval", "1m", "--index-db",
                     "idx/i.sqlite", "--deep")
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_damaged_index_is_one_line(rendered: Path):
    db = rendered / "image_cache.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(db, "r+b") as handle:  # the first pages intact: it still opens as an index
        handle.seek(10 * 8192)
        handle.write(b"\xff" * 3 * 8192)
    result = render_cli(rendered)
    assert result.returncode == 1
    assert _errors(result.stderr) == ["Error: image index image_cache.sqlite: damaged (database disk image is "
                                      "malformed)"]


def test_index_in_a_read_only_folder_is_called_read_only(workdir: Path, index_dir: Path):
    assert render_cli(workdir, "--index-db", "idx/i.sqlite").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(index_dir)], check=True)
    result = run_cli(workdir, "status", "--config", "image_cache.toml", "--index-db", "idx/i.sqlite")
    assert result.returncode == 1
    assert _errors(result.stderr) == ["Error: cannot open image index idx/i.sqlite: the file or its folder is "
                                      "read-only"]


def test_a_failed_rollback_never_hides_the_error(tmp_path: Path):
    """SQLite rolls back by itself on some errors (a full disk): the ROLLBACK that follows then fails with
    "no transaction is active", which used to replace the real error."""
    conn = sqlite3.connect(tmp_path / "x.sqlite", isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    with pytest.raises(ValueError, match="the real error"):
        with immediate(conn):
            conn.execute("INSERT INTO t VALUES (1)")
            conn.execute("ROLLBACK")  # as SQLite does on SQLITE_FULL
            raise ValueError("the real error")
    assert not conn.in_transaction and conn.execute("SELECT count(*) FROM t").fetchone()[0] == 0
