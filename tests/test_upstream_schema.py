"""A market.sqlite written by the upstream pipeline (its four tables, WAL, no user_version) is read and extended."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from binance_fixtures import kline_csv, kline_rows, write_archive
from image_cache.core.grid import utc_ms
from image_cache.ingest.binance_vision import ingest_paths
from image_cache.ingest.schema import SCHEMA_VERSION
from image_cache.ingest.status import status

# The upstream DDL, as the upstream crypto-sqlite-pipeline writes it: no known_gaps, no registry, no user_version.
UPSTREAM_DDL = """
CREATE TABLE symbols (id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT NOT NULL UNIQUE,
                      base_asset TEXT NOT NULL, quote_asset TEXT NOT NULL);
CREATE TABLE intervals (id INTEGER PRIMARY KEY AUTOINCREMENT, code TEXT NOT NULL UNIQUE, ms INTEGER NOT NULL);
CREATE TABLE series (id INTEGER PRIMARY KEY AUTOINCREMENT, symbol_id INTEGER NOT NULL REFERENCES symbols(id),
                     interval_id INTEGER NOT NULL REFERENCES intervals(id), UNIQUE(symbol_id, interval_id));
CREATE TABLE candles (series_id INTEGER NOT NULL REFERENCES series(id), open_time INTEGER NOT NULL,
                      open REAL NOT NULL, high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL,
                      volume REAL NOT NULL, quote_asset_volume REAL NOT NULL, trades INTEGER NOT NULL,
                      taker_buy_base_volume REAL NOT NULL, taker_buy_quote_volume REAL NOT NULL,
                      PRIMARY KEY (series_id, open_time));
"""


def upstream_market(path: Path) -> None:
    """BTCUSDT 1h with the first 12 hours of 2024-01-15 (ids chosen so they are not 1)."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(UPSTREAM_DDL)
    with conn:
        conn.execute("INSERT INTO symbols VALUES (7, 'BTCUSDT', 'BTC', 'USDT')")
        conn.execute("INSERT INTO intervals VALUES (3, '1h', 3600000)")
        conn.execute("INSERT INTO series VALUES (5, 7, 3)")
        for row in kline_rows("1h", "2024-01-15", 12):
            values = [float(v) for v in row]
            conn.execute("INSERT INTO candles VALUES (5, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (int(row[0]), *values[1:6], *values[7:8], int(row[8]), *values[9:11]))
        # The upstream writer's copy of 11:00 differs from the archive's: a revision.
        conn.execute("UPDATE candles SET close = 111.25 WHERE open_time = ?", (utc_ms("2024-01-15T11:00"),))
    conn.close()


def test_upstream_database_is_read_and_extended(tmp_path: Path) -> None:
    db = tmp_path / "market.sqlite"
    upstream_market(db)
    assert status(str(db)).series[0].candles == 12  # readable before ingest touches it

    write_archive(tmp_path / "m", "BTCUSDT-1h-2024-01-15.zip", kline_csv(kline_rows("1h", "2024-01-15", 24)))
    result = ingest_paths(str(db), [str(tmp_path / "m")])
    outcome = result.files[0]
    assert (outcome.status, outcome.rows_inserted, outcome.rows_revised) == ("ok", 12, 1)

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT id, symbol_id, interval_id FROM series").fetchall() == [(5, 7, 3)]
        assert conn.execute("SELECT COUNT(*), MIN(open_time), MAX(open_time) FROM candles WHERE series_id = 5"
                            ).fetchone() == (24, utc_ms("2024-01-15"), utc_ms("2024-01-15T23:00"))
        assert conn.execute("SELECT close FROM candles WHERE open_time = ?",
                            (utc_ms("2024-01-15T11:00"),)).fetchone() == (110.5,)
        assert conn.execute("SELECT DISTINCT typeof(open_time), typeof(trades) FROM candles").fetchall() == [
            ("integer", "integer")]
        assert conn.execute("SELECT COUNT(*) FROM ingested_files").fetchone() == (1,)


def test_status_of_a_pure_upstream_database(tmp_path: Path) -> None:
    db = tmp_path / "market.sqlite"
    upstream_market(db)
    result = status(str(db), failures=True)
    assert [(s.symbol, s.interval, s.candles, s.gaps) for s in result.series] == [("BTCUSDT", "1h", 12, 0)]
    assert result.files == {"ok": 0, "unverified": 0, "skipped": 0, "rejected": 0} and result.failures == []
    with sqlite3.connect(db) as conn:  # status is read-only: no migration happened
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 0
