"""The worker side: draw one chunk of windows, write the files, return the index rows.

Runs in process workers or on Dask workers; it never opens a database. The driver sends each chunk
the candle arrays it needs, so every worker draws from the same market snapshot.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from image_cache import chart
from image_cache.cache import layout
from image_cache.cache.index import ENGINE_PREFIX, Row
from image_cache.cache.layout import relative_path, relative_paths, sync_tree
from image_cache.cache.root import FileQueue, RootError, Tree
from image_cache.cache.system import tune_allocator
from image_cache.cache.windows import Series, fingerprint, unsound_before, unsound_candle, window_rows
from image_cache.chart import kernel
from image_cache.core import compiled
from image_cache.core.errors import ImageCacheError, WorkerError
from image_cache.core.grid import month_index


@dataclass(frozen=True)
class Chunk:
    """Windows of one series and month to draw (or, with `compare`, to check against files)."""

    spec: chart.Spec
    preset: dict
    image_root: str
    series: Series          # only the rows these windows need
    last: np.ndarray         # indices into `series` of each window's last candle
    reason: tuple[str | None, ...]  # reason recorded with each image (e.g. 'gap' under policy render)
    code: str = field(default_factory=compiled.code_identity)  # the driver's code: workers must run the same

    @cached_property
    def unsound(self) -> np.ndarray:
        """windows.unsound_before of the chunk's candles: checked once a chunk, in the worker."""
        return unsound_before(self.series)


def require_built(chunk: Chunk | None = None) -> None:
    """Fail at once where the compiled drawing kernel or file writer is missing or stale (core/compiled.py),
    or where this worker runs other code than the driver that made `chunk` (a Dask worker on another
    install): its images would differ from the driver's under the same preset."""
    compiled.require_built(kernel.kernel, layout.FILE_WRITER)
    if chunk is not None and chunk.code != compiled.code_identity():
        raise ImageCacheError(f"a worker on {socket.gethostname()} runs image_cache {compiled.code_identity()}, "
                              f"the driver {chunk.code}: install the same build on every worker "
                              "(docs/scaling.md)")


def image_path(spec: chart.Spec, symbol: str, interval: str, end_open_time_ms: int) -> str:
    return relative_path(symbol, interval, end_open_time_ms, spec.size_label, spec.window_len, spec.file_tag,
                         spec.version)


def image_paths(spec: chart.Spec, symbol: str, interval: str, end_open_times_ms: np.ndarray) -> list[str]:
    return relative_paths(symbol, interval, end_open_times_ms, spec.size_label, spec.window_len, spec.file_tag,
                          spec.version)


def base_rows(chunk: Chunk, end_ms: np.ndarray) -> list[Row]:
    """A `missing` row, with its file path, for each window end time of the chunk's series."""
    s, spec = chunk.series, chunk.spec
    paths = image_paths(spec, s.symbol, s.interval, end_ms)
    return [Row(symbol=s.symbol, interval=s.interval, end_open_time_ms=end, spec_hash=spec.spec_hash, file_path=path,
                status="missing", **chunk.preset) for end, path in zip(np.asarray(end_ms).tolist(), paths, strict=True)]


def draw_window(chunk: Chunk, last: int) -> tuple[chart.Drawn, str]:
    """The drawn image and the input fingerprint of one window (ChartError carries the fingerprint
    as `fingerprint` when the engine refuses the window, or its candles break a rule of ingest's)."""
    rows = window_rows(int(last), chunk.spec.window_len, chunk.spec.history)
    s = chunk.series
    input_fingerprint = fingerprint(s, rows)
    try:
        if chunk.unsound[rows.stop] > chunk.unsound[rows.start]:
            raise chart.ChartError(unsound_candle(s, rows))
        return chart.render(chunk.spec, s.times[rows], s.ohlcv[rows]), input_fingerprint
    except chart.ChartError as exc:
        exc.fingerprint = input_fingerprint
        raise


