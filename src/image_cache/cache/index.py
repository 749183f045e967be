"""image_cache.sqlite: one row per image (per window and preset), the runs, the month-digest memo and
the bucket stamps (cache/stamps.py).

Only the main process writes here, in batched `BEGIN IMMEDIATE` transactions (WAL). The file says
what it is (`PRAGMA application_id`) and which schema it has (`PRAGMA user_version`, ordered
migrations), so that no other SQLite file is ever taken for an index.
"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from image_cache.core.db import connect_readonly, exclusive_lock, file_uri, immediate
from image_cache.core.errors import ImageCacheError, IndexFileError
from image_cache.core.grid import utc_now

if TYPE_CHECKING:
    from image_cache import chart
    from image_cache.settings import Settings

APPLICATION_ID = 0x49434958  # "ICIX": this file is an image_cache index
SCHEMA_VERSION = 5
# Pages of a new index: with 8 KiB pages (SQLite's default is 4 KiB) the writer spent 13-22 % less CPU
# per row (fewer WAL frames to write and copy; measured side by side on 2 cores); older files keep theirs.
PAGE_SIZE = 8192
STATUSES = ("ok", "stale", "corrupt", "missing", "undrawable")
# Reasons of `undrawable` rows: no image can exist for the window (gap under policy skip, too little
# history) or the engine refused it ("engine: …"). Such rows are counted, never failures.
NO_IMAGE_REASONS = ("gap", "history")
ENGINE_PREFIX = "engine: "

IMAGE_COLUMNS = ("symbol", "interval", "end_open_time_ms", "img_size_px", "window_len", "style_version",
                 "style_name", "spec_hash", "file_path", "sha256", "pixel_hash", "width_px", "height_px",
                 "file_size", "input_fingerprint", "created_utc", "updated_utc", "status", "reason",
                 "pixel_hash_version")
# The preset key: which image a row is, whatever its content (the spec hash says what drew it).
KEY_COLUMNS = ("symbol", "interval", "end_open_time_ms", "style_name", "img_size_px", "window_len",
               "style_version")
PRESET_COLUMNS = ("style_name", "img_size_px", "window_len", "style_version")


def _images_ddl(table: str, statuses: tuple[str, ...], lean: bool = False) -> str:
    """The images table of v1/v2, or (`lean`, v4 on) the same columns with the cheaper constraints of v4."""
    # v4: no UNIQUE on file_path (the path is a function of the key, which is unique), and the status
    # check as comparisons: SQLite 3.40 builds an `IN (...)` list's lookup table anew for every row inserted.
    path = "file_path TEXT NOT NULL" if lean else "file_path TEXT NOT NULL UNIQUE"
    check = " OR ".join(f"status = '{s}'" for s in statuses) if lean else f"status IN {statuses!r}"
    extra = "\n    pixel_hash_version INTEGER," if lean else ""
    return f"""
CREATE TABLE {table} (
    id INTEGER PRIMARY KEY,
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    end_open_time_ms INTEGER NOT NULL,
    img_size_px INTEGER NOT NULL,
    window_len INTEGER NOT NULL,
    style_version INTEGER NOT NULL,
    style_name TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    {path},
    sha256 TEXT,
    pixel_hash TEXT,
    width_px INTEGER,
    height_px INTEGER,
    file_size INTEGER,
    input_fingerprint TEXT,
    created_utc TEXT NOT NULL,
    updated_utc TEXT NOT NULL,
    status TEXT NOT NULL CHECK ({check}),
    reason TEXT,{extra}
    UNIQUE ({', '.join(KEY_COLUMNS)})
);"""


_V1 = _images_ddl("images", ("ok", "missing", "corrupt", "stale")) + """
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

