"""market.sqlite: its tables, migrations, the writer connection, and candle reads and upserts.

The four core tables match the upstream crypto-sqlite-pipeline schema, so a database that project
wrote can be read and extended. The renderer reads them through cache/market.py.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from image_cache.core import revisions
from image_cache.core.db import check_sqlite_file, checkpoint, writer_lock
from image_cache.core.errors import MarketError, os_error_message
from image_cache.core.grid import INTERVAL_MS, check_interval, check_symbol, split_symbol
from image_cache.ingest.venues import VENUES_DDL, Venue, claim, migrate_venues

CANDLE_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "quote_asset_volume",
                  "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
CANDLE_DTYPE = np.dtype([(name, np.int64 if name in ("open_time", "trades") else np.float64)
                         for name in CANDLE_COLUMNS])

SCHEMA_VERSION = 3
# Rows converted between SQLite and numpy at a time: bounds the memory of a large file's read or write.
_ROWS_PER_BATCH = 2**16


# ---------------------------------------------------------------------------------------- DDL

CORE_DDL = """
CREATE TABLE IF NOT EXISTS symbols (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol TEXT NOT NULL UNIQUE,
    base_asset TEXT NOT NULL,
    quote_asset TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS intervals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    code TEXT NOT NULL UNIQUE,
    ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol_id INTEGER NOT NULL REFERENCES symbols(id),
    interval_id INTEGER NOT NULL REFERENCES intervals(id),
    UNIQUE(symbol_id, interval_id)
);
CREATE TABLE IF NOT EXISTS candles (
    series_id INTEGER NOT NULL REFERENCES series(id),
    open_time INTEGER NOT NULL,
    open REAL NOT NULL,
    high REAL NOT NULL,
    low REAL NOT NULL,
    close REAL NOT NULL,
    volume REAL NOT NULL,
    quote_asset_volume REAL NOT NULL,
    trades INTEGER NOT NULL,
    taker_buy_base_volume REAL NOT NULL,
    taker_buy_quote_volume REAL NOT NULL,
    PRIMARY KEY (series_id, open_time)
);
CREATE TABLE IF NOT EXISTS known_gaps (
    series_id INTEGER NOT NULL REFERENCES series(id),
    start_open_time INTEGER NOT NULL,
    end_open_time INTEGER NOT NULL,
    PRIMARY KEY (series_id, start_open_time)
);
"""

# ingest's own tables: the registry of every input file and what became of it.
INGEST_DDL = """
CREATE TABLE IF NOT EXISTS ingested_files (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL,
    file_name TEXT NOT NULL,
    sha256 TEXT,
    size_bytes INTEGER,
    source TEXT NOT NULL,
    symbol TEXT,
    interval TEXT,
    period TEXT,
    status TEXT NOT NULL CHECK (status IN ('ok', 'unverified', 'skipped', 'rejected')),
    reason TEXT,
    rows_read INTEGER NOT NULL DEFAULT 0,
    rows_inserted INTEGER NOT NULL DEFAULT 0,
    rows_revised INTEGER NOT NULL DEFAULT 0,
    rows_dropped INTEGER NOT NULL DEFAULT 0,
    rows_flagged INTEGER NOT NULL DEFAULT 0,
    ingested_utc TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ingested_files_sha256 ON ingested_files(sha256);
CREATE INDEX IF NOT EXISTS ingested_files_name ON ingested_files(file_name);
"""

# 2: rows a re-issued file no longer holds are withdrawn and counted; known_gaps is kept current by
# every write from now on, so it is computed once here for the series written before.
# 3: the venue (exchange + market) of every series (ingest/venues.py); the series written before are
# Binance spot, as they were fetched.
MIGRATIONS = {1: CORE_DDL + INGEST_DDL,
              2: "ALTER TABLE ingested_files ADD COLUMN rows_withdrawn INTEGER NOT NULL DEFAULT 0;",
              3: VENUES_DDL}


def _all_gaps(conn: sqlite3.Connection) -> None:
    from image_cache.ingest.gaps import refresh_known_gaps  # gaps.py builds on this module
    for sid, code in conn.execute("SELECT se.id, i.code FROM series se JOIN intervals i ON i.id = se.interval_id "
                                  "ORDER BY se.id").fetchall():
        if code in INTERVAL_MS:
            refresh_known_gaps(conn, sid, code)


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database (new, ours, or written by the upstream pipeline) to SCHEMA_VERSION."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise MarketError(f"market database schema version {version} is newer than this tool "
                          f"({SCHEMA_VERSION}); upgrade image_cache")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target].split(";"):
                if statement.strip():
                    conn.execute(statement)
            if target == 2:
                _all_gaps(conn)
            if target == 3:
                migrate_venues(conn)
            conn.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


# ---------------------------------------------------------------------------------------- connections

def connect_writer(path: str) -> sqlite3.Connection:
    """A read-write connection in WAL mode, migrated; the caller holds `writer_lock(path)`."""
    check_sqlite_file(path, "market database", "candles")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise MarketError(os_error_message("create folder", directory, exc)) from None
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn)
        revisions.install(conn)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise MarketError(f"{path}: cannot open market database: {exc}") from None
    except BaseException:
        conn.close()
        raise
    return conn


# ---------------------------------------------------------------------------------------- writes

@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    revised: int
    unchanged: int


@contextlib.contextmanager
def writer(db: str, purpose: str, lock_wait: float) -> Iterator[sqlite3.Connection]:
    """The one writer session of every command that writes market.sqlite: the writer lock (waiting up to
    `lock_wait` s), a migrated WAL connection, the WAL emptied on a clean exit (so that readers may open the
    file immutable), the connection closed on any exit."""
    with writer_lock(db, purpose, lock_wait):
        conn = connect_writer(db)
        try:
            yield conn
            checkpoint(conn)
        finally:
            conn.close()


def series_id(conn: sqlite3.Connection, symbol: str, interval: str, venue: Venue) -> int:
    """The id of (symbol, interval), creating the symbol, interval and series rows as needed.

    The series is recorded as `venue`'s; rows of one venue are never written into another's series.
    """
    check_symbol(symbol)
    check_interval(interval)
    base, quote = split_symbol(symbol)
    conn.execute("INSERT INTO symbols(symbol, base_asset, quote_asset) VALUES (?, ?, ?) "
                 "ON CONFLICT(symbol) DO NOTHING", (symbol, base, quote))
    conn.execute("INSERT INTO intervals(code, ms) VALUES (?, ?) ON CONFLICT(code) DO NOTHING",
                 (interval, INTERVAL_MS[interval]))
    conn.execute("""INSERT INTO series(symbol_id, interval_id)
                    SELECT s.id, i.id FROM symbols s, intervals i WHERE s.symbol = ? AND i.code = ?
                    ON CONFLICT(symbol_id, interval_id) DO NOTHING""", (symbol, interval))
    sid = conn.execute("""SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id
                          JOIN intervals i ON i.id = se.interval_id WHERE s.symbol = ? AND i.code = ?""",
                       (symbol, interval)).fetchone()[0]
    claim(conn, sid, symbol, venue)
    return sid


def read_candles(conn: sqlite3.Connection, sid: int, start_ms: int | None = None,
                 end_ms: int | None = None) -> np.ndarray:
    """Candles of one series with `start_ms <= open_time < end_ms`, ordered, as CANDLE_DTYPE."""
    lo = -(2**63) if start_ms is None else start_ms
    hi = 2**63 - 1 if end_ms is None else end_ms
    cursor = conn.execute(f"SELECT {', '.join(CANDLE_COLUMNS)} FROM candles "
                          "WHERE series_id = ? AND open_time >= ? AND open_time < ? ORDER BY open_time",
                          (sid, lo, hi))
    try:
        # Converted a batch at a time: a long span never holds all its rows as Python tuples.
        parts = [np.array(batch, dtype=CANDLE_DTYPE) for batch in iter(lambda: cursor.fetchmany(_ROWS_PER_BATCH), [])]
    except (ValueError, TypeError):
        # A market not written by us may hold TEXT or BLOB (or NULL) in number columns.
        numeric = " AND ".join(f"typeof({c}) IN ('integer', 'real')" for c in CANDLE_COLUMNS)
        bad = conn.execute(f"SELECT open_time FROM candles WHERE series_id = ? AND open_time >= ? AND open_time < ? "
                           f"AND NOT ({numeric}) ORDER BY open_time LIMIT 1", (sid, lo, hi)).fetchone()
        raise MarketError(f"market database: candle of series {sid} at open_time {bad[0] if bad else '?'} "
                          "holds a value that is not a number; fix or remove it to ingest into this series") from None
    return np.concatenate(parts) if parts else np.empty(0, dtype=CANDLE_DTYPE)


def upsert_candles(conn: sqlite3.Connection, sid: int, candles: np.ndarray) -> UpsertCounts:
    """Insert or update sorted, unique candles inside the caller's transaction.

    Existing rows in the same time span are read once and compared, so that only new rows and rows
    whose values changed are written, and revisions can be counted.
    """
    if len(candles) == 0:
        return UpsertCounts(0, 0, 0)
    times = candles["open_time"]
    existing = read_candles(conn, sid, int(times[0]), int(times[-1]) + 1)
    new_mask = np.ones(len(candles), dtype=bool)
    revised = 0
    if len(existing):
        pos = np.searchsorted(times, existing["open_time"])
        pos_ok = pos < len(times)
        matched = np.zeros(len(existing), dtype=bool)
        matched[pos_ok] = times[pos[pos_ok]] == existing["open_time"][pos_ok]
        hit = pos[matched]
        same = np.ones(len(hit), dtype=bool)
        for name in CANDLE_COLUMNS[1:]:
            same &= candles[name][hit] == existing[name][matched]
        new_mask[hit] = False
        changed = hit[~same]
        revised = len(changed)
        write = np.concatenate([np.flatnonzero(new_mask), changed])
    else:
        write = np.arange(len(candles))
    inserted = int(new_mask.sum())
    if len(write) == len(candles):
        _write_candles(conn, sid, candles)
    elif len(write):
        _write_candles(conn, sid, candles[np.sort(write)])
    return UpsertCounts(inserted, revised, len(candles) - inserted - revised)


# Rows per INSERT statement: binding one flat parameter list per 64 rows is ~3x faster than one
# statement per row (the per-row statement overhead dominates bulk ingest).
_ROWS_PER_STATEMENT = 64


def _write_candles(conn: sqlite3.Connection, sid: int, rows: np.ndarray) -> None:
    for start in range(0, len(rows), _ROWS_PER_BATCH):
        _write_batch(conn, sid, rows[start:start + _ROWS_PER_BATCH])


def _write_batch(conn: sqlite3.Connection, sid: int, rows: np.ndarray) -> None:
    """Upsert CANDLE_DTYPE rows. All values are bound as floats: the INTEGER affinity of open_time and
    trades stores them back as exact integers (< 2**53), and one float array flattens fastest."""
    flat = np.column_stack([rows[c].astype(np.float64) for c in CANDLE_COLUMNS]).ravel().tolist()
    width = len(CANDLE_COLUMNS)
    values = f"({int(sid)}, {', '.join('?' * width)})"
    updates = ", ".join(f"{c} = excluded.{c}" for c in CANDLE_COLUMNS[1:])

    def statement(count: int) -> str:
        return (f"INSERT INTO candles(series_id, {', '.join(CANDLE_COLUMNS)}) VALUES {', '.join([values] * count)} "
                f"ON CONFLICT(series_id, open_time) DO UPDATE SET {updates}")

    step = _ROWS_PER_STATEMENT * width
    full = len(rows) // _ROWS_PER_STATEMENT * step
    if full:
        conn.executemany(statement(_ROWS_PER_STATEMENT), (flat[i:i + step] for i in range(0, full, step)))
    if full < len(flat):
        conn.execute(statement((len(flat) - full) // width), flat[full:])


def open_times(conn: sqlite3.Connection, sql: str, params: tuple) -> np.ndarray:
    """The first column of `sql`'s rows as int64, without holding them all as Python tuples."""
    return np.fromiter((row[0] for row in conn.execute(sql, params)), dtype=np.int64)
