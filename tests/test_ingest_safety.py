"""Ingest never answers bad surroundings with a traceback, a hang, a lost file or unbounded memory.

`--db` naming something that is not a market, a full disk when the lock is written, a folder of
zips with hostile members among valid ones, named pipes, and inputs sized to exhaust memory:
each ends in a one-line error or a correct result, and the files around are left as they were.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import zipfile
from pathlib import Path

import pytest

from bench.ingest_memory import peak_rss
from binance_fixtures import checksum_text, kline_csv, kline_rows, write_archive, zip_bytes
from conftest import run_cli
from image_cache.ingest.binance_vision import MAX_MEMBER_BYTES, WHOLE_MEMBER_BYTES

GOOD_CSV = b"open_time,open,high,low,close,volume\n1705276800000,1,2,0.5,1.5,10\n"


def cli(cwd: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """`python -m ingest ARGS` in this process, through the command line's `main(argv)`."""
    return run_cli(cwd, *args, module="ingest", timeout=timeout)


def peak_rss_mb(cwd: Path, *args: str) -> tuple[int, float, str]:
    """Exit code, peak resident memory (MB) and output of `python -m ingest ARGS` (the kernel's high-water mark)."""
    rc, peak, _, output = peak_rss(list(args), cwd)
    return rc, peak, output


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
    run = cli(tmp_path, args[0], "--market-db", str(db), *args[1:])
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
    run = cli(tmp_path, "sample", "--market-db", str(db), "--symbols", "BTCUSDT", "--days", "1")
    assert reason in one_line_error(run)


@pytest.mark.parametrize("db", ["", ":memory:"])
def test_a_db_path_sqlite_would_make_a_throwaway_database_of_is_refused(tmp_path: Path, db: str) -> None:
    args = COMMANDS["binance-vision"](tmp_path)
    before = _snapshot(tmp_path)
    run = cli(tmp_path, args[0], "--market-db", db, *args[1:])
    assert one_line_error(run) == f"Error: {db!r} names no market database file"
    assert _snapshot(tmp_path) == before


def test_a_market_path_with_hash_and_question_mark_is_read_as_named(tmp_path: Path) -> None:
    """status opens the market read-only by URI: an unquoted `#` or `?` would open (create) another file."""
    db = tmp_path / "a#b?c.sqlite"
    assert cli(tmp_path, "sample", "--market-db", str(db), "--symbols", "BTCUSDT", "--days", "1").returncode == 0
    before = set(os.listdir(tmp_path))
    run = cli(tmp_path, "status", "--market-db", str(db))
    assert run.returncode == 0, run.stderr
    assert "BTCUSDT" in run.stdout
    # No empty file "a" made of the path cut at `#` (the read-only open may add its -shm and -wal).
    assert set(os.listdir(tmp_path)) - before <= {db.name + "-shm", db.name + "-wal"}


def _foreign_market(db: Path, sql: str) -> None:
    """A market written by another tool: our four core tables, one series, then `sql`."""
    from image_cache.ingest.schema import CORE_DDL
    with sqlite3.connect(db) as conn:
        conn.executescript(CORE_DDL + """
            INSERT INTO symbols(symbol, base_asset, quote_asset) VALUES ('BTCUSDT', 'BTC', 'USDT');
            INSERT INTO intervals(code, ms) VALUES ('1h', 3600000);
            INSERT INTO series(symbol_id, interval_id) VALUES (1, 1);""" + sql)


def test_text_in_a_foreign_market_rejects_that_file_and_the_others_go_in(tmp_path: Path) -> None:
    db = tmp_path / "market.sqlite"
    _foreign_market(db, "INSERT INTO candles VALUES (1, 1705276800000, 'abc', 1, 1, 1, 1, 1, 1, 1, 1);")
    folder = tmp_path / "in"
    write_archive(folder, "BTCUSDT-1h-2024-01-15.zip", kline_csv(kline_rows("1h", "2024-01-15", 24)))
    write_archive(folder, "ETHUSDT-1h-2024-01-15.zip", kline_csv(kline_rows("1h", "2024-01-15", 24)))
    run = cli(tmp_path, "binance-vision", "--market-db", str(db), str(folder))
    assert run.returncode == 1 and run.stderr == "", run.stderr
    assert run.stdout.splitlines()[0] == (
        "rejected: market database: candle of series 1 at open_time 1705276800000 holds a value that is not a "
        "number; fix or remove it to ingest into this series")
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT file_name, status FROM ingested_files ORDER BY id").fetchall() == [
            ("BTCUSDT-1h-2024-01-15.zip", "rejected"), ("ETHUSDT-1h-2024-01-15.zip", "ok")]
        counts = conn.execute("SELECT series_id, COUNT(*) FROM candles GROUP BY series_id").fetchall()
        assert counts == [(1, 1), (2, 24)]