# v2: status `undrawable` (was `missing` with reason gap/history/"undrawable: …"); an identity (meta);
# month digests chain the previous candle's time, so the old memo is dropped (one full re-check).
_V2 = _images_ddl("images_v2", STATUSES) + f"""
INSERT INTO images_v2 SELECT id, symbol, interval, end_open_time_ms, img_size_px, window_len, style_version,
    style_name, spec_hash, file_path, sha256, pixel_hash, width_px, height_px, file_size, input_fingerprint,
    created_utc, updated_utc,
    CASE WHEN status = 'missing' AND (reason IN ('gap', 'history') OR reason LIKE 'undrawable: %')
         THEN 'undrawable' ELSE status END,
    CASE WHEN status = 'missing' AND reason LIKE 'undrawable: %' THEN '{ENGINE_PREFIX}' || substr(reason, 13)
         ELSE reason END
FROM images;
DROP TABLE images;
ALTER TABLE images_v2 RENAME TO images;
CREATE INDEX images_status ON images(status);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
DELETE FROM month_digests;
"""

# v3: which definition of the pixel hash a row holds (chart.PIXEL_HASH_VERSION; rows before it: 1).
_V3 = """
ALTER TABLE images ADD COLUMN pixel_hash_version INTEGER;
UPDATE images SET pixel_hash_version = 1 WHERE pixel_hash IS NOT NULL;
"""

# v4: the table rebuilt lean (see _images_ddl) and without the status index (no query needs it: status
# and verify scan or go by the key), so that an insert maintains one index instead of three.
_V4 = _images_ddl("images_v4", STATUSES, lean=True) + f"""
INSERT INTO images_v4 (id, {', '.join(IMAGE_COLUMNS)}) SELECT id, {', '.join(IMAGE_COLUMNS)} FROM images ORDER BY id;
DROP TABLE images;
ALTER TABLE images_v4 RENAME TO images;
"""

# v5: bucket stamps (cache/stamps.py). Updates of rows drop the stamps of their buckets and deletes are
# counted, by triggers, so that no write (ours, or one made by hand) can leave a stamp vouching for a
# bucket whose rows changed. Inserts carry no trigger (they are the writer's bulk, and a trigger costs
# 3-6 µs a row): rows inserted since a stamp are those above the largest id it recorded.
_V5 = """
CREATE TABLE bucket_stamps (
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    preset TEXT NOT NULL,
    stamp TEXT NOT NULL,
    lo INTEGER,
    up_to_date INTEGER NOT NULL,
    undrawable INTEGER NOT NULL,
    gap INTEGER NOT NULL,
    history INTEGER NOT NULL,
    PRIMARY KEY (symbol, interval, bucket, preset)
) WITHOUT ROWID;
CREATE TABLE series_marks (
    preset TEXT NOT NULL,
    symbol TEXT NOT NULL,
    interval TEXT NOT NULL,
    market_mark TEXT NOT NULL,
    index_mark TEXT NOT NULL,
    PRIMARY KEY (preset, symbol, interval)
) WITHOUT ROWID;
CREATE TABLE image_changes (deletes INTEGER NOT NULL);
INSERT INTO image_changes VALUES (0);
CREATE TRIGGER images_update_stamps AFTER UPDATE ON images BEGIN
    DELETE FROM bucket_stamps WHERE symbol = OLD.symbol AND interval = OLD.interval
        AND bucket = OLD.end_open_time_ms >> 31;
    DELETE FROM bucket_stamps WHERE symbol = NEW.symbol AND interval = NEW.interval
        AND bucket = NEW.end_open_time_ms >> 31;
END;
CREATE TRIGGER images_delete_count AFTER DELETE ON images BEGIN
    UPDATE image_changes SET deletes = deletes + 1;
END;
"""

MIGRATIONS = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}


class NotAnIndex(IndexFileError):
    """A file that is not an image index: never written to, never moved aside."""


class DamagedIndex(IndexFileError):
    """An image index (or what its image root says was one) that SQLite cannot read."""


