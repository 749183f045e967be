"""Binance Vision zips into a real market.sqlite: names, checksums, zip rules, skips, revisions, the CLI."""

from __future__ import annotations

import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive, zip_bytes
from image_cache.core.db import writer_lock
from image_cache.core.errors import LockHeld, MarketError
from image_cache.core.grid import utc_ms
from image_cache.ingest.binance_vision import ingest_paths, parse_name, read_member
from image_cache.ingest.schema import read_candles

REPO = Path(__file__).resolve().parents[1]


def day_zip(directory: Path, day: str = "2024-01-15", *, symbol: str = "BTCUSDT", unit: str = "ms",
            checksum: str | None = "good", rows: list[list[str]] | None = None) -> Path:
    rows = kline_rows("1h", day, 24, unit=unit) if rows is None else rows
    return write_archive(directory, f"{symbol}-1h-{day}.zip", kline_csv(rows), checksum=checksum)


def registry(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT file_name, status, rows_read, rows_inserted, rows_revised, reason "
                            "FROM ingested_files ORDER BY id").fetchall()


def candles(db: Path, symbol: str = "BTCUSDT", interval: str = "1h"):
    with sqlite3.connect(db) as conn:
        sid = conn.execute("""SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id
                              JOIN intervals i ON i.id = se.interval_id WHERE s.symbol = ? AND i.code = ?""",
                           (symbol, interval)).fetchone()[0]
        return read_candles(conn, sid)


# ---------------------------------------------------------------------------------------- names

@pytest.mark.parametrize("name, expected", [
    ("BTCUSDT-1m-2024-01.zip", ("BTCUSDT", "1m", "2024-01", "2024-01-01", "2024-02-01")),
    ("BTCUSDT-1h-2024-01-15.zip", ("BTCUSDT", "1h", "2024-01-15", "2024-01-15", "2024-01-16")),
    ("BTCUSD_PERP-1d-2024-12.zip", ("BTCUSD_PERP", "1d", "2024-12", "2024-12-01", "2025-01-01")),
    ("ETHUSDT-1mo-2023-02.zip", ("ETHUSDT", "1mo", "2023-02", "2023-02-01", "2023-03-01")),
])
def test_file_names(name: str, expected: tuple) -> None:
    parsed = parse_name(name)
    symbol, interval, period, start, end = expected
    assert (parsed.symbol, parsed.interval, parsed.period, parsed.start_ms, parsed.end_ms) == \
        (symbol, interval, period, utc_ms(start), utc_ms(end))


@pytest.mark.parametrize("name, message", [
    ("BTCUSDT-7m-2024-01.zip", "unknown interval code '7m'"),
    ("btcusdt-1m-2024-01.zip", "invalid symbol 'btcusdt'"),
    ("BTCUSDT-1m-2024-13.zip", "invalid date '2024-13'"),
    ("BTCUSDT-1m-2024-02-30.zip", "invalid date '2024-02-30'"),
    ("BTCUSDT_1m_2024-01.zip", "expected SYMBOL-INTERVAL-YYYY-MM[-DD].zip"),
])
def test_bad_file_names(name: str, message: str) -> None:
    with pytest.raises(MarketError, match=re.escape(message)) as info:
        parse_name(name)
    assert str(info.value).startswith(f"{name}: file name: ")


# ---------------------------------------------------------------------------------------- zips

def test_zip_member_rules() -> None:
    csv = kline_csv(kline_rows("1h", "2024-01-15", 2))
    assert read_member("a.zip", zip_bytes({"a.csv": csv})) == csv
    cases = [
        (zip_bytes({"a.csv": csv, "b.csv": csv}), "expected exactly one CSV member, found 2"),
        (zip_bytes({}), "expected exactly one CSV member, found 0"),
        (zip_bytes({"../a.csv": csv}), "member name '../a.csv' contains a path"),
        (zip_bytes({"dir/a.csv": csv}), "member name 'dir/a.csv' contains a path"),
        (zip_bytes({"a.txt": csv}), "member 'a.txt' is not a .csv file"),
        (zip_bytes({"a.csv": b"0" * 5000}), "member 'a.csv' is larger than 4096 bytes uncompressed"),
        (zip_bytes({"a.csv": csv})[:-30], "corrupt or unsupported archive"),
        (b"not a zip", "corrupt or unsupported archive"),
    ]
    for blob, message in cases:
        with pytest.raises(MarketError) as info:
            read_member("a.zip", blob, max_bytes=4096)
        assert str(info.value).startswith("a.zip: zip: ") and message in str(info.value), str(info.value)