def test_an_sqlite_error_while_writing_is_one_line(tmp_path: Path) -> None:
    db = tmp_path / "market.sqlite"
    _foreign_market(db, "CREATE TRIGGER veto BEFORE INSERT ON candles BEGIN SELECT RAISE(ABORT, 'vetoed'); END;")
    args = COMMANDS["binance-vision"](tmp_path)
    assert one_line_error(cli(tmp_path, args[0], "--market-db", str(db), *args[1:])) == f"Error: {db}: vetoed"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM candles").fetchone()[0] == 0


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
    run = cli(tmp_path, args[0], "--market-db", str(full_disk / "market.sqlite"), *args[1:])
    assert one_line_error(run) == (f"Error: cannot write lock file {full_disk / 'market.sqlite.lock'}: "
                                   "disk full (No space left on device)")


def test_a_disk_too_full_for_the_database_is_one_line(tmp_path: Path, full_disk: Path) -> None:
    (full_disk / "filler").write_bytes(b"\0" * 40960)  # room for the lock file, not for the database
    args = COMMANDS["binance-vision"](tmp_path)
    run = cli(tmp_path, args[0], "--market-db", str(full_disk / "market.sqlite"), *args[1:])
    # SQLite tells a full tmpfs as "disk I/O error" (its shared-memory file cannot grow).
    assert one_line_error(run).startswith(f"Error: {full_disk / 'market.sqlite'}: cannot open market database: ")


# ---------------------------------------------------------------------------------------- folders and pipes

def _encrypted(blob: bytes) -> bytes:
    patched = bytearray(blob)
    patched[6] |= 1
    central = patched.rfind(b"PK\x01\x02")
    patched[central + 8] |= 1
    return bytes(patched)


def test_hostile_members_in_a_folder_do_not_stop_the_valid_files(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    day = lambda d: kline_csv(kline_rows("1h", d, 24))  # noqa: E731
    write_archive(folder, "BTCUSDT-1h-2024-01-14.zip", day("2024-01-14"))
    encrypted = _encrypted(zip_bytes({"BTCUSDT-1h-2024-01-15.csv": day("2024-01-15")}))
    (folder / "BTCUSDT-1h-2024-01-15.zip").write_bytes(encrypted)
    (folder / "BTCUSDT-1h-2024-01-15.zip.CHECKSUM").write_text(checksum_text(encrypted, "BTCUSDT-1h-2024-01-15.zip"))
    os.mkfifo(folder / "BTCUSDT-1h-2024-01-16.zip")
    write_archive(folder, "BTCUSDT-1h-2024-01-17.zip", day("2024-01-17"), checksum=None)
    (folder / "BTCUSDT-1h-2024-01-17.zip.CHECKSUM").mkdir()
    write_archive(folder, "BTCUSDT-1h-2024-01-18.zip", day("2024-01-18"))
    db = tmp_path / "market.sqlite"
    run = cli(tmp_path, "binance-vision", "--market-db", str(db), str(folder))
    assert run.returncode == 1 and run.stderr == "", run.stderr
    assert run.stdout.splitlines()[:3] == [
        "rejected: BTCUSDT-1h-2024-01-15.zip: zip: member 'BTCUSDT-1h-2024-01-15.csv' is encrypted",
        "rejected: BTCUSDT-1h-2024-01-16.zip: not a regular file: a named pipe; only regular files are read",
        "rejected: BTCUSDT-1h-2024-01-17.zip: checksum: BTCUSDT-1h-2024-01-17.zip.CHECKSUM: not a regular file: "
        "a directory; only regular files are read"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT file_name, status FROM ingested_files ORDER BY id").fetchall() == [
            ("BTCUSDT-1h-2024-01-14.zip", "ok"), ("BTCUSDT-1h-2024-01-15.zip", "rejected"),
            ("BTCUSDT-1h-2024-01-16.zip", "rejected"), ("BTCUSDT-1h-2024-01-17.zip", "rejected"),
            ("BTCUSDT-1h-2024-01-18.zip", "ok")]
        assert conn.execute("SELECT COUNT(*) FROM candles").fetchone()[0] == 48


def test_a_csv_that_is_a_named_pipe_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "prices.csv")
    run = cli(tmp_path, "csv", str(tmp_path / "prices.csv"), "--symbol", "BTCUSDT", "--interval", "1h", timeout=30)
    assert one_line_error(run) == (f"Error: {tmp_path / 'prices.csv'}: not a regular file: a named pipe; "
                                   "only regular files are read")


