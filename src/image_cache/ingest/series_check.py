"""validate()'s rules for one file read as a stream of chunks: memory follows a chunk, not the file.

SeriesCheck takes a file's rows chunk by chunk, in file order or in time order, and carries across
chunk boundaries what the whole-array rules need: the last row (time order, duplicates), counts of
rows, duplicates and off-grid times, the first off-grid time, the smallest step between grid slots.
The error a file gets does not depend on the chunk size: within the rows read so far the earliest
line breaking a rule is named (row rules, then the file's period, then series rules on the same line).
Files that state a close time per row (Binance klines) pass it along: it takes part in the duplicate
comparison, and a close that is not the interval's last millisecond flags the candle, as in validate().

stream_or_sort validates a whole file this way for every source that streams one (a CSV file, a large
archive member): in one pass when its rows are in time order, else sorted through a staging table.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from image_cache.core.errors import ImageCacheError, MarketError
from image_cache.core.grid import close_time_ms, grid_index, iso_utc, on_grid
from image_cache.ingest.schema import CANDLE_COLUMNS
from image_cache.ingest.staging import Staged
from image_cache.ingest.validate import fail, off_grid_error, period_error, row_error, spacing_code, sparse_error

# Rows of a file as they are read: candles (CANDLE_DTYPE, times in ms), their line numbers, and their
# close times in ms (None for a file that states none).
Chunk = tuple[np.ndarray, np.ndarray, np.ndarray | None]


class OutOfOrder(Exception):
    """Rows go back in time at `line`: the file must be sorted before its series rules can run."""

    def __init__(self, line: int):
        super().__init__(f"line {line} goes back in time")
        self.line = line


@dataclass(frozen=True)
class Tally:
    """What became of a file's rows once all of them passed: the counts a FileOutcome records."""

    rows_read: int
    dropped: int
    flagged: int
    time_unit: str


class ChunkSink(Protocol):
    """Where validated chunks go (the file's transaction, or memory); `conn` also holds a staging table."""

    conn: sqlite3.Connection

    def write(self, candles: np.ndarray) -> None: ...

    def restart(self) -> None: ...


def file_order_error(name: str, chunk: np.ndarray, first_line: int,
                     period: tuple[int, int] | None) -> tuple[int, MarketError] | None:
    """The earliest row of `chunk` (on consecutive lines) breaking a row rule or the period, with its error."""
    found = [bad for bad in (row_error(name, chunk, first_line),
                             None if period is None else period_error(name, chunk["open_time"], first_line, period))
             if bad is not None]
    return min(found, key=lambda bad: bad[0]) if found else None


class SeriesCheck:
    """The rules of validate() over one file's candles fed in chunks (CANDLE_DTYPE, times in ms)."""

    def __init__(self, name: str, interval: str, period: tuple[int, int] | None = None):
        self.name = name
        self.interval = interval
        self.period = period  # [start, end) in ms that every open time must lie in
        self.rows_read = 0
        self.unique = 0
        self.dropped = 0
        self.off = 0
        self.flagged = 0  # off the grid, or a close time other than the interval's last millisecond
        self.first_off: tuple[int, int] | None = None  # (open time, line)
        self.second_line: int | None = None
        self.min_step: int | None = None
        self.last: np.ndarray | None = None  # the last row fed, as a 1-row array
        self.last_close: np.ndarray | None = None  # and its close time, when the file states them
        self.last_line = 0
        self.last_slot = 0

    def feed(self, chunk: np.ndarray, lines: np.ndarray, *, rows: bool = True,
             closes: np.ndarray | None = None) -> np.ndarray:
        """The next rows of the file (row i on line `lines[i]`): the unique ones back, in time order.

        Raises MarketError for the earliest line breaking a row rule or the period (`rows`: rows in
        file order, on consecutive lines) or repeating an open time with other values (`closes`: the
        rows' close times in ms, compared too), or OutOfOrder for the first row earlier than the row
        before it.
        """
        if len(chunk) == 0:
            return chunk
        carry = self.last is not None
        rows_all = np.concatenate((self.last, chunk)) if self.last is not None else chunk
        lines_all = np.concatenate(([self.last_line], lines)) if carry else lines
        closes_all = None
        if closes is not None:
            closes_all = np.concatenate((self.last_close, closes)) if carry and self.last_close is not None else closes
        times = rows_all["open_time"]
        step = np.diff(times)
        # Pair k (rows k, k + 1 of rows_all) names row k + 1 - carry of this chunk.
        found: list[tuple[int, int, Exception]] = []
        if rows and (bad := file_order_error(self.name, chunk, int(lines[0]), self.period)) is not None:
            found.append((bad[0], 0, bad[1]))
        if (back := np.flatnonzero(step < 0)).size:
            found.append((int(back[0]) + 1 - carry, 3, OutOfOrder(int(lines_all[back[0] + 1]))))
        same = np.flatnonzero(step == 0)
        if same.size:
            a, b = rows_all[same], rows_all[same + 1]
            equal = np.ones(len(same), dtype=bool)
            for col in CANDLE_COLUMNS[1:]:
                equal &= a[col] == b[col]
            if closes_all is not None and len(closes_all) == len(rows_all):
                equal &= closes_all[same] == closes_all[same + 1]
            if (other := np.flatnonzero(~equal)).size:
                k = int(same[other[0]])
                i, j = sorted((int(lines_all[k]), int(lines_all[k + 1])))
                found.append((k + 1 - carry, 2, fail(self.name, j, "duplicate open time",
                                                     f"open_time {iso_utc(int(times[k]))} also on line {i} "
                                                     "with other values")))
        if found:
            raise min(found, key=lambda f: f[:2])[2]

        keep = np.ones(len(chunk), dtype=bool)
        keep[same + 1 - carry] = False
        kept, kept_lines = chunk[keep], lines[keep]
        self.rows_read += len(chunk)
        self.dropped += len(chunk) - len(kept)
        self.last, self.last_line = chunk[-1:].copy(), int(lines[-1])
        self.last_close = None if closes is None else closes[-1:].copy()
        if len(kept):
            self._series(kept, kept_lines, None if closes is None else closes[keep])
        return kept

    def _series(self, kept: np.ndarray, lines: np.ndarray, closes: np.ndarray | None) -> None:
        times = kept["open_time"]
        off = ~np.asarray(on_grid(self.interval, times), dtype=bool)
        if self.first_off is None and off.any():
            at = int(np.flatnonzero(off)[0])
            self.first_off = int(times[at]), int(lines[at])
        self.off += int(off.sum())
        flags = off if closes is None else off | (closes != close_time_ms(self.interval, times) - 1)
        self.flagged += int(flags.sum())
        slots = np.asarray(grid_index(self.interval, times), dtype=np.int64)
        steps = np.diff(slots if self.unique == 0 else np.concatenate(([self.last_slot], slots)))
        if steps.size:
            smallest = int(steps.min())
            self.min_step = smallest if self.min_step is None else min(self.min_step, smallest)
        if self.unique < 2 <= self.unique + len(kept):
            self.second_line = int(lines[1 - self.unique])
        self.unique += len(kept)
        self.last_slot = int(slots[-1])

    def finish(self, looks: Callable[[], str], time_unit: str) -> Tally:
        """The file's counts once every row is fed; rejects data of another interval as validate() does.

        `looks`: what the file's rows look like (the interval of their median spacing), for the message.
        """
        if self.unique == 0:
            raise fail(self.name, None, "no rows", "the file has no data rows")
        if self.off * 2 > self.unique:
            assert self.first_off is not None
            time, line = self.first_off
            raise off_grid_error(self.name, self.interval, line, self.off, self.unique, time, looks)
        if self.unique >= 3 and self.min_step is not None and self.min_step > 1:
            assert self.second_line is not None
            raise sparse_error(self.name, self.interval, self.second_line, looks)
        return Tally(self.rows_read, self.dropped, self.flagged, time_unit)


