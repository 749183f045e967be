"""Read-only access to market.sqlite: which series exist, which of them a command covers (`Filters`,
`select_series`), and each series as numpy arrays.

The whole run reads inside one read transaction, so that an ingest committing meanwhile is seen
either entirely or not at all (WAL snapshot isolation).
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from image_cache.cache.windows import Series
from image_cache.core.db import open_readonly
from image_cache.core.errors import MarketError
from image_cache.core.grid import INTERVAL_MS, check_symbol
from image_cache.core.hooks import Warn

if TYPE_CHECKING:
    from image_cache.settings import Settings

REQUIRED_TABLES = ("symbols", "intervals", "series", "candles")
COLUMNS = ("open_time", "open", "high", "low", "close", "volume")


def open_market(path: str) -> sqlite3.Connection:
    """Open market.sqlite read-only (never creating it; in a read-only folder too: core/db.py open_readonly)
    and start the run's read snapshot."""
    if not os.path.isfile(path):
        raise MarketError(f"market database not found: {path}")
    try:
        conn = open_readonly(path)
    except sqlite3.OperationalError as exc:
        raise MarketError(f"cannot open market database {path}: {exc}") from None
    except sqlite3.DatabaseError as exc:
        raise MarketError(f"{path} is not a readable SQLite database: {exc}") from None
    try:
        conn.execute("BEGIN")
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise MarketError(f"{path} is not a readable SQLite database: {exc}") from None
    missing = [name for name in REQUIRED_TABLES if name not in tables]
    if missing:
        conn.close()
        raise MarketError(f"{path} is not a market database: missing table(s) {', '.join(missing)}")
    return conn


def list_series(conn: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """(symbol, interval) → series id for every series with at least one candle."""
    rows = conn.execute("""SELECT s.symbol, i.code, se.id FROM series se
                           JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                           WHERE EXISTS (SELECT 1 FROM candles c WHERE c.series_id = se.id)""").fetchall()
    return {(symbol, interval): sid for symbol, interval, sid in rows}


BATCH_ROWS = 1 << 16


def read_series(conn: sqlite3.Connection, symbol: str, interval: str, sid: int,
                start_ms: int | None = None) -> Series:
    """One series (from `start_ms` on, when given) as arrays, in a single query.

    A market not written by us may hold text, blobs or NULLs in number columns: that is a MarketError
    naming the series and the first bad value, never a numpy traceback.
    """
    start = -(2**63) if start_ms is None else start_ms
    cursor = conn.execute(f"SELECT {', '.join(COLUMNS)} FROM candles "
                          "WHERE series_id = ? AND open_time >= ? ORDER BY open_time", (sid, start))
    table: np.ndarray | Literal[False] | None  # False: a value that is not a number
    try:
        # A batch at a time: millions of rows never live as Python tuples all at once.
        parts = [np.array(batch, dtype=np.float64) for batch in iter(lambda: cursor.fetchmany(BATCH_ROWS), [])]
        table = np.concatenate(parts) if parts else None
    except (TypeError, ValueError):
        table = False
    if table is None:
        return Series(symbol, interval, np.empty(0, dtype=np.int64), np.empty((0, 5), dtype=np.float64))
    if table is False or not np.isfinite(table).all():
        raise MarketError(_bad_value(conn, symbol, interval, sid, start))
    # Epoch milliseconds stay below 2**53, so the round trip through float64 is exact.
    times = table[:, 0].astype(np.int64)
    return Series(symbol, interval, times, np.ascontiguousarray(table[:, 1:]))


def _bad_value(conn: sqlite3.Connection, symbol: str, interval: str, sid: int, start: int) -> str:
    """What is wrong with a series that did not convert to finite numbers: the first bad value, by column."""
    path = next((row[2] for row in conn.execute("PRAGMA database_list") if row[1] == "main"), "") or "market"
    for column in COLUMNS:
        allowed = "('integer')" if column == "open_time" else "('integer', 'real')"
        row = conn.execute(f"SELECT open_time, typeof({column}), quote({column}) FROM candles "
                           f"WHERE series_id = ? AND open_time >= ? AND (typeof({column}) NOT IN {allowed} "
                           f"OR {column} IN (9e999, -9e999)) ORDER BY open_time LIMIT 1", (sid, start)).fetchone()
        if row is not None:
            kind = "an infinite number" if row[1] == "real" else f"{row[1].upper()} {row[2][:40]}"
            return (f"{path}: table candles, series {symbol} {interval} (id {sid}): column {column} holds "
                    f"{kind} at open_time {row[0]!r}; finite numbers expected")
    return f"{path}: table candles, series {symbol} {interval} (id {sid}): values that are not finite numbers"


def read_start(conn: sqlite3.Connection, sid: int, start_ms: int, candles: int) -> int | None:
    """Where to read a series so that a window ending at or after `start_ms` has all its `candles`
    (history included), counted in candles rather than time so that a gap cannot cut it short:
    None when the series has no more than that before `start_ms` (read it whole)."""
    row = conn.execute("SELECT open_time FROM candles WHERE series_id = ? AND open_time < ? "
                       "ORDER BY open_time DESC LIMIT 1 OFFSET ?", (sid, start_ms, candles)).fetchone()
    return None if row is None else row[0]


@dataclass
class Filters:
    """Which series a command covers (dates are settings: `--start`, `--end`)."""

    symbols: list[str] | None = None
    intervals: list[str] | None = None


def select_series(conn, settings: Settings, filters: Filters, warn: Warn) -> list[tuple[str, str, int]]:
    """The (symbol, interval, series id) to draw: configured (or filtered) and present in the market."""
    present = list_series(conn)
    symbols = filters.symbols or list(settings.pairs)
    intervals = filters.intervals or list(settings.intervals)
    for symbol in symbols:
        check_symbol(symbol)
    for code in intervals:
        if code not in INTERVAL_MS:
            raise MarketError(f"unknown interval code {code!r}")
    absent = sorted(s for s in symbols if not any(p[0] == s for p in present))
    if absent:
        warn(f"not in the market database, skipped: {', '.join(absent)}")
    return [(s, iv, present[(s, iv)]) for s in symbols for iv in intervals if (s, iv) in present]


def read_margin_ms(interval: str, candles: int) -> int:
    """How far before `start` to read so that the first due window has all its candles."""
    return (candles + 1) * (31 * 86_400_000 if interval == "1mo" else INTERVAL_MS[interval])
