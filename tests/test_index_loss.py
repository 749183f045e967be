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
from functools import partial
from pathlib import Path

import pytest

from conftest import REPO, render_cli, run_cli
from image_cache.core.db import immediate

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)


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
                               "--intervals", "1m"], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
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
    one = ["--symbols", "BTCUSDT", "--intervals", "1m", "--index-db", "idx/i.sqlite"]  # 8,640 images: ~2 MB of rows
    result = render_cli(workdir, *one)
    assert result.returncode == 1
    assert _errors(result.stderr) == ["Error: image index idx/i.sqlite: disk full (database or disk is full)"]
    with contextlib.closing(sqlite3.connect(index_dir / "i.sqlite")) as conn:  # closed: the folder is unmounted
        rows = conn.execute("SELECT file_path, sha256 FROM images WHERE status = 'ok'").fetchall()
    assert rows
    for path, sha256 in rows:  # every row committed names its file, whole
        assert hashlib.sha256((workdir / "image-cache" / path).read_bytes()).hexdigest() == sha256

    subprocess.run(["mount", "-o", "remount,size=64m", str(index_dir)], check=True)
    assert render_cli(workdir, *one).returncode == 0
    verify = run_cli(workdir, "verify", "--config", "image_cache.toml", *one, "--deep")
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


# Every command, not only render: the same failures of the index, the same one line.
COMMANDS = {"verify": ("verify",), "verify --deep": ("verify", "--deep"), "repair": ("repair",),
            "repair --reindex": ("repair", "--reindex"), "status": ("status",),
            "export": ("export", "out", "--format", "manifest", "--horizons", "2"),
            "preview": ("preview", "sheet.png", "--n", "4", "--horizons", "2")}


def _command(folder: Path, name: str, *extra: str) -> subprocess.CompletedProcess:
    verb, *args = COMMANDS[name]
    return run_cli(folder, verb, *args, "--config", "image_cache.toml", *extra)


@pytest.mark.parametrize("name", [n for n in COMMANDS if n != "repair --reindex"])  # which rebuilds it: its job
def test_every_command_calls_a_damaged_index_damaged(rendered: Path, name: str):
    db = rendered / "image_cache.sqlite"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    with open(db, "r+b") as handle:
        handle.seek(10 * 8192)
        handle.write(b"\xff" * 3 * 8192)
    result = _command(rendered, name)
    assert result.returncode == 1, result.stdout
    assert _errors(result.stderr) == ["Error: image index image_cache.sqlite: damaged (database disk image is "
                                      "malformed)"]


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of `folder`, then free `leave` bytes of it."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    with contextlib.suppress(OSError):
        while os.write(fd, b"\0" * 4096):
            pass
    os.close(fd)
    os.truncate(folder / "filler", max(0, os.path.getsize(folder / "filler") - leave))


@pytest.fixture
def full_index(workdir: Path, index_dir: Path) -> Path:
    """A rendered cache whose index's disk is full, some of its images deleted (verify has rows to change)."""
    assert render_cli(workdir, "--index-db", "idx/i.sqlite").returncode == 0
    for path in (workdir / "image-cache" / "BTCUSDT" / "1h" / "2024" / "06").glob("*T05-*"):
        path.unlink()
    return workdir


@pytest.mark.parametrize("name", ["verify", "repair", "repair --reindex"])
def test_commands_that_write_the_index_stop_on_its_full_disk_with_one_line(full_index: Path, index_dir: Path,
                                                                           name: str):
    _fill(index_dir, 64 * 1024)  # room for the lock and to open the index, not for the rows
    result = _command(full_index, name, "--index-db", "idx/i.sqlite")
    assert result.returncode == 1, result.stdout
    assert _errors(result.stderr) == ["Error: image index idx/i.sqlite: disk full (database or disk is full)"]


@pytest.mark.parametrize("name", ["status", "preview"])
def test_commands_that_read_the_index_call_its_full_disk_full(full_index: Path, index_dir: Path, name: str):
    """SQLite cannot even open a WAL index without room for its shared-memory file: was "read-only"."""
    _fill(index_dir, 0)
    result = _command(full_index, name, "--index-db", "idx/i.sqlite")
    assert result.returncode == 1, result.stdout
    assert _errors(result.stderr) == ["Error: cannot open image index idx/i.sqlite: disk full"]


@pytest.mark.parametrize("name", ["status", "preview", "verify", "export"])
def test_every_command_calls_an_index_in_a_read_only_place_read_only(workdir: Path, index_dir: Path, name: str):
    assert render_cli(workdir, "--index-db", "idx/i.sqlite").returncode == 0
    subprocess.run(["mount", "-o", "remount,ro", str(index_dir)], check=True)
    result = _command(workdir, name, "--index-db", "idx/i.sqlite")
    assert result.returncode == 1, result.stdout
    [error] = _errors(result.stderr)
    # Commands that take the run lock meet the read-only place first at the lock file beside the index.
    assert error in ("Error: cannot open image index idx/i.sqlite: the file or its folder is read-only",
                     "Error: cannot create lock file idx/i.sqlite.lock: read-only file system (Read-only file "
                     "system)"), error
    assert "damaged" not in error and "not an image index" not in error


@pytest.mark.parametrize("command", ["verify", "repair", "repair --reindex"])
def test_an_index_deleted_while_verify_or_repair_runs_is_an_error(rendered: Path, monkeypatch, command: str):
    """The file is deleted as the run checks the images (its progress hook), as `rm` would: the run used to
    write its findings and report success into a file no one can open again."""
    from image_cache import settings as config
    from image_cache.cache import verify
    from image_cache.cache.index import IndexFileError

    monkeypatch.chdir(rendered)
    (rendered / "image-cache" / "ETHUSDT" / "4h" / "2024" / "06").iterdir().__next__().unlink()

    def progress(items, **_):
        with contextlib.suppress(FileNotFoundError):
            os.unlink("image_cache.sqlite")
        return items

    settings = config.load("image_cache.toml")
    run = (partial(verify.verify, deep=True) if command == "verify"
           else partial(verify.repair, reindex=command.endswith("--reindex")))
    with pytest.raises(IndexFileError, match="^image index image_cache.sqlite was deleted or replaced while "
                                             "this run wrote to it: the rows of this run are lost"):
        run(settings, progress=progress)