class IndexConnection(sqlite3.Connection):
    """A connection to the index file that remembers which file it opened (device and inode), so that a
    run can tell when the file at its path was deleted or replaced under it: its rows would then go
    to a file no one can open again, and the run would report success without an index."""

    path = ":memory:"
    identity: tuple[int, int] | None = None

    def check_file(self) -> None:
        if self.identity is None:
            return
        try:
            info = os.stat(self.path)
        except OSError:
            info = None
        if info is None or (info.st_dev, info.st_ino) != self.identity:
            raise IndexFileError(f"image index {self.path} was deleted or replaced while this run wrote to it: "
                                 "the rows of this run are lost (repair --reindex rebuilds an index from the "
                                 "image files)")


def failure(path: str, exc: sqlite3.Error) -> IndexFileError:
    """One line for an SQLite error met while using the index: the file and the cause."""
    return IndexFileError(f"image index {path}: {_describe(exc, path)}")


@contextlib.contextmanager
def guarded(conn: sqlite3.Connection, path: str) -> Iterator[None]:
    """A command's use of the index, failing with one line: the index's SQLite errors (its disk full, its file
    damaged or read-only) become `failure`, and its file deleted or replaced under the run is an error at the
    end, never a success. Errors of the market, read in the same block, are raised as they are (is_its_error)."""
    try:
        yield
        if isinstance(conn, IndexConnection):
            conn.check_file()
    except sqlite3.Error as exc:
        if not is_its_error(conn, path, exc):
            raise
        raise failure(path, exc) from None


def is_its_error(conn: sqlite3.Connection, path: str, exc: sqlite3.Error) -> bool:
    """Whether an error met by a run reading both the market and the index is the index's: the market is
    never written, so a full disk or a read-only place is the index's; any other error is the index's
    only when SQLite no longer finds the index intact."""
    return _place_cause(exc, path) is not None or not is_sound(conn)


def is_sound(conn: sqlite3.Connection) -> bool:
    """Whether SQLite finds the index intact."""
    try:
        return conn.execute("PRAGMA quick_check(1)").fetchone()[0] == "ok"
    except sqlite3.Error:
        return False


_SQLITE_HEADER = b"SQLite format 3\x00"