# ---------------------------------------------------------------------------------------- memory

MEMORY_TARGET_MB = 300


@pytest.mark.slow  # a process of its own: its peak memory is the subject
def test_a_huge_file_that_is_not_a_zip_is_refused_from_its_first_bytes(tmp_path: Path) -> None:
    """A 4 GB file (sparse: it costs no disk) is refused without being read into memory."""
    path = tmp_path / "BTCUSDT-1h-2024-01-15.zip"
    with open(path, "wb") as f:
        f.write(b"1705276800000,")
        f.truncate(4 * 2**30)
    rc, peak, output = peak_rss_mb(tmp_path, "binance-vision", "--market-db", str(tmp_path / "m.sqlite"), str(path))
    assert rc == 1 and "zip: not a zip archive (starts with b'1705')" in output, output
    assert peak < MEMORY_TARGET_MB, f"peak RSS {peak:.0f} MB"


@pytest.mark.slow  # a process of its own: its peak memory is the subject
def test_a_small_zip_holding_a_huge_member_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """1 GiB + 1 MiB of one repeated row compress to ~2 MB; the member is refused, never held whole."""
    row = b"1705276800000,1,1,1,1,0,1705276803599999,0,0,0,0,0\n"
    path = tmp_path / "BTCUSDT-1h-2024-01-15.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, \
            archive.open("BTCUSDT-1h-2024-01-15.csv", "w", force_zip64=True) as member:
        block = row * (2**20 // len(row))
        for _ in range(MAX_MEMBER_BYTES // 2**20 + 1):
            member.write(block)
    rc, peak, output = peak_rss_mb(tmp_path, "binance-vision", "--market-db", str(tmp_path / "m.sqlite"), str(path))
    assert rc == 1 and f"is larger than {MAX_MEMBER_BYTES} bytes uncompressed" in output, output
    assert peak < MEMORY_TARGET_MB, f"peak RSS {peak:.0f} MB"


@pytest.mark.slow  # a process of its own: its peak memory is the subject
def test_a_member_past_the_whole_parse_size_streams_in_bounded_memory(tmp_path: Path) -> None:
    """The worst case per byte: the shortest valid kline rows, 1.25x what is parsed whole (streamed)."""
    start = 1704067200000  # 2024-01-01, a monthly 1s file
    row = lambda t: f"{t},1,1,1,1,0,{t + 999},0,0,0,0,0\n".encode()  # noqa: E731
    count = WHOLE_MEMBER_BYTES * 5 // 4 // len(row(start))
    path = tmp_path / "BTCUSDT-1s-2024-01.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("BTCUSDT-1s-2024-01.csv", "w") as member:
        for first in range(0, count, 100_000):
            member.write(b"".join(row(start + i * 1000) for i in range(first, min(count, first + 100_000))))
    rc, peak, output = peak_rss_mb(tmp_path, "binance-vision", "--market-db", str(tmp_path / "m.sqlite"), str(path))
    assert rc == 0 and f"rows: {count} inserted" in output, output
    assert peak < MEMORY_TARGET_MB, f"peak RSS {peak:.0f} MB"
