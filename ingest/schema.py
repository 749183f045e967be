"""The market.sqlite contract: intervals, symbols, DDL, migrations, connections, the writer lock.

Both sides use this module: ingest writes market.sqlite through it, and the renderer (cache/market.py)
reads the same tables and honours the same lock. The four core tables match the upstream
crypto-sqlite-pipeline schema, so a database that project wrote can be read and extended.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import fcntl
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

MINUTE_MS = 60_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# 1970-01-01 was a Thursday; weekly candles open on Mondays, four days later on the grid.
WEEK_OFFSET_MS = 4 * DAY_MS
# `intervals.ms` for 1mo is nominal (30 days); month arithmetic uses the calendar instead.
MONTH_NOMINAL_MS = 30 * DAY_MS

INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": WEEK_MS,
    "1mo": MONTH_NOMINAL_MS,
}

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,39}$")
# Longest first, so that e.g. FDUSD wins over USD.
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "USD", "EUR", "TRY", "BRL",
                "GBP", "JPY", "BTC", "ETH", "BNB")

CANDLE_COLUMNS = ("open_time", "open", "high", "low", "close", "volume", "quote_asset_volume",
                  "trades", "taker_buy_base_volume", "taker_buy_quote_volume")
CANDLE_DTYPE = np.dtype([(name, np.int64 if name in ("open_time", "trades") else np.float64)
                         for name in CANDLE_COLUMNS])

SCHEMA_VERSION = 1


class MarketError(Exception):
    """A domain error about market data: the message is shown to the user as is."""


class LockHeld(MarketError):
    """Another process holds a lock; `holder` says who, as recorded in the lock file."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is locked by another run ({holder or 'holder unknown'})")
        self.path = path
        self.holder = holder


# ---------------------------------------------------------------------------------------- intervals

def check_interval(code: str) -> str:
    if code not in INTERVAL_MS:
        raise MarketError(f"unknown interval code {code!r} (known: {' '.join(INTERVAL_MS)})")
    return code