def identify(path: str) -> str:
    """What the file at `path` is: 'absent', 'empty', 'index', 'other-sqlite', 'not-sqlite', 'damaged',
    'read-only' or 'disk-full' (SQLite cannot open it there: a WAL index needs to write beside it even to read).

    Opened read-only and never created; a non-regular file (a pipe, a folder) is 'not-sqlite'.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "absent"
    if not stat.S_ISREG(info.st_mode):
        return "not-sqlite"
    if info.st_size == 0:
        return "empty"
    with open(path, "rb") as handle:
        if handle.read(16) != _SQLITE_HEADER:
            return "not-sqlite"
    try:
        conn = connect_readonly(path)
        try:
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.OperationalError:
        if not _readable_immutable(path):
            return "damaged"
        return "disk-full" if _disk_full(path) else "read-only"
    except sqlite3.DatabaseError:
        return "damaged"
    if app_id == APPLICATION_ID:
        return "index"
    # Written by a version before the application id: recognised by its exact tables.
    if app_id == 0 and version == 1 and {"images", "runs", "month_digests"} <= tables:
        return "index"
    return "other-sqlite"


def _disk_full(path: str) -> bool:
    """Whether the file system holding `path` has no space left (SQLite may only say "disk I/O error")."""
    try:
        return os.statvfs(os.path.dirname(os.path.abspath(path))).f_bavail == 0
    except OSError:
        return False


def _readable_immutable(path: str) -> bool:
    """Whether SQLite reads the file when it need not write beside it: then only the place is read-only."""
    try:
        with contextlib.closing(connect_readonly(path, immutable=True)) as conn:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error:
        return False
    return True


def connect(path: str, create: bool = True) -> IndexConnection:
    """Open (and create or migrate) the index. Any other file at `path` is refused, never touched."""
    kind = identify(path)
    if kind == "absent" and not create:
        raise IndexFileError(f"image index not found: {path} (run render first)")
    if kind == "other-sqlite":
        raise NotAnIndex(f"{path} is an SQLite database but not an image index (is it the market "
                         "database?); pass the index with --index-db")
    if kind == "not-sqlite":
        raise DamagedIndex(f"{path} is not an SQLite database: not an image index, or a damaged one")
    if kind == "damaged":
        raise DamagedIndex(f"image index {path} is damaged (SQLite cannot read it)")
    if kind in PLACE_CAUSES:
        raise IndexFileError(f"cannot open image index {path}: {PLACE_CAUSES[kind]}")
    if kind in ("absent", "empty"):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=30, factory=IndexConnection)
        if path != ":memory:":
            info = os.stat(path)
            conn.path, conn.identity = path, (info.st_dev, info.st_ino)
        conn.row_factory = sqlite3.Row
        if kind in ("absent", "empty"):  # fixed once the file has pages (in WAL mode)
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        migrate(conn, path)
    except sqlite3.OperationalError as exc:
        raise ImageCacheError(f"cannot open image index {path}: {_describe(exc, path)}") from None
    except sqlite3.DatabaseError as exc:
        raise DamagedIndex(f"image index {path} is damaged ({exc})") from None
    return conn


READ_ONLY = "the file or its folder is read-only"
DISK_FULL = "disk full"
PLACE_CAUSES = {"read-only": READ_ONLY, "disk-full": DISK_FULL}  # identify's kinds of an index SQLite cannot open


def _place_cause(exc: sqlite3.Error, path: str) -> str | None:
    """Disk full or read-only, when that is why SQLite failed: it says so, or the file system does (a full
    disk met while growing the shared-memory file is only a "disk I/O error")."""
    text = str(exc)
    if "disk is full" in text or ("I/O error" in text and _disk_full(path)):
        return f"{DISK_FULL} ({text})"
    if "readonly" in text or "read-only" in text:
        return READ_ONLY
    return None


def _describe(exc: sqlite3.Error, path: str) -> str:
    text = str(exc)
    cause = _place_cause(exc, path)
    if cause is not None:
        return cause
    if not isinstance(exc, sqlite3.OperationalError) or "malformed" in text:
        return f"damaged ({text})"
    return text


def migrate(conn: sqlite3.Connection, path: str) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise IndexFileError(f"image index {path} has schema version {version}, newer than this tool "
                          f"({SCHEMA_VERSION}); upgrade image_cache")
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[target]} PRAGMA user_version = {target}; "
                           f"PRAGMA application_id = {APPLICATION_ID}; COMMIT;")
    if conn.execute("SELECT value FROM meta WHERE key = 'index_id'").fetchone() is None:
        with immediate(conn):
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('index_id', ?)", (uuid.uuid4().hex,))


def index_id(conn: sqlite3.Connection) -> str:
    return conn.execute("SELECT value FROM meta WHERE key = 'index_id'").fetchone()[0]


def id_at(path: str) -> str | None:
    """The id of the index at `path` (identify says it is one), read without writing."""
    conn = connect_readonly(path)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'index_id'").fetchone()
        return row[0] if row else None
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def set_index_id(conn: sqlite3.Connection, value: str) -> None:
    with immediate(conn):
        conn.execute("UPDATE meta SET value = ? WHERE key = 'index_id'", (value,))


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
    pixel_hash_version: int | None = None


_WRITTEN = [c for c in IMAGE_COLUMNS if c not in ("created_utc", "updated_utc")]
# Rows per INSERT statement: one statement with many VALUES rows costs SQLite about half as much per
# row as executemany's one execution per row (100 rows bind 2,200 parameters, far below SQLite's limit).
UPSERT_GROUP = 100


def _upsert_sql(rows: int) -> str:
    updates = ", ".join(f"{c} = excluded.{c}" for c in _WRITTEN + ["updated_utc"] if c not in KEY_COLUMNS)
    values = f"({', '.join('?' * (len(_WRITTEN) + 2))})"
    return (f"INSERT INTO images ({', '.join(_WRITTEN)}, created_utc, updated_utc) "
            f"VALUES {', '.join([values] * rows)} "
            f"ON CONFLICT ({', '.join(KEY_COLUMNS)}) DO UPDATE SET {updates}")


_UPSERT, _UPSERT_GROUP = _upsert_sql(1), _upsert_sql(UPSERT_GROUP)
# One C call a row builds its parameters (a getattr per column took 1.7 µs a row, half of SQLite's insert).
_UPSERT_VALUES = operator.attrgetter(*_WRITTEN)


def upsert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> None:
    """Insert or update rows by key in one transaction; created_utc is kept on update.

    A key twice in `rows` ends as its last row, as one statement per row would leave it: SQLite
    inserts a statement's VALUES rows one by one, each meeting the conflicts of those before it."""
    if not rows:
        return
    now = (utc_now(),) * 2
    values = [_UPSERT_VALUES(row) + now for row in rows]
    grouped = len(values) - len(values) % UPSERT_GROUP
    with immediate(conn):
        for start in range(0, grouped, UPSERT_GROUP):
            conn.execute(_UPSERT_GROUP, list(chain.from_iterable(values[start:start + UPSERT_GROUP])))
        conn.executemany(_UPSERT, values[grouped:])


