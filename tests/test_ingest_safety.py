"""Ingest never answers bad surroundings with a traceback or a lost file.

`--db` naming something that is not a market and a full disk when the lock is written each end in
a one-line error, and the files around are left as they were.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
GOOD_CSV = b"open_time,open,high,low,close,volume\n1705276800000,1,2,0.5,1.5,10\n"


def cli(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def one_line_error(run: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in run.stderr, run.stderr
    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), run.stderr
    return lines[0]


# ---------------------------------------------------------------------------------------- --db

def _not_a_market(tmp_path: Path, kind: str) -> Path:
    if kind == "text-file":
        (tmp_path / "notes.txt").write_text("my notes\n")
        return tmp_path / "notes.txt"
    if kind == "directory":
        (tmp_path / "folder").mkdir()
        return tmp_path / "folder"
    if kind == "other-sqlite":
        with sqlite3.connect(tmp_path / "other.sqlite") as conn:
            conn.execute("CREATE TABLE images (path TEXT)")
        return tmp_path / "other.sqlite"
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "market.sqlite"  # its parent is a file


def _snapshot(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): p.read_bytes() if p.is_file() else None for p in sorted(folder.rglob("*"))}


COMMANDS = {
    "binance-vision": lambda d: ["binance-vision", str(write_archive(d / "in", "BTCUSDT-1h-2024-01-15.zip",
                                                                     kline_csv(kline_rows("1h", "2024-01-15", 24))))],
    "csv": lambda d: ((d / "in").mkdir(), (d / "in" / "p.csv").write_bytes(GOOD_CSV),
                      ["csv", str(d / "in" / "p.csv"), "--symbol", "BTCUSDT", "--interval", "1h"])[-1],
    "sample": lambda d: ["sample", "--symbols", "BTCUSDT", "--days", "1"],
    "resample": lambda d: ["resample", "--from", "1h", "--to", "4h"],
    "gaps": lambda d: ["gaps"],
    "status": lambda d: ["status"],
}


@pytest.mark.parametrize("kind", ["text-file", "directory", "other-sqlite", "parent-is-a-file"])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_db_that_is_not_a_market_is_refused_untouched(tmp_path: Path, command: str, kind: str) -> None:
    db = _not_a_market(tmp_path, kind)
    args = COMMANDS[command](tmp_path)
    before = _snapshot(tmp_path)
    run = cli(tmp_path, args[0], "--db", str(db), *args[1:])
    message = one_line_error(run)
    assert str(db) in message or db.name in message, message
    assert _snapshot(tmp_path) == before  # the file untouched, no lock file left next to it


@pytest.mark.parametrize("kind, reason", [
    ("text-file", "not a market database: not an SQLite file (it starts with b'my notes')"),
    ("directory", "not a market database: not a regular file"),
    ("other-sqlite", "not a market database: an SQLite file without a candles table (tables: images)"),
    ("parent-is-a-file", "Not a directory"),
])
def test_the_db_refusal_says_why(tmp_path: Path, kind: str, reason: str) -> None:
    db = _not_a_market(tmp_path, kind)
    run = cli(tmp_path, "sample", "--db", str(db), "--symbols", "BTCUSDT", "--days", "1")
    assert reason in one_line_error(run)


def test_a_market_path_with_hash_and_question_mark_is_read_as_named(tmp_path: Path) -> None:
    """status opens the market read-only by URI: an unquoted `#` or `?` would open (create) another file."""
    db = tmp_path / "a#b?c.sqlite"
    assert cli(tmp_path, "sample", "--db", str(db), "--symbols", "BTCUSDT", "--days", "1").returncode == 0
    before = set(os.listdir(tmp_path))
    run = cli(tmp_path, "status", "--db", str(db))
    assert run.returncode == 0, run.stderr
    assert "BTCUSDT" in run.stdout
    # No empty file "a" made of the path cut at `#` (the read-only open may add its -shm and -wal).
    assert set(os.listdir(tmp_path)) - before <= {db.name + "-shm", db.name + "-wal"}


# ---------------------------------------------------------------------------------------- full disk

@pytest.fixture
def full_disk(tmp_path: Path):
    """A 64 KiB tmpfs, filled up."""
    root = tmp_path / "full"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(root)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        subprocess.run(["dd", "if=/dev/zero", f"of={root / 'filler'}", "bs=4k"], capture_output=True)
        yield root
    finally:
        subprocess.run(["umount", str(root)], check=True)


def test_a_full_disk_when_the_lock_is_written_is_one_line(tmp_path: Path, full_disk: Path) -> None:
    args = COMMANDS["binance-vision"](tmp_path)
    run = cli(tmp_path, args[0], "--db", str(full_disk / "market.sqlite"), *args[1:])
    assert one_line_error(run) == (f"Error: cannot write lock file {full_disk / 'market.sqlite.lock'}: "
                                   "disk full (No space left on device)")


def test_a_disk_too_full_for_the_database_is_one_line(tmp_path: Path, full_disk: Path) -> None:
    (full_disk / "filler").write_bytes(b"\0" * 40960)  # room for the lock file, not for the database
    args = COMMANDS["binance-vision"](tmp_path)
    run = cli(tmp_path, args[0], "--db", str(full_disk / "market.sqlite"), *args[1:])
    # SQLite tells a full tmpfs as "disk I/O error" (its shared-memory file cannot grow).
    assert one_line_error(run).startswith(f"Error: {full_disk / 'market.sqlite'}: cannot open market database: ")