def test_a_zip_bomb_is_rejected_without_extracting(tmp_path: Path) -> None:
    # 8 MB of zeros compress to ~8 KB; with a 1 MB cap the member is refused.
    write_archive(tmp_path / "m", "BTCUSDT-1h-2024-01-15.zip", b"0" * (8 * 2**20))
    result = ingest_paths(str(tmp_path / "db.sqlite"), [str(tmp_path / "m")], max_member_bytes=2**20)
    assert [(f.status, f.reason) for f in result.files] == [
        ("rejected", "BTCUSDT-1h-2024-01-15.zip: zip: member 'BTCUSDT-1h-2024-01-15.csv' is larger than "
                     "1048576 bytes uncompressed")]
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["BTCUSDT-1h-2024-01-15.zip",
                                                                 "BTCUSDT-1h-2024-01-15.zip.CHECKSUM"]


# ---------------------------------------------------------------------------------------- ingest

def test_ingest_writes_candles_registry_and_empties_the_wal(tmp_path: Path) -> None:
    mirror = tmp_path / "data" / "spot" / "daily" / "klines" / "BTCUSDT" / "1h"
    day_zip(mirror)
    db = tmp_path / "market.sqlite"
    result = ingest_paths(str(db), [str(tmp_path / "data")])
    assert result.ok and result.totals()["rows_inserted"] == 24
    rows = candles(db)
    assert rows["open_time"][0] == utc_ms("2024-01-15") and rows["open_time"][-1] == utc_ms("2024-01-15T23:00")
    assert registry(db) == [("BTCUSDT-1h-2024-01-15.zip", "ok", 24, 24, 0, None)]
    assert not Path(str(db) + "-wal").exists() or Path(str(db) + "-wal").stat().st_size == 0
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_reingest_same_bytes_is_skipped(tmp_path: Path) -> None:
    day_zip(tmp_path / "m")
    db = str(tmp_path / "market.sqlite")
    ingest_paths(db, [str(tmp_path / "m")])
    again = ingest_paths(db, [str(tmp_path / "m")])
    assert [f.status for f in again.files] == ["skipped"] and again.totals()["rows_inserted"] == 0
    assert [r[1] for r in registry(Path(db))] == ["ok", "skipped"]


def test_a_reissued_file_counts_revised_rows(tmp_path: Path) -> None:
    db = str(tmp_path / "market.sqlite")
    rows = kline_rows("1h", "2024-01-15", 24)
    day_zip(tmp_path / "v1", rows=rows[:20])  # truncated day, later re-uploaded complete with one fix
    ingest_paths(db, [str(tmp_path / "v1")])
    rows[3][4] = "103.25000000"
    day_zip(tmp_path / "v2", rows=rows)
    result = ingest_paths(db, [str(tmp_path / "v2")])
    outcome = result.files[0]
    assert (outcome.status, outcome.rows_inserted, outcome.rows_revised) == ("ok", 4, 1)
    stored = candles(Path(db))
    assert len(stored) == 24 and stored["close"][3] == 103.25


def test_microsecond_and_millisecond_files_of_one_series(tmp_path: Path) -> None:
    day_zip(tmp_path / "m", "2024-12-31")
    day_zip(tmp_path / "m", "2025-01-01", unit="us")
    db = tmp_path / "market.sqlite"
    result = ingest_paths(str(db), [str(tmp_path / "m")])
    assert [f.time_unit for f in result.files] == ["ms", "us"]
    times = candles(db)["open_time"]
    assert len(times) == 48 and (times[1:] - times[:-1] == 3_600_000).all()
    assert times[24] == utc_ms("2025-01-01")


def test_checksum_mismatch_rejects_and_the_others_are_ingested(tmp_path: Path) -> None:
    day_zip(tmp_path / "m", "2024-01-15", checksum="wrong")
    day_zip(tmp_path / "m", "2024-01-16")
    db = tmp_path / "market.sqlite"
    result = ingest_paths(str(db), [str(tmp_path / "m")])
    assert not result.ok
    assert [f.status for f in result.files] == ["rejected", "ok"]
    assert "checksum: mismatch, file SHA-256" in result.files[0].reason
    assert candles(db)["open_time"][0] == utc_ms("2024-01-16")


def test_missing_checksum_is_unverified_or_rejected_on_request(tmp_path: Path) -> None:
    day_zip(tmp_path / "m", checksum=None)
    warnings: list[str] = []
    strict = ingest_paths(str(tmp_path / "a.sqlite"), [str(tmp_path / "m")], require_checksum=True)
    assert [(f.status, f.reason) for f in strict.files] == [
        ("rejected", "BTCUSDT-1h-2024-01-15.zip: checksum: no .CHECKSUM file (--require-checksum)")]
    lenient = ingest_paths(str(tmp_path / "b.sqlite"), [str(tmp_path / "m")], warn=warnings.append)
    assert lenient.ok and [f.status for f in lenient.files] == ["unverified"]
    assert warnings == ["BTCUSDT-1h-2024-01-15.zip: no .CHECKSUM file; ingesting it as unverified"]
    # Once a checksum turns up, the same bytes are verified and recorded ok; after that, skipped.
    zip_path = tmp_path / "m" / "BTCUSDT-1h-2024-01-15.zip"
    day_zip(tmp_path / "m")
    assert zip_path.with_name(zip_path.name + ".CHECKSUM").exists()
    statuses = [ingest_paths(str(tmp_path / "b.sqlite"), [str(zip_path)]).files[0].status for _ in range(2)]
    assert statuses == ["ok", "skipped"]


