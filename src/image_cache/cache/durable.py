"""Index rows committed only once their files are on disk, without the drawing waiting for the disk.

A row may point at a file only when a crash or a power loss can no longer take the file away. Each
worker used to call syncfs at the end of each chunk and wait for it; each syncfs flushes the whole
file system (other programs' writes too), so workers spent much of their time waiting for disks, and
more workers meant more flushes. Here the driver hands the rows it receives to a `SyncedWriter`: one
syncfs at a time runs in a background thread (ctypes releases the GIL) while the workers keep drawing,
and the rows received before that syncfs began are committed when it returns. Files written by Dask
workers on other machines sit in their page caches, not ours: those workers sync before returning.
"""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

from image_cache.cache import index
from image_cache.cache.index import Row
from image_cache.cache.layout import sync_tree
from image_cache.core.errors import storage_error


class SyncedWriter:
    """Takes rows whose files were written under `root`; commits them in batches once a syncfs that
    started after they arrived has returned. A failed syncfs commits none of the rows it covered
    (their files have no rows: repair adopts them) and is a StorageError naming the failure."""

    def __init__(self, conn: index.IndexConnection, root: str) -> None:
        self.root = root
        self.writer = index.BatchWriter(conn)
        self.unsynced: list[Row] = []
        self.syncing: list[Row] = []
        self.sync: Future | None = None
        # Its one thread ends when the writer is dropped.
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="syncfs")

    def add(self, rows: Iterable[Row]) -> None:
        rows = list(rows)
        self.unsynced += [row for row in rows if row.status == "ok"]
        # Only rows of written files wait: a row without a file names nothing a crash can take away.
        self.writer.add([row for row in rows if row.status != "ok"])
        self._step(wait=False)

    def flush(self) -> None:
        """Commit every row handed in so far, waiting for their files to reach the disk."""
        self._drain()
        self.writer.flush()

    def close(self) -> None:
        """Commit every row whose file is on disk, then close the batch writer (every writer ends so)."""
        try:
            self._drain()
        finally:
            self.writer.close()

    def _drain(self) -> None:
        while self.sync is not None or self.unsynced:
            self._step(wait=True)

    def _step(self, wait: bool) -> None:
        if self.sync is not None and (wait or self.sync.done()):
            sync, covered = self.sync, self.syncing
            self.sync, self.syncing = None, []
            try:
                sync.result()
            except OSError as exc:  # the rows it covered are never committed
                raise storage_error("flush to disk", self.root, exc) from None
            self.writer.add(covered)
        if self.sync is None and self.unsynced:
            self.syncing, self.unsynced = self.unsynced, []
            self.sync = self.pool.submit(sync_tree, self.root)
