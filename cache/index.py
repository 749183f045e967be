"""image_cache.sqlite: one row per image (per window and preset), the runs, and month digests.

Only the main process writes here, in batched `BEGIN IMMEDIATE` transactions (WAL).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.db import immediate
from core.errors import MarketError

SCHEMA_VERSION = 1
STATUSES = ("ok", "missing", "corrupt", "stale")

IMAGE_COLUMNS = ("symbol", "interval", "end_open_time_ms", "img_size_px", "window_len", "style_version",
                 "style_name", "spec_hash", "file_path", "sha256", "pixel_hash", "width_px", "height_px",
                 "file_size", "input_fingerprint", "created_utc", "updated_utc", "status", "reason")
# The preset key: which image a row is, whatever its content (the spec hash says what drew it).
KEY_COLUMNS = ("symbol", "interval", "end_open_time_ms", "style_name", "img_size_px", "window_len",
               "style_version")

DDL = f"""
CREATE TABLE images (
    id INTEGER PRIMARY KEY,
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    end_open_time_ms INTEGER NOT NULL,
    img_size_px INTEGER NOT NULL,
    window_len INTEGER NOT NULL,
    style_version INTEGER NOT NULL,
    style_name TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    file_path TEXT NOT NULL UNIQUE,
    sha256 TEXT,
    pixel_hash TEXT,
    width_px INTEGER,
    height_px INTEGER,
    file_size INTEGER,
    input_fingerprint TEXT,
    created_utc TEXT NOT NULL,
    updated_utc TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {STATUSES!r}),
    reason TEXT,
    UNIQUE ({', '.join(KEY_COLUMNS)})
);
CREATE INDEX images_status ON images(status);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    command TEXT NOT NULL,
    arguments TEXT NOT NULL,
    started_utc TEXT NOT NULL,
    finished_utc TEXT,
    counts TEXT,
    exit_code INTEGER
);
CREATE TABLE month_digests (
    preset TEXT NOT NULL,
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    month INTEGER NOT NULL,
    digest TEXT NOT NULL,
    PRIMARY KEY (preset, symbol, interval, month)
);
"""


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def connect(path: str, create: bool = True) -> sqlite3.Connection:
    """Open (and create or migrate) the index; a damaged file is a clear error pointing to repair."""
    if not create and not os.path.isfile(path):
        raise MarketError(f"image index not found: {path} (run render first)")
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise MarketError(f"image index {path} has schema version {version}, newer than this tool")
        if version < 1:
            conn.executescript(f"BEGIN IMMEDIATE; {DDL} PRAGMA user_version = 1; COMMIT;")
        conn.execute("SELECT count(*) FROM images LIMIT 1").fetchone()
    except sqlite3.DatabaseError as exc:
        raise MarketError(f"image index {path} is damaged ({exc}); run `repair --reindex` to rebuild it "
                          "from the image files") from None
    return conn


@dataclass
class Row:
    """One image row, as written; the key columns identify it, the rest describe it."""

    symbol: str
    interval: str
    end_open_time_ms: int
    img_size_px: int
    window_len: int
    style_version: int
    style_name: str
    spec_hash: str
    file_path: str
    status: str
    reason: str | None = None
    sha256: str | None = None
    pixel_hash: str | None = None
    width_px: int | None = None
    height_px: int | None = None
    file_size: int | None = None
    input_fingerprint: str | None = None


def upsert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    """Insert or update rows by key in one transaction; created_utc is kept on update."""
    if not rows:
        return
    now = utc_now()
    columns = [c for c in IMAGE_COLUMNS if c not in ("created_utc", "updated_utc")]
    updates = ", ".join(f"{c} = excluded.{c}" for c in columns + ["updated_utc"] if c not in KEY_COLUMNS)
    sql = (f"INSERT INTO images ({', '.join(columns)}, created_utc, updated_utc) "
           f"VALUES ({', '.join('?' * len(columns))}, ?, ?) "
           f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}")
    with immediate(conn):
        conn.executemany(sql, ([getattr(row, c) for c in columns] + [now, now] for row in rows))


def set_status(conn: sqlite3.Connection, changes: Iterable[tuple[int, str, str | None]]) -> None:
    """Record (row id, status, reason) findings in one transaction."""
    changes = list(changes)
    if not changes:
        return
    now = utc_now()
    with immediate(conn):
        conn.executemany("UPDATE images SET status = ?, reason = ?, updated_utc = ? WHERE id = ?",
                         ((status, reason, now, row_id) for row_id, status, reason in changes))


@dataclass(frozen=True)
class Indexed:
    """The index's rows of one series and preset, as arrays sorted by end time."""

    end_ms: np.ndarray
    ok_current: np.ndarray  # status ok and drawn with the current spec hash
    gap_missing: np.ndarray  # recorded as missing because of a gap or short history