def set_status(conn: sqlite3.Connection, changes: Iterable[tuple[int, str, str | None]]) -> None:
    """Record (row id, status, reason) findings in one transaction."""
    changes = list(changes)
    if not changes:
        return
    now = utc_now()
    with immediate(conn):
        conn.executemany("UPDATE images SET status = ?, reason = ?, updated_utc = ? WHERE id = ?",
                         ((status, reason, now, row_id) for row_id, status, reason in changes))


def delete_rows(conn: sqlite3.Connection, ids: Iterable[int]) -> None:
    ids = list(ids)
    if ids:
        with immediate(conn):
            conn.executemany("DELETE FROM images WHERE id = ?", ((i,) for i in ids))


def presets(conn: sqlite3.Connection, symbols: list[str] | None = None,
            intervals: list[str] | None = None) -> list[dict[str, Any]]:
    """Every preset the index holds rows of (within the filters)."""
    where, params = series_where(symbols, intervals)
    return [dict(row) for row in conn.execute(
        f"SELECT DISTINCT {', '.join(PRESET_COLUMNS)} FROM images{where} ORDER BY 1, 2, 3, 4", params)]


def series_where(symbols: list[str] | None, intervals: list[str] | None) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if symbols:
        clauses.append(f"symbol IN ({', '.join('?' * len(symbols))})")
        params += symbols
    if intervals:
        clauses.append(f"interval IN ({', '.join('?' * len(intervals))})")
        params += intervals
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def indexed_series(conn: sqlite3.Connection, preset: dict[str, Any]) -> list[tuple[str, str]]:
    """(symbol, interval) of every series with rows of `preset`."""
    where = " AND ".join(f"{c} = ?" for c in PRESET_COLUMNS)
    return [(row["symbol"], row["interval"]) for row in conn.execute(
        f"SELECT DISTINCT symbol, interval FROM images WHERE {where} ORDER BY 1, 2",
        [preset[c] for c in PRESET_COLUMNS])]


# Row states as small integers, so that a million rows load as one integer array in about a second.
STATE_CODES = {"ok": 0, "stale": 1, "corrupt": 2, "missing": 3, "gap": 4, "history": 5, "engine": 6}


@dataclass(frozen=True)
class Indexed:
    """The index's rows of one series and preset, as arrays sorted by end time."""

    end_ms: np.ndarray
    row_id: np.ndarray
    state: np.ndarray        # STATE_CODES: the status, and for undrawable rows the kind of reason
    spec_current: np.ndarray  # drawn (or judged) with the current spec hash

    @staticmethod
    def empty() -> Indexed:
        none = np.empty(0, np.int64)
        return Indexed(none, none, none, none.astype(bool))


_PRESET_WHERE = ("symbol = ? AND interval = ? AND style_name = ? AND img_size_px = ? AND window_len = ? "
                 "AND style_version = ?")


