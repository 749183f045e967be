"""Where chunks of work run: in this process, a local process pool (forkserver), or a Dask cluster.

Every executor runs the same worker functions (cache/work.py) and yields their results to the driver,
which alone writes the index.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection, wait
from typing import Any, NamedTuple, NoReturn, TypeVar, cast

from image_cache.cache.system import serve, start_forkserver
from image_cache.cache.work import Chunk
from image_cache.core import signals
from image_cache.core.errors import ImageCacheError, WorkerError
from image_cache.core.hooks import Warn, no_warn
from image_cache.settings import Settings

T = TypeVar("T")
STOP_S = 5.0  # how long ended workers get to exit before they are killed


class _Worker(NamedTuple):
    process: multiprocessing.process.BaseProcess
    tasks: Connection    # the write end: this process alone holds it (cache/system.py serve)
    results: Connection  # the read end: the worker alone holds the write end, so its death reads as end of file


def _start_workers(count: int) -> list[_Worker]:
    start_forkserver()
    # forkserver: workers never inherit the parent's SQLite connections.
    context = multiprocessing.get_context("forkserver")
    workers = []
    try:
        for _ in range(count):
            tasks_r, tasks_w = context.Pipe(duplex=False)
            results_r, results_w = context.Pipe(duplex=False)
            process = context.Process(target=serve, args=(tasks_r, results_w), daemon=True, name="image_cache worker")
            with signals.deferred():  # cut mid-handshake, the half-started worker would print a traceback
                process.start()
            tasks_r.close()
            results_w.close()
            workers.append(_Worker(process, tasks_w, results_r))
    except BaseException:
        _stop_workers(workers, at_once=True)
        raise
    return workers


def _stop_workers(workers: list[_Worker], at_once: bool) -> None:
    """End the workers and reap them, never waiting on one for more than a few seconds. Done (`at_once`
    false), closing `tasks` ends them; interrupted or failed, nobody will use what they are drawing, so
    they are killed: their finished files have no rows yet, which repair adopts."""
    for worker in workers:
        worker.tasks.close()
        if at_once:
            with contextlib.suppress(OSError):
                worker.process.kill()
    deadline = time.monotonic() + STOP_S
    for worker in workers:
        worker.process.join(max(0.0, deadline - time.monotonic()))
        if worker.process.exitcode is None:
            with contextlib.suppress(OSError):
                worker.process.kill()
            worker.process.join(1.0)
        worker.results.close()


def _pool_results(workers: list[_Worker], fn: Callable[[Any], T], items: list[Any]) -> Iterator[T]:
    """Results of `fn` over items from the workers, in completion order, two items in flight per worker
    (flat memory; each has its next item at hand). A worker is sent its next item when it returns one,
    so nothing is queued that an interruption or a failing item would have to drain: the caller's
    error or signal ends the run at once (`executor` then stops the workers)."""
    waiting = iter(items)
    owner = {worker.results: worker for worker in workers}
    in_flight = dict.fromkeys(owner, 0)

    def give(conn: Connection, count: int) -> None:
        for item in itertools.islice(waiting, count):
            try:
                owner[conn].tasks.send((fn, item))
            except OSError:
                _lost(owner[conn])
            in_flight[conn] += 1

    for conn in owner:
        give(conn, 2)
    while any(in_flight.values()):
        # wait() returns some of the Connections it is given (typed as any waitable)
        for conn in cast(list[Connection], wait([conn for conn, count in in_flight.items() if count])):
            try:
                ok, value = conn.recv()
            except (EOFError, OSError):
                _lost(owner[conn])
            if not ok:
                raise value
            in_flight[conn] -= 1
            give(conn, 1)
            yield value


def _lost(worker: _Worker) -> NoReturn:
    worker.process.join(1.0)
    raise WorkerError(f"a worker process ended unexpectedly (exit code {worker.process.exitcode})") from None


# How often a Dask run looks at its cluster.
DASK_POLL_S = 1.0


class _Watch:
    """The cluster's workers as this run sees them: a worker that leaves is said once (on `warn` and in
    `lost`); a cluster left without workers for `worker_wait` seconds stops the run (Dask itself would
    wait for ever). One scheduler call a second at most, whether or not results are coming."""

    def __init__(self, client: Any, scheduler: str | None, worker_wait: float, warn: Warn, lost: list[str]) -> None:
        self.client, self.scheduler, self.worker_wait, self.warn, self.lost = client, scheduler, worker_wait, warn, lost
        self.known: set[str] = set()
        self.alone_since: float | None = None
        self.looked = 0.0
        self.look(force=True)

    def look(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.looked < DASK_POLL_S:
            return
        self.looked = now
        present = set(self.client.nthreads())
        for address in sorted(self.known - present):
            self.lost.append(address)
            self.warn(f"Dask worker {address} left the cluster during the run; the scheduler runs its chunks "
                      f"again on the others ({len(present)} left)")
        self.known = present
        if present:
            self.alone_since = None
        elif self.alone_since is None:
            self.alone_since = now
        elif now - self.alone_since > self.worker_wait:
            raise WorkerError(f"the Dask cluster at {self.scheduler} has had no worker for {self.worker_wait:g} s "
                              "(--worker-wait): stopped; repair adopts the files already written")


def _interrupted_wait(record: logging.LogRecord) -> bool:
    """distributed's `sync()`, interrupted before it has a future (our Ctrl-C or SIGTERM while the main thread
    waits on Dask), schedules a cancel that fails with a NameError, and tornado logs that with its traceback
    on stderr; the run has already stopped with its one line. The record is dropped; any other is kept."""
    return "sync.<locals>.cancel" not in record.getMessage()


def _dask_results(fn: Callable[[Chunk], T], chunks: list[Chunk], scheduler: str | None, worker_wait: float,
                  warn: Warn = no_warn, lost: list[str] | None = None) -> Iterator[T]:
    """Results of chunks from a Dask cluster, two per worker thread in flight: the scheduler never holds
    every chunk's candles at once. When a chunk fails, the chunks in flight are cancelled."""
    try:
        from distributed import Client, wait
    except ImportError:
        raise ImageCacheError("--executor dask needs the optional requirements: pip install 'image-cache[dask]' "
                              "(a checkout: make venv)") from None
    if not chunks:
        return
    # Kept once added (a filter is added once): the record can come from Dask's thread after this run ends.
    logging.getLogger("tornado.application").addFilter(_interrupted_wait)
    with _connect(Client, scheduler) as client:
        watch = _Watch(client, scheduler, worker_wait, warn, [] if lost is None else lost)
        waiting = iter(chunks)
        in_flight = 2 * max(1, sum(client.nthreads().values()))
        pending = {client.submit(fn, chunk, pure=False) for chunk in itertools.islice(waiting, in_flight)}
        try:
            while pending:
                signals.check()  # a Stopped raised inside one of Dask's finalisers is dropped there
                try:
                    done, pending = wait(pending, timeout=DASK_POLL_S, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    done = set()
                watch.look()
                for future in done:
                    result = _result(future, scheduler)
                    pending |= {client.submit(fn, chunk, pure=False) for chunk in itertools.islice(waiting, 1)}
                    yield result
            watch.look(force=True)  # a worker lost near the end is said too
        finally:
            client.cancel(list(pending))


def _result(future: Any, scheduler: str | None) -> Any:
    """A chunk's result; a cluster that cannot load our tasks (the scheduler or a worker lacks this package)
    said as such, not as Dask's "Error during deserialization of the task graph"."""
    try:
        return future.result()
    except (RuntimeError, ImportError) as exc:
        if isinstance(exc, ImportError) or "deserializ" in str(exc):
            raise WorkerError(f"the Dask cluster at {scheduler} cannot load image_cache's tasks "
                              f"({(str(exc).splitlines() or [type(exc).__name__])[0]}): "
                              "install this package, the same build, where the scheduler and every worker "
                              "run (docs/scaling.md)") from None
        raise


def _connect(client_class: Any, scheduler: str | None) -> Any:
    """A client of the scheduler, or one line saying why not (within Dask's connect timeout)."""
    try:
        return client_class(scheduler)
    except (OSError, TimeoutError, ValueError) as exc:
        raise WorkerError(f"cannot reach the Dask scheduler at {scheduler}: {exc}") from None


def chunk_windows(total: int, workers: int) -> int:
    """Windows per chunk: small enough that every worker gets several chunks (even load), large
    enough that per-chunk costs (pickling the candles, one syncfs) stay small per image."""
    if workers <= 1:
        return 500
    return max(16, min(500, total // (workers * 8) or 16))


# Work items are chunks of windows (render, repair) or batches of files (verify --deep).
Run = Callable[[Callable[[Any], T], list[Any]], Iterator[T]]


@contextlib.contextmanager
def executor(settings: Settings, warn: Warn = no_warn, lost: list[str] | None = None) -> Iterator[Run]:
    """A function giving the results of `fn` over chunks, in completion order, on the configured executor.
    Dask workers that leave during the run are said on `warn` and added to `lost`.

    A local pool starts its workers at once (they import the drawing code and tune their allocator)
    so that they are ready when the driver has finished planning.
    """
    if settings.executor == "dask":
        yield lambda fn, chunks: _dask_results(fn, chunks, settings.scheduler, settings.worker_wait, warn, lost)
        return
    if settings.workers == 1:
        yield lambda fn, chunks: (fn(chunk) for chunk in chunks)
        return
    workers = _start_workers(settings.workers)
    try:
        yield lambda fn, chunks: _pool_results(workers, fn, chunks)
    except BaseException:
        _stop_workers(workers, at_once=True)
        raise
    _stop_workers(workers, at_once=False)
