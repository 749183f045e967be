"""SQLite and lock helpers both databases use: write transactions, WAL checkpoints, flock-based locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import stat
import time
import urllib.parse
from collections.abc import Iterator

from image_cache.core.errors import ImageCacheError, LockFileError, LockHeld, storage_error


def file_uri(path: str, mode: str) -> str:
    """An SQLite URI for `path` opened with `mode` (ro, rw): quoted, since an unquoted `?` or `#` would
    end the path there and SQLite would open (or create) that shorter path instead."""
    return f"file:{urllib.parse.quote(os.path.abspath(path))}?mode={mode}"


def connect_readonly(path: str, immutable: bool = False) -> sqlite3.Connection:
    """`path` read-only, never created; autocommit, so that a reader's snapshot is the BEGIN it runs.

    `immutable` reads the file without the WAL index beside it, ignoring any WAL: see open_readonly."""
    return sqlite3.connect(file_uri(path, "ro") + ("&immutable=1" if immutable else ""), uri=True,
                           isolation_level=None)


def _wal_is_empty(path: str) -> bool:
    try:
        return os.path.getsize(path + "-wal") == 0
    except FileNotFoundError:
        return True


def open_readonly(path: str) -> sqlite3.Connection:
    """A database that writers hold `lock_path(path)` for, read-only and never created, also in a read-only
    folder: there SQLite cannot create the WAL index, and the file is opened immutable instead, but only while
    that is safe (no writer holds the lock and the WAL is empty): otherwise immutable would ignore the WAL and
    could serve stale pages. The plain open's OperationalError is raised where immutable is not safe."""
    conn = connect_readonly(path)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.OperationalError:
        conn.close()
        if os.access(os.path.dirname(os.path.abspath(path)), os.W_OK) or lock_is_held(lock_path(path)) \
                or not _wal_is_empty(path):
            raise
        return connect_readonly(path, immutable=True)
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE): committed when the block ends, rolled back on any error.

    The error that stopped the block is the one raised: SQLite may already have rolled back (a full disk
    does), and a ROLLBACK then failing must not hide it."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def checkpoint(conn: sqlite3.Connection) -> None:
    """Empty the WAL so that readers may open the file immutable."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def lock_path(db_path: str) -> str:
    return db_path + ".lock"


def _open_lock(path: str, flags: int) -> int:
    """Open the lock file at `path` relative to its folder, never through a link, never blocking (a pipe);
    LockFileError for a link or anything but a regular file."""
    folder = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = os.open(os.path.basename(path), flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644,
                     dir_fd=folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockFileError(f"lock file {path} is a symbolic link: refusing to open it; remove the link") from None
        raise
    finally:
        os.close(folder)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise LockFileError(f"lock file {path} is not a regular file: refusing to use it; remove it")
    if info.st_nlink > 1:  # another name for someone's file: writing the holder would change it
        os.close(fd)
        raise LockFileError(f"lock file {path} has other names (hard links): refusing to write into it; remove it")
    return fd


@contextlib.contextmanager
def exclusive_lock(path: str, purpose: str, wait_seconds: float = 0.0) -> Iterator[None]:
    """Hold an exclusive flock on `path`, recording `purpose` and our pid as the holder.

    Waits up to `wait_seconds`, then raises LockHeld naming the holder. The lock dies with the
    process (flock), so a crash never leaves a stale lock behind; on release the holder text is
    cleared while the lock is still held, so that the file names only a live holder.
    """
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        fd = _open_lock(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        raise storage_error("create lock file", path, exc) from None
    locked = False
    try:
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                locked = True
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise storage_error("lock", path, exc) from None
                if time.monotonic() >= deadline:
                    raise LockHeld(path, os.pread(fd, 4096, 0).decode(errors="replace").strip()) from None
                time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()}: {purpose}\n".encode(), 0)
        except OSError as exc:
            raise storage_error("write lock file", path, exc) from None
        yield
    finally:
        if locked:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
        os.close(fd)


def lock_is_held(path: str) -> bool:
    """True when some process holds the lock at `path` right now."""
    try:
        fd = _open_lock(path, os.O_RDONLY)
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
    """The ingest writer lock of a market database; a path that is not one is refused before the lock file
    is created next to it."""
    check_sqlite_file(db_path, "market database", "candles")
    return exclusive_lock(lock_path(db_path), purpose, wait_seconds)


SQLITE_HEADER = b"SQLite format 3\x00"


def check_sqlite_file(path: str, what: str, table: str) -> None:
    """Refuse, untouched, a path that exists and is not an SQLite file (a directory, a pipe, notes.txt),
    or is an SQLite file of someone else's: tables, none of them `table`.

    A missing or empty file, or an SQLite file without tables, is fine: it becomes a new database.
    """
    if path in ("", ":memory:"):  # SQLite's names for a database that vanishes when closed
        raise ImageCacheError(f"{path!r} names no {what} file")
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise storage_error(f"open {what}", path, exc) from None
    if not stat.S_ISREG(info.st_mode):
        raise ImageCacheError(f"{path}: not a {what}: not a regular file")
    if info.st_size == 0:
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise storage_error(f"read {what}", path, exc) from None
    if head != SQLITE_HEADER:
        raise ImageCacheError(f"{path}: not a {what}: not an SQLite file (it starts with {head[:8]!r})")
    try:
        conn = connect_readonly(path)
        try:
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise ImageCacheError(f"{path}: cannot read {what}: {exc}") from None
    if tables and table not in tables:
        raise ImageCacheError(f"{path}: not a {what}: an SQLite file without a {table} table "
                          f"(tables: {', '.join(sorted(tables)[:5])}); refusing to add tables to it")
