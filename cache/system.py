"""What worker processes need from the system: syncfs and malloc tuning (Linux libc calls with portable
fallbacks), and dying with the run that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import signal
import sys
import threading
from multiprocessing.connection import Connection

# glibc mallopt parameters (malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3


@functools.cache
def _libc() -> ctypes.CDLL | None:
    if sys.platform != "linux":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    except OSError:
        return None


def syncfs(path: str) -> None:
    """Flush the file system holding `path` to disk (os.sync where syncfs is missing)."""
    libc = _libc()
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc is None or not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


@functools.cache
def tune_allocator() -> None:
    """Keep freed image-sized buffers in the process instead of returning them to the kernel.

    Each image allocates a few MB of numpy temporaries; glibc serves those with fresh mmaps that
    page-fault on first use: measured 1,170 faults and ~3 ms of system time per 1280 px image, more
    than the drawing itself. Called once per worker process; a no-op where mallopt is missing (musl).
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "mallopt"):
        libc.mallopt(M_MMAP_THRESHOLD, 64 << 20)
        libc.mallopt(M_TRIM_THRESHOLD, 128 << 20)


def die_with_driver(lifeline: Connection) -> None:
    """End this worker process as soon as the driver ends, however it ends (even SIGKILL).

    `lifeline` is the read end of a pipe whose only write end the driver holds: the kernel closes it
    when the driver dies, and a thread blocked reading it then ends the worker. (A parent-death signal
    cannot do this: a pool worker's parent is the forkserver, which stays alive as long as the workers
    do.) Workers ignore SIGINT: on Ctrl-C the driver stops them, without a traceback from each.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_on_eof, args=(lifeline,), daemon=True, name="lifeline").start()


def _exit_on_eof(lifeline: Connection) -> None:
    try:
        while True:
            lifeline.recv_bytes()  # the driver never writes: this returns only at end of file
    except (EOFError, OSError):
        os._exit(1)