def check_symbol(symbol: str) -> str:
    if not SYMBOL_RE.match(symbol):
        raise MarketError(f"invalid symbol {symbol!r}: must match {SYMBOL_RE.pattern}")
    return symbol


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base_asset, quote_asset) from a symbol name; COIN-M `BTCUSD_PERP` → (BTC, USD)."""
    core = symbol.split("_", 1)[0]
    for quote in QUOTE_ASSETS:
        if core.endswith(quote) and len(core) > len(quote):
            return core[: -len(quote)], quote
    return core, ""


def _month_index(t_ms: np.ndarray | int) -> np.ndarray | int:
    """Months since 1970-01 of a UTC epoch-ms time (vectorised)."""
    months = np.asarray(t_ms, dtype="datetime64[ms]").astype("datetime64[M]").astype(np.int64)
    return months if np.ndim(t_ms) else int(months)


def _month_start_ms(index: np.ndarray | int) -> np.ndarray | int:
    starts = np.asarray(index, dtype=np.int64).astype("datetime64[M]").astype("datetime64[ms]").astype(np.int64)
    return starts if np.ndim(index) else int(starts)


def grid_index(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | int:
    """Position of an open time on the interval's grid (floor for times off the grid).

    Fixed intervals count from the epoch (1w from the first Monday); 1mo counts calendar months.
    The renderer's stride grid and gap detection both use this, so the grid never moves.
    """
    if code == "1mo":
        return _month_index(open_time_ms)
    offset = WEEK_OFFSET_MS if code == "1w" else 0
    return (np.asarray(open_time_ms, dtype=np.int64) - offset) // INTERVAL_MS[code] if np.ndim(open_time_ms) \
        else (int(open_time_ms) - offset) // INTERVAL_MS[code]


def grid_time(code: str, index: np.ndarray | int) -> np.ndarray | int:
    """Inverse of grid_index: the open time of grid slot `index`."""
    if code == "1mo":
        return _month_start_ms(index)
    offset = WEEK_OFFSET_MS if code == "1w" else 0
    return np.asarray(index, dtype=np.int64) * INTERVAL_MS[code] + offset if np.ndim(index) \
        else int(index) * INTERVAL_MS[code] + offset


def on_grid(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | bool:
    return grid_time(code, grid_index(code, open_time_ms)) == open_time_ms


def close_time_ms(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | int:
    """Exclusive end of a candle: open time of the next grid slot (calendar months for 1mo)."""
    if code == "1mo":
        return grid_time(code, grid_index(code, open_time_ms) + 1)
    return open_time_ms + INTERVAL_MS[code]


# ---------------------------------------------------------------------------------------- time

def utc_ms(value: str | None) -> int | None:
    """Parse a UTC date or datetime (`2024-01-01`, `2024-01-01T12:00`) to epoch milliseconds."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MarketError(f"invalid date {value!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return calendar.timegm(parsed.utctimetuple()) * 1000 + parsed.microsecond // 1000


def iso_utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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

MIGRATIONS = {1: CORE_DDL + INGEST_DDL}


def migrate(conn: sqlite3.Connection) -> None:
    """Bring a database (new, ours, or written by the upstream pipeline) to SCHEMA_VERSION."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise MarketError(f"market database schema version {version} is newer than this tool "
                          f"({SCHEMA_VERSION}); upgrade image_cache")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[target]} PRAGMA user_version = {target}; COMMIT;")


# ---------------------------------------------------------------------------------------- connections

def connect_writer(path: str) -> sqlite3.Connection:
    """A read-write connection in WAL mode, migrated; the caller holds `writer_lock(path)`."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    conn = sqlite3.connect(path, isolation_level=None, timeout=60)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE): committed when the block ends, rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def checkpoint(conn: sqlite3.Connection) -> None:
    """Empty the WAL so that readers may open the file immutable."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def lock_path(db_path: str) -> str:
    return db_path + ".lock"


@contextlib.contextmanager
def exclusive_lock(path: str, purpose: str, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold an exclusive flock on `path`, recording `purpose` and our pid as the holder.

    Waits up to `wait_seconds`, then raises LockHeld naming the holder. The lock dies with the
    process (flock), so a crash never leaves a stale lock behind.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() >= deadline:
                    raise LockHeld(path, os.pread(fd, 4096, 0).decode(errors="replace").strip()) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def lock_is_held(path: str) -> bool:
    """True when some process holds the lock at `path` right now."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def writer_lock(db_path: str, purpose: str, wait_seconds: float = 30.0) -> contextlib.AbstractContextManager:
    """The ingest writer lock of a market database."""
    return exclusive_lock(lock_path(db_path), purpose, wait_seconds)


# ---------------------------------------------------------------------------------------- writes

@dataclass(frozen=True)
class UpsertCounts:
    inserted: int
    revised: int
    unchanged: int


def series_id(conn: sqlite3.Connection, symbol: str, interval: str) -> int:
    """The id of (symbol, interval), creating the symbol, interval and series rows as needed."""
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
    return conn.execute("""SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id
                           JOIN intervals i ON i.id = se.interval_id WHERE s.symbol = ? AND i.code = ?""",
                        (symbol, interval)).fetchone()[0]


def read_candles(conn: sqlite3.Connection, sid: int, start_ms: int | None = None,
                 end_ms: int | None = None) -> np.ndarray:
    """Candles of one series with `start_ms <= open_time < end_ms`, ordered, as CANDLE_DTYPE."""
    lo = -(2**63) if start_ms is None else start_ms
    hi = 2**63 - 1 if end_ms is None else end_ms
    rows = conn.execute(f"SELECT {', '.join(CANDLE_COLUMNS)} FROM candles "
                        "WHERE series_id = ? AND open_time >= ? AND open_time < ? ORDER BY open_time",
                        (sid, lo, hi)).fetchall()
    return np.array(rows, dtype=CANDLE_DTYPE) if rows else np.empty(0, dtype=CANDLE_DTYPE)


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
    if len(write):
        _write_candles(conn, sid, candles[np.sort(write)])
    return UpsertCounts(inserted, revised, len(candles) - inserted - revised)


# Rows per INSERT statement: binding one flat parameter list per 64 rows is ~3x faster than one
# statement per row (the per-row statement overhead dominates bulk ingest).
_ROWS_PER_STATEMENT = 64


def _write_candles(conn: sqlite3.Connection, sid: int, rows: np.ndarray) -> None:
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