def test_a_rejected_file_writes_no_candle(tmp_path: Path) -> None:
    rows = kline_rows("1h", "2024-01-15", 24)
    rows[23][5] = "-1"
    day_zip(tmp_path / "m", rows=rows)
    db = tmp_path / "market.sqlite"
    result = ingest_paths(str(db), [str(tmp_path / "m")])
    assert result.files[0].reason == "BTCUSDT-1h-2024-01-15.zip: line 24: volume >= 0: volume is -1.0"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM candles").fetchone()[0] == 0


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MarketError, match="no such file or directory"):
        ingest_paths(str(tmp_path / "db.sqlite"), [str(tmp_path / "nope")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(MarketError, match="no .zip files found"):
        ingest_paths(str(tmp_path / "db.sqlite"), [str(tmp_path / "empty")])


def test_the_writer_lock_is_honoured(tmp_path: Path) -> None:
    day_zip(tmp_path / "m")
    db = str(tmp_path / "market.sqlite")
    with writer_lock(db, "test holder", 0):
        with pytest.raises(LockHeld, match="locked by another run .*test holder"):
            ingest_paths(db, [str(tmp_path / "m")], lock_wait=0.1)


# ---------------------------------------------------------------------------------------- CLI

def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=60)


def test_cli_summary_and_exit_codes(tmp_path: Path) -> None:
    day_zip(tmp_path / "m", "2024-01-15")
    day_zip(tmp_path / "m", "2024-01-16", checksum="wrong")
    db = str(tmp_path / "market.sqlite")
    run = cli("binance-vision", "--market-db", db, str(tmp_path / "m"))
    assert run.returncode == 1, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith("rejected: BTCUSDT-1h-2024-01-16.zip: checksum: mismatch")
    assert lines[1].startswith("files: 1 ok, 0 skipped, 1 rejected, 0 unverified; rows: 24 inserted, 0 revised, "
                               "0 dropped; 0 flagged; ")
    again = cli("binance-vision", "--market-db", db, str(tmp_path / "m" / "BTCUSDT-1h-2024-01-15.zip"))
    assert again.returncode == 0 and again.stdout.startswith("files: 0 ok, 1 skipped, 0 rejected")


def test_cli_error_is_one_line(tmp_path: Path) -> None:
    run = cli("binance-vision", "--market-db", str(tmp_path / "market.sqlite"), str(tmp_path / "nope"))
    assert run.returncode == 1
    assert run.stderr == f"Error: no such file or directory: {tmp_path / 'nope'}\n" and run.stdout == ""


def test_copies_within_one_run(tmp_path: Path) -> None:
    bad = kline_rows("1h", "2024-01-16", 24)
    bad[5][8] = "-1"
    for copy in ("a", "b"):
        day_zip(tmp_path / copy, "2024-01-15")
        day_zip(tmp_path / copy, "2024-01-16", rows=bad)
    result = ingest_paths(str(tmp_path / "market.sqlite"), [str(tmp_path / "a"), str(tmp_path / "b")])
    assert [(f.file_name, f.status) for f in result.files] == [
        ("BTCUSDT-1h-2024-01-15.zip", "ok"), ("BTCUSDT-1h-2024-01-16.zip", "rejected"),
        ("BTCUSDT-1h-2024-01-15.zip", "skipped"), ("BTCUSDT-1h-2024-01-16.zip", "rejected")]


def test_progress_over_files_and_json_result(tmp_path: Path) -> None:
    day_zip(tmp_path / "m", "2024-01-15")
    day_zip(tmp_path / "m", "2024-01-16")
    calls: list[tuple] = []

    def progress(items, total=None, desc="", unit="it"):
        calls.append((total, desc, unit))
        return items

    result = ingest_paths(str(tmp_path / "market.sqlite"), [str(tmp_path / "m")], progress=progress)
    assert calls == [(2, "ingest", "file")]
    data = result.as_dict()
    assert data["ok"] is True and data["files"] == {"ok": 2, "skipped": 0, "rejected": 0, "unverified": 0}
    assert data["rows_inserted"] == 48 and [f["period"] for f in data["file_outcomes"]] == ["2024-01-15", "2024-01-16"]