def draw_chunk(chunk: Chunk, sync: bool = False) -> list[Row]:
    """Draw each window, write its file (file first), and return the rows for the driver to index.

    A window the engine cannot draw (e.g. a jkx window with no price range) becomes an `undrawable`
    row with the engine's reason (and its input fingerprint, so that changed candles re-try it); any
    other error fails the chunk and is reported by the driver. The driver flushes the files to disk
    before it commits their rows (cache/durable.py); with `sync`, on a machine whose page cache the
    driver cannot flush (a Dask worker), the chunk does it before returning.
    """
    require_built(chunk)
    tune_allocator()
    out = []
    # The files are written on a thread of their own while the next images are drawn.
    with FileQueue[Row](chunk.image_root) as files, Tree(chunk.image_root) as tree:
        for row, last, reason in zip(base_rows(chunk, chunk.series.times[chunk.last]), chunk.last, chunk.reason,
                                     strict=True):
            if files.failed:  # a file could not be written: drawing more would be wasted
                break
            taken = _taken(tree, row.file_path)
            if taken:  # a row that says so: the window is judged, and drawn once the path is free
                row.reason = f"blocked: {taken} is at this path, not ours, left alone"
                out.append(row)
                continue
            try:
                drawn, row.input_fingerprint = draw_window(chunk, last)
            except chart.ChartError as exc:
                row.status, row.reason = "undrawable", f"{ENGINE_PREFIX}{exc}"
                row.input_fingerprint = exc.fingerprint
                with contextlib.suppress(RootError):  # file first: an image drawn before is stale (else repair's)
                    tree.remove(row.file_path)
                out.append(row)
                continue
            files.add(row.file_path, drawn.png, _ok_row(row, chunk.spec, drawn, reason))  # never through a link
        written, failure = files.finish()
    out += written
    if failure is not None:
        path, error = failure
        detail = (f"{path}: {error}" if isinstance(error, RootError)
                  else f"{os.path.join(chunk.image_root, path)}: {error.strerror or error}")
        raise WorkerError(f"cannot write {detail}", _synced(chunk, out, sync))
    return _synced(chunk, out, sync)


def settle_chunk(chunk: Chunk, sync: bool = False) -> tuple[list[Row], str | None]:
    """draw_chunk for repair: the rows, and why the chunk stopped when it could not write (its folder
    unwritable, the disk full), so that one failed chunk never stops the others from settling."""
    try:
        return draw_chunk(chunk, sync), None
    except WorkerError as exc:
        return exc.rows, exc.message


def _taken(tree: Tree, path: str) -> str | None:
    """What is at the image's path when it is a folder, pipe or link: not ours, never replaced (verify
    reports it). A link on the way is left to the write, which refuses it and names it."""
    try:
        kind = tree.entry(path)
    except (RootError, OSError):
        return None
    return None if kind in (None, "file") else kind


def _synced(chunk: Chunk, rows: list[Row], sync: bool) -> list[Row]:
    """The rows, once their files are on disk when this chunk must flush them itself. A failed flush
    fails the chunk with the rows of no file (the files are left to repair)."""
    if sync and any(row.status == "ok" for row in rows):
        try:
            sync_tree(chunk.image_root)
        except OSError as exc:
            raise WorkerError(f"cannot flush {chunk.image_root} to disk: {exc.strerror or exc}",
                              [row for row in rows if row.status != "ok"]) from None
    return rows


def _ok_row(row: Row, spec: chart.Spec, drawn: chart.Drawn, reason: str | None) -> Row:
    row.status, row.reason = "ok", reason
    row.sha256 = hashlib.sha256(drawn.png).hexdigest()
    row.pixel_hash, row.pixel_hash_version = drawn.pixel_hash, chart.PIXEL_HASH_VERSION
    row.width_px, row.height_px, row.file_size = spec.width, spec.height, len(drawn.png)
    return row


def adopt_chunk(chunk: Chunk) -> tuple[list[Row], list[str]]:
    """For files on disk without rows: rows for those equal to a fresh render, and the paths of the
    others (which repair removes). Nothing is written."""
    require_built(chunk)
    tune_allocator()
    adopted, rejected = [], []
    with Tree(chunk.image_root) as tree:
        for row, last, reason in zip(base_rows(chunk, chunk.series.times[chunk.last]), chunk.last, chunk.reason,
                                     strict=True):
            try:
                drawn, row.input_fingerprint = draw_window(chunk, last)
            except chart.ChartError:
                rejected.append(row.file_path)
                continue
            try:
                same = tree.read(row.file_path)[1] == drawn.png
            except (OSError, RootError):
                same = False
            if same:
                adopted.append(_ok_row(row, chunk.spec, drawn, reason))
            else:
                rejected.append(row.file_path)
    return adopted, rejected


def split_months(series: Series, last: np.ndarray, reasons: list[str | None], spec: chart.Spec, preset: dict,
                 image_root: str, max_windows: int = 500) -> list[Chunk]:
    """Cut a series' windows into chunks within one calendar month (of the window end) and of at most
    `max_windows` windows, each carrying only the candle rows its windows need."""
    if len(last) == 0:
        return []
    months = month_index(series.times[last])
    bounds = np.flatnonzero(np.diff(months)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(last)]])
    bounds = np.unique(np.concatenate([bounds] + [np.arange(s + max_windows, e, max_windows)
                                                 for s, e in zip(starts, ends, strict=True)])).astype(np.int64)
    chunks = []
    for part in np.split(np.arange(len(last)), bounds):
        lasts = last[part]
        lo = int(lasts[0]) - (spec.window_len - 1) - spec.history
        hi = int(lasts[-1]) + 1
        piece = Series(series.symbol, series.interval, series.times[lo:hi], series.ohlcv[lo:hi])
        chunks.append(Chunk(spec, preset, image_root, piece, lasts - lo, tuple(reasons[i] for i in part)))
    return chunks
