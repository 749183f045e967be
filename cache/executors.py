"""Where chunks of work run: in this process, a local process pool (forkserver), or a Dask cluster.

Every executor runs the same worker functions (cache/work.py) and yields their results to the driver,
which alone writes the index.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

from cache.system import die_with_driver, tune_allocator
from cache.work import Chunk
from config import Settings
from core.errors import MarketError

T = TypeVar("T")


def _pool_results(pool: ProcessPoolExecutor, fn: Callable[[Chunk], T], chunks: list[Chunk],
                  workers: int) -> Iterator[T]:
    """Results of chunks from a process pool, a bounded number in flight (flat memory).

    When a chunk fails, the chunks not yet started are cancelled before the error propagates.
    """
    pending: set[Future] = set()
    try:
        for chunk in chunks:
            pending.add(pool.submit(fn, chunk))
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (future.result() for future in done)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (future.result() for future in done)
    finally:
        for future in pending:
            future.cancel()


def _dask_results(fn: Callable[[Chunk], T], chunks: list[Chunk], scheduler: str) -> Iterator[T]:
    """Results of chunks from a Dask cluster, two per worker thread in flight: the scheduler never holds
    every chunk's candles at once. When a chunk fails, the chunks in flight are cancelled."""
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise MarketError("--executor dask needs the optional requirements: pip install -r requirements-dask.txt") from None
    if not chunks:
        return
    with Client(scheduler) as client:
        waiting = iter(chunks)
        in_flight = 2 * max(1, sum(client.nthreads().values()))
        running = as_completed([client.submit(fn, chunk, pure=False) for chunk in itertools.islice(waiting, in_flight)])
        try:
            for future in running:
                result = future.result()
                for chunk in itertools.islice(waiting, 1):
                    running.add(client.submit(fn, chunk, pure=False))
                yield result
        finally:
            client.cancel(list(running.futures))


def chunk_windows(total: int, workers: int) -> int:
    """Windows per chunk: small enough that every worker gets several chunks (even load), large
    enough that per-chunk costs (pickling the candles, one syncfs) stay small per image."""
    if workers <= 1:
        return 500
    return max(16, min(500, total // (workers * 8) or 16))


# Work items are chunks of windows (render, repair) or batches of files (verify --deep).
Run = Callable[[Callable[[Any], T], list[Any]], Iterator[T]]


@contextlib.contextmanager
def executor(settings: Settings) -> Iterator[Run]:
    """A function giving the results of `fn` over chunks, in completion order, on the configured executor.

    A local pool starts its workers at once (they import the drawing code and tune their allocator)
    so that they are ready when the driver has finished planning.
    """
    if settings.executor == "dask":
        yield lambda fn, chunks: _dask_results(fn, chunks, settings.scheduler)
        return
    if settings.workers == 1:
        yield lambda fn, chunks: (fn(chunk) for chunk in chunks)
        return
    # forkserver: workers never inherit the parent's SQLite connections.
    context = multiprocessing.get_context("forkserver")
    lifeline, keep_alive = context.Pipe(duplex=False)  # workers hold the read end, this process the write end
    pool = ProcessPoolExecutor(max_workers=settings.workers, mp_context=context,
                               initializer=die_with_driver, initargs=(lifeline,))
    try:
        for _ in range(settings.workers):
            pool.submit(tune_allocator)
        yield lambda fn, chunks: _pool_results(pool, fn, chunks, settings.workers)
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or failed: nobody will use the chunks in flight, so stop the
        # workers now rather than wait for them. Their finished files have no rows yet; repair adopts them.
        _stop_workers(pool)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        lifeline.close()
        keep_alive.close()


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    # ProcessPoolExecutor has no public way to stop its workers before Python 3.14 (terminate_workers).
    for process in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(ProcessLookupError, ValueError):
            process.terminate()