def _preset_args(preset: dict[str, Any], symbol: str, interval: str) -> tuple:
    return (symbol, interval, *(preset[c] for c in PRESET_COLUMNS))


def indexed_rows(conn: sqlite3.Connection, preset: dict[str, Any], symbol: str, interval: str,
                 spec_hash: str, from_ms: int | None = None) -> Indexed:
    """Two integers a row (the state packed with the id), so that a million rows load in about a second;
    fingerprints and paths come on demand, for the few windows that need them. With `from_ms`, only
    the rows of windows ending then or later."""
    cursor = conn.execute(
        "SELECT end_open_time_ms, (id << 4) | ((CASE status WHEN 'ok' THEN 0 WHEN 'stale' THEN 1 "
        "WHEN 'corrupt' THEN 2 WHEN 'missing' THEN 3 WHEN 'undrawable' THEN (CASE reason WHEN 'gap' THEN 4 "
        "WHEN 'history' THEN 5 ELSE 6 END) END) << 1) | (spec_hash = ?) "
        f"FROM images WHERE {_PRESET_WHERE} AND end_open_time_ms >= ? ORDER BY end_open_time_ms",
        (spec_hash, *_preset_args(preset, symbol, interval), -(2**63) if from_ms is None else from_ms))
    cursor.row_factory = None
    parts = [np.array(batch, dtype=np.int64) for batch in iter(lambda: cursor.fetchmany(1 << 16), [])]
    table = np.concatenate(parts) if parts else np.empty((0, 2), np.int64)
    packed = table[:, 1]
    return Indexed(table[:, 0].copy(), packed >> 4, (packed >> 1) & 7, (packed & 1).astype(bool))


def values_by_id(conn: sqlite3.Connection, ids: Iterable[int], columns: Sequence[str]) -> dict[int, sqlite3.Row]:
    """The named columns of the rows with these ids (in batches of 500 ids per query)."""
    ids = [int(i) for i in ids]
    bad = [c for c in columns if c not in IMAGE_COLUMNS]
    if bad:
        raise ValueError(f"not image columns: {bad}")
    out: dict[int, sqlite3.Row] = {}
    for start in range(0, len(ids), 500):
        part = ids[start:start + 500]
        for row in conn.execute(f"SELECT id, {', '.join(columns)} FROM images "
                                f"WHERE id IN ({', '.join('?' * len(part))})", part):
            out[row["id"]] = row
    return out


def read_month_digests(conn: sqlite3.Connection, preset: str, symbol: str, interval: str) -> dict[int, str]:
    return {row["month"]: row["digest"] for row in conn.execute(
        "SELECT month, digest FROM month_digests WHERE preset = ? AND symbol = ? AND interval = ?",
        (preset, symbol, interval))}


def write_month_digests(conn: sqlite3.Connection, preset: str, symbol: str, interval: str,
                        digests: dict[int, str]) -> None:
    """Replace the memo of the given months (others are kept)."""
    if not digests:
        return
    with immediate(conn):
        conn.executemany("INSERT INTO month_digests VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                         "digest = excluded.digest",
                         ((preset, symbol, interval, month, digest) for month, digest in digests.items()))


def start_run(conn: sqlite3.Connection, command: str, arguments: dict[str, Any]) -> int:
    cur = conn.execute("INSERT INTO runs (command, arguments, started_utc) VALUES (?, ?, ?)",
                       (command, json.dumps(arguments, sort_keys=True, default=str), utc_now()))
    assert cur.lastrowid is not None  # an INSERT sets it
    return cur.lastrowid


def finish_run(conn: sqlite3.Connection, run_id: int, counts: dict[str, Any], exit_code: int) -> None:
    conn.execute("UPDATE runs SET finished_utc = ?, counts = ?, exit_code = ? WHERE id = ?",
                 (utc_now(), json.dumps(counts, sort_keys=True), exit_code, run_id))


