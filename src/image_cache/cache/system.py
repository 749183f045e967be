"""What worker processes need from the system: syncfs and malloc tuning (Linux libc calls with portable
fallbacks), their loop, deaf to signals, and dying with the run that started them."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import queue
import signal
import sys
import threading
from multiprocessing.connection import Connection

from image_cache.core.errors import WorkerError
from image_cache.core.signals import SIGNALS, deferred

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


def start_forkserver() -> None:
    """Start the forkserver (when not running) with SIGINT, SIGTERM and SIGHUP ignored: it and every worker
    it forks keep that, so a signal sent to the whole process group (Ctrl-C, a closed terminal,
    `systemctl stop`) reaches the driver alone, which then stops its workers itself; no helper dies
    half-started with a traceback of its own. Blocked meanwhile in this process, so that one arriving
    then is not lost but delivered to the driver's own handler right after (Linux keeps a blocked
    signal pending even while it is ignored)."""
    import multiprocessing.forkserver

    with deferred():
        handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in SIGNALS}
        try:
            multiprocessing.forkserver.ensure_running()
        finally:
            for signum, handler in handlers.items():
                signal.signal(signum, handler if handler is not None else signal.SIG_DFL)


def serve(tasks: Connection, results: Connection) -> None:
    """A pool worker (cache/executors.py): runs each (function, item) that arrives on `tasks`, sending
    back (True, result) or (False, exception) on `results`, until `tasks` ends.

    The driver alone holds the write end of `tasks`, so its end of file comes when the driver is done
    or dies, however it dies (even SIGKILL), and the worker then exits at once, mid-item if need be. (A
    parent-death signal cannot do this: a worker's parent is the forkserver, which outlives the driver
    as long as the workers do.) A thread reads `tasks` while the item before runs, so the next item is
    ready when it ends and the driver never waits to send one.
    """
    for signum in SIGNALS:  # the driver stops the workers (also when the forkserver was started elsewhere)
        signal.signal(signum, signal.SIG_IGN)
    tune_allocator()
    queued: queue.SimpleQueue = queue.SimpleQueue()
    threading.Thread(target=_receive, args=(tasks, queued), daemon=True, name="tasks").start()
    while True:
        fn, item = queued.get()
        try:
            reply = (True, fn(item))
        except Exception as exc:
            reply = (False, exc)
        try:
            results.send(reply)
        except Exception as exc:  # a result or error that does not pickle: say so rather than hang the driver
            results.send((False, WorkerError(f"a worker could not send back its result: {exc!r}")))


def _receive(tasks: Connection, queued: queue.SimpleQueue) -> None:
    try:
        while True:
            queued.put(tasks.recv())
    except (EOFError, OSError):
        os._exit(0)
    except BaseException as exc:  # an item that does not unpickle: end; the driver reports a lost worker
        print(f"worker {os.getpid()}: cannot read its work: {exc!r}", file=sys.stderr, flush=True)
        os._exit(1)
