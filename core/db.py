"""SQLite and lock helpers both databases use: write transactions, WAL checkpoints, flock-based locks."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sqlite3
import time
from collections.abc import Iterator

from core.errors import LockHeld

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