class _Checkpointer:
    """Copies the WAL into the database file from a thread with its own connection, so that the writer
    never waits for a checkpoint's two fsyncs (WAL, then database file). SQLite releases the GIL while
    it works; a checkpoint is SQLite's own crash-safe copy and writes no row."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.path = conn.execute("PRAGMA database_list").fetchone()[2]
        self.thread: threading.Thread | None = None
        conn.execute("PRAGMA wal_autocheckpoint = 0")

    def start(self) -> None:
        """One checkpoint in the background, unless one still runs (the next request catches up)."""
        if self.thread is None or not self.thread.is_alive():
            self.thread = threading.Thread(target=self._checkpoint, name="index-checkpoint", daemon=True)
            self.thread.start()

    def _checkpoint(self) -> None:
        try:
            # mode=rw: never creates a file; the writer's connection opened (and checked) this one.
            with contextlib.closing(sqlite3.connect(file_uri(self.path, "rw"), uri=True,
                                                    isolation_level=None)) as conn:
                conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # the WAL keeps every row; the next checkpoint (or close()) retries

    def close(self) -> None:
        """Wait for the running checkpoint, copy what is left, and give auto-checkpoints back to SQLite."""
        if self.thread is not None:
            self.thread.join()
        try:
            self.conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
        except sqlite3.Error:
            pass  # as SQLite's own auto-checkpoint: a failed copy loses nothing, the next one retries
        self.conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_AUTOCHECKPOINT}")


WAL_AUTOCHECKPOINT = 1000  # pages: SQLite's default, restored when a writer closes


@dataclass
class BatchWriter:
    """Collects rows and writes them in one transaction every `max_rows` rows or `max_seconds`.

    Past `checkpoint_rows` rows (about SQLite's 1,000-page auto-checkpoint) a background checkpointer
    takes over the WAL's checkpoints until `close()`, which every writer must reach (it flushes)."""

    conn: IndexConnection
    max_rows: int = 500
    max_seconds: float = 2.0
    checkpoint_rows: int = 8000
    pending: list[Row] = field(default_factory=list)
    last_flush: float = field(default_factory=time.monotonic)
    unchecked: int = 0
    checkpointer: _Checkpointer | None = None

    def add(self, rows: Iterable[Row]) -> None:
        self.pending.extend(rows)
        if len(self.pending) >= self.max_rows or time.monotonic() - self.last_flush >= self.max_seconds:
            self.flush()

    def flush(self) -> None:
        upsert_rows(self.conn, self.pending)
        self.conn.check_file()
        self.unchecked += len(self.pending)
        self.pending = []
        self.last_flush = time.monotonic()
        if self.unchecked >= self.checkpoint_rows:
            self.checkpointer = self.checkpointer or _Checkpointer(self.conn)
            self.checkpointer.start()
            self.unchecked = 0

    def close(self) -> None:
        """Flush, copy what is committed into the database file, and give checkpoints back to SQLite."""
        try:
            self.flush()
        finally:
            if self.checkpointer:
                self.checkpointer.close()
                self.checkpointer = None


def preset_of(spec: chart.Spec) -> dict[str, Any]:
    """The index's key columns that name a preset (independent of the drawing code's version)."""
    return {"style_name": spec.name, "img_size_px": spec.height if spec.width != spec.height else spec.width,
            "window_len": spec.window_len, "style_version": spec.version}


def preset_label(preset: dict[str, Any]) -> str:
    return "{style_name}|{img_size_px}|w{window_len}|v{style_version}".format(**preset)


@contextlib.contextmanager
def run_lock(settings: Settings, command: str, need_index: str | None = None) -> Iterator[None]:
    """One render/verify/repair at a time per index; a second one fails at once (exit 75).

    With `need_index` (advice for the user), a missing index fails first: no lock file is left beside it.
    """
    if need_index is not None and identify(settings.image_index_db) == "absent":
        raise IndexFileError(f"image index not found: {settings.image_index_db} ({need_index})")
    with exclusive_lock(settings.image_index_db + ".lock", f"image_cache {command}", wait_seconds=0):
        yield