@dataclass(frozen=True)
class FileRows:
    """One file as stream_or_sort reads it: what differs between the sources that stream files."""

    name: str
    interval: str
    # A pass over the rows from the first data line, again on each call; raises for a file without rows.
    chunks: Callable[[], Generator[Chunk, None, None]]
    # The file's time unit, once a pass has read every row.
    time_unit: Callable[[], str]
    # Text read at a time; rows come back from staging chunk_bytes // 32 at a time, so memory follows it there too.
    chunk_bytes: int
    # [start, end) in ms that every open time must lie in (an archive's day or month).
    period: tuple[int, int] | None = None
    # Whether the chunks carry close times (staged with the rows).
    closes: bool = False
    # What to try, added to the rejection of rows off the grid but spaced like the interval.
    hint: str | None = None


class _NeedsSorting(Exception):
    """The one pass in file order cannot finish: rows go back in time, or a message needs all their spacing."""


def stream_or_sort(rows: FileRows, sink: ChunkSink) -> Tally:
    """Validate a file into `sink` chunk by chunk, by validate()'s rules.

    A file in time order (the usual one) is read once; one that goes back in time, or is rejected as
    another interval's data, is read again and sorted through a staging table, so that memory never
    follows the file.
    """
    try:
        return _in_file_order(rows, sink)
    except _NeedsSorting:
        sink.restart()
    return _sorted(rows, sink)


def _in_file_order(rows: FileRows, sink: ChunkSink) -> Tally:
    check = SeriesCheck(rows.name, rows.interval, rows.period)
    # Closed however the loop ends: an archive's member stays open while its pass runs.
    with contextlib.closing(rows.chunks()) as chunks:
        try:
            for candles, lines, closes in chunks:
                if len(kept := check.feed(candles, lines, closes=closes)):
                    sink.write(kept)
        except OutOfOrder:
            raise _NeedsSorting from None

    def looks() -> str:
        raise _NeedsSorting

    return check.finish(looks, rows.time_unit())


def _sorted(rows: FileRows, sink: ChunkSink) -> Tally:
    """Row and period rules in file order, then the series rules in time order through a staging table,
    then the writes (a rejected file costs no writes)."""
    batch = max(1, rows.chunk_bytes // 32)
    with Staged(sink.conn, closes=rows.closes) as staged:
        with contextlib.closing(rows.chunks()) as chunks:
            for candles, lines, closes in chunks:
                if (bad := file_order_error(rows.name, candles, int(lines[0]), rows.period)) is not None:
                    raise bad[1]
                staged.add(candles, lines, closes)
        check = SeriesCheck(rows.name, rows.interval)
        for candles, lines, closes in staged.in_time_order(batch):
            check.feed(candles, lines, rows=False, closes=closes)

        def looks() -> str:
            return spacing_code(staged.median_spacing())

        try:
            tally = check.finish(looks, rows.time_unit())
        except ImageCacheError as exc:
            # Spaced like the declared interval but off its grid: the hint says what the stamps may be.
            if (rows.hint is not None and ": interval: " in str(exc) and check.unique > 1
                    and looks() == rows.interval):
                raise MarketError(f"{exc} ({rows.hint})") from None
            raise
        unique = SeriesCheck(rows.name, rows.interval)
        for candles, lines, closes in staged.in_time_order(batch):
            if len(kept := unique.feed(candles, lines, rows=False, closes=closes)):
                sink.write(kept)
    return tally