_PRESET_WHERE = ("symbol = ? AND interval = ? AND style_name = ? AND img_size_px = ? AND window_len = ? "
                 "AND style_version = ?")


def _preset_args(preset: dict[str, Any], symbol: str, interval: str) -> tuple:
    return (symbol, interval, preset["style_name"], preset["img_size_px"], preset["window_len"],
            preset["style_version"])


def indexed_rows(conn: sqlite3.Connection, preset: dict[str, Any], symbol: str, interval: str,
                 spec_hash: str) -> Indexed:
    """Only integers, so that a million rows load in about a second (fingerprints come on demand)."""
    rows = conn.execute(
        "SELECT end_open_time_ms, status = 'ok' AND spec_hash = ?, "
        f"status = 'missing' AND reason IN ('gap', 'history') FROM images WHERE {_PRESET_WHERE} "
        "ORDER BY end_open_time_ms", (spec_hash, *_preset_args(preset, symbol, interval))).fetchall()
    table = np.array(rows, dtype=np.int64).reshape(-1, 3)
    return Indexed(table[:, 0].copy(), table[:, 1].astype(bool), table[:, 2].astype(bool))


def indexed_values(conn: sqlite3.Connection, preset: dict[str, Any], symbol: str, interval: str,
                   end_ms: np.ndarray, column: str) -> dict[int, Any]:
    """`column` (id or input_fingerprint) of the rows for the windows ending at `end_ms` (sorted), in one query."""
    if column not in ("id", "input_fingerprint"):
        raise ValueError(f"not a column to look up by window: {column}")
    if len(end_ms) == 0:
        return {}
    rows = conn.execute(f"SELECT end_open_time_ms, {column} FROM images WHERE {_PRESET_WHERE} "
                        "AND end_open_time_ms BETWEEN ? AND ?",
                        (*_preset_args(preset, symbol, interval), int(end_ms[0]), int(end_ms[-1])))
    wanted = set(end_ms.tolist())
    return {end: value for end, value in rows if end in wanted}


def read_month_digests(conn: sqlite3.Connection, preset: str, symbol: str, interval: str) -> dict[int, str]:
    return dict(conn.execute("SELECT month, digest FROM month_digests WHERE preset = ? AND symbol = ? "
                             "AND interval = ?", (preset, symbol, interval)))


def write_month_digests(conn: sqlite3.Connection, preset: str, symbol: str, interval: str,
                        digests: dict[int, str]) -> None:
    with immediate(conn):
        conn.execute("DELETE FROM month_digests WHERE preset = ? AND symbol = ? AND interval = ?",
                     (preset, symbol, interval))
        conn.executemany("INSERT INTO month_digests VALUES (?, ?, ?, ?, ?)",
                         ((preset, symbol, interval, month, digest) for month, digest in digests.items()))


def start_run(conn: sqlite3.Connection, command: str, arguments: dict[str, Any]) -> int:
    cur = conn.execute("INSERT INTO runs (command, arguments, started_utc) VALUES (?, ?, ?)",
                       (command, json.dumps(arguments, sort_keys=True, default=str), utc_now()))
    return cur.lastrowid


def finish_run(conn: sqlite3.Connection, run_id: int, counts: dict[str, Any], exit_code: int) -> None:
    conn.execute("UPDATE runs SET finished_utc = ?, counts = ?, exit_code = ? WHERE id = ?",
                 (utc_now(), json.dumps(counts, sort_keys=True), exit_code, run_id))


@dataclass
class BatchWriter:
    """Collects rows and writes them in one transaction every `max_rows` rows or `max_seconds`."""

    conn: sqlite3.Connection
    max_rows: int = 500
    max_seconds: float = 2.0
    pending: list[Row] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)

    def add(self, rows: Iterable[Row]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= self.max_rows or time.monotonic() - self.last_flush >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        upsert_rows(self.conn, self.pending)
        self.pending = []
        self.last_flush = time.monotonic()
