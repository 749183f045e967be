"""Ingest one parsed input file into market.sqlite and record what became of it.

Shared by every file source (Binance Vision zips, the downloader, CSV files): the per-file transaction,
the `ingested_files` registry and the summary result a command returns. The writer session they run in is
schema.py's `writer` (gaps.py, below this module, uses it too).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import Any

import numpy as np

from image_cache.core.db import immediate
from image_cache.core.errors import ImageCacheError
from image_cache.core.grid import add_months, day_ms, utc_now
from image_cache.ingest.gaps import refresh_gaps_between
from image_cache.ingest.schema import open_times, series_id, upsert_candles
from image_cache.ingest.series_check import Tally
from image_cache.ingest.validate import Validated
from image_cache.ingest.venues import BINANCE_SPOT, Venue

PERIOD_RE = re.compile(r"^[0-9]{4}-[0-9]{2}(-[0-9]{2})?$")


@dataclass(frozen=True)
class SourceFile:
    """An input file as the registry knows it; symbol/interval/period are None when unparsable.

    `symbol` is the series name (ingest/venues.py: the venue is part of it except for Binance spot);
    `venue` is where the rows come from, checked against the series' recorded venue when written.
    """

    path: str
    file_name: str
    sha256: str | None
    size_bytes: int | None
    source: str
    symbol: str | None = None
    interval: str | None = None
    period: str | None = None
    venue: Venue = BINANCE_SPOT


@dataclass(frozen=True)
class FileOutcome:
    path: str
    file_name: str
    status: str
    reason: str | None = None
    symbol: str | None = None
    interval: str | None = None
    period: str | None = None
    time_unit: str | None = None
    rows_read: int = 0
    rows_inserted: int = 0
    rows_revised: int = 0
    rows_dropped: int = 0
    rows_flagged: int = 0
    rows_withdrawn: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _storable(text: str) -> str:
    """A path as valid UTF-8 text: file names with undecodable bytes keep them as \\xNN escapes."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def record(conn: sqlite3.Connection, src: SourceFile, outcome: FileOutcome) -> None:
    """The one way a row enters `ingested_files` (every file source, and the sample market's symbols)."""
    conn.execute(
        """INSERT INTO ingested_files(path, file_name, sha256, size_bytes, source, symbol, interval, period,
               status, reason, rows_read, rows_inserted, rows_revised, rows_dropped, rows_flagged, rows_withdrawn,
               ingested_utc)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        (_storable(src.path), _storable(src.file_name), src.sha256, src.size_bytes, src.source, src.symbol,
         src.interval, src.period,
         outcome.status, outcome.reason, outcome.rows_read, outcome.rows_inserted, outcome.rows_revised,
         outcome.rows_dropped, outcome.rows_flagged, outcome.rows_withdrawn, utc_now()))


def _outcome(src: SourceFile, status: str, reason: str | None = None, **counts: Any) -> FileOutcome:
    return FileOutcome(src.path, src.file_name, status, reason, src.symbol, src.interval, src.period, **counts)


def record_only(conn: sqlite3.Connection, src: SourceFile, status: str, reason: str | None = None) -> FileOutcome:
    """Record a file that writes no candles (rejected or skipped), in its own transaction."""
    outcome = _outcome(src, status, reason)
    with immediate(conn):
        record(conn, src, outcome)
    return outcome


def reject(conn: sqlite3.Connection, src: SourceFile, reason: str) -> FileOutcome:
    return record_only(conn, src, "rejected", reason)


def already_ingested(conn: sqlite3.Connection, src: SourceFile, verified: bool) -> bool:
    """True when these exact bytes are the current version of this file and nothing would change now.

    A file is known by its series and period (archives) or its name (other files). The registry
    keeps every version: ingesting an older version again after a re-issue is a revision, not a
    repeat; the same bytes under another period's name are parsed (and rejected for their rows).
    An earlier unverified ingest is redone once a checksum verifies the file, so that the registry
    ends up saying `ok`.
    """
    key, value = ("period", src.period) if src.period is not None else ("file_name", _storable(src.file_name))
    latest = conn.execute(
        f"SELECT sha256, status FROM ingested_files WHERE symbol IS ? AND interval IS ? AND {key} = ? "
        "AND status IN ('ok', 'unverified') ORDER BY id DESC LIMIT 1", (src.symbol, src.interval, value)).fetchone()
    if latest is None or latest[0] != src.sha256:
        return False
    return latest[1] == "ok" or not verified


def skipped(conn: sqlite3.Connection, src: SourceFile) -> FileOutcome:
    return record_only(conn, src, "skipped", "same SHA-256 as an earlier ingest")


def period_days(period: str) -> tuple[date, date]:
    """The first day of an archive period, `YYYY-MM` or `YYYY-MM-DD`, and the day after its last
    (ValueError for a date that does not exist, or whose end does not: 9999-12-31)."""
    if len(period) == 10:
        first = date.fromisoformat(period)
        if first == date.max:
            raise ValueError(f"{period} has no next day")
        return first, first + timedelta(days=1)
    first = date.fromisoformat(period + "-01")
    return first, add_months(first, 1)


def period_span(period: str | None) -> tuple[int, int] | None:
    """[start, end) in epoch ms of an archive period; None for anything else."""
    if period is None or not PERIOD_RE.match(period):
        return None
    first, end = period_days(period)
    return day_ms(first), day_ms(end)


def withdraw(conn: sqlite3.Connection, sid: int, span: tuple[int, int], keep: np.ndarray) -> int:
    """Delete the series' rows in `span` whose open time is not in `keep` (sorted); how many."""
    inside = int(np.count_nonzero((keep >= span[0]) & (keep < span[1])))
    # After the upsert every kept row is stored: equal counts mean there is nothing else there.
    if conn.execute("SELECT COUNT(*) FROM candles WHERE series_id = ? AND open_time >= ? AND open_time < ?",
                    (sid, *span)).fetchone()[0] == inside:
        return 0
    stored = open_times(conn, "SELECT open_time FROM candles WHERE series_id = ? AND open_time >= ? AND open_time < ?",
                        (sid, *span))
    gone = stored[~np.isin(stored, keep, assume_unique=True)] if len(stored) else stored
    conn.executemany("DELETE FROM candles WHERE series_id = ? AND open_time = ?", [(sid, int(t)) for t in gone])
    return len(gone)


def write_file(conn: sqlite3.Connection, src: SourceFile, parsed: Validated, *, verified: bool) -> FileOutcome:
    """Upsert one validated file and record it, in one transaction: all of it or none.

    An archive holds the whole of its period: rows stored there that it lacks (a re-issue that
    dropped them, or REST rows the archive does not confirm) are withdrawn. The series' known
    gaps are brought up to date in the same transaction.
    """
    if src.symbol is None or src.interval is None:
        raise ValueError("a file to ingest needs a symbol and an interval")
    with immediate(conn):
        sid = series_id(conn, src.symbol, src.interval, src.venue)
        counts = upsert_candles(conn, sid, parsed.candles)
        times = parsed.candles["open_time"]
        lo, hi = int(times[0]), int(times[-1])
        withdrawn = 0
        if (span := period_span(src.period)) is not None:
            withdrawn = withdraw(conn, sid, span, times)
            lo, hi = min(lo, span[0]), max(hi, span[1] - 1)
        # After a withdrawal the archive's period holds exactly its rows.
        refresh_gaps_between(conn, sid, src.interval, lo, hi, times, exact=span is not None and
                             span[0] <= times[0] and times[-1] < span[1])
        outcome = _outcome(src, "ok" if verified else "unverified", time_unit=parsed.time_unit,
                           rows_read=parsed.rows_read, rows_inserted=counts.inserted,
                           rows_revised=counts.revised, rows_dropped=parsed.dropped, rows_flagged=parsed.flagged,
                           rows_withdrawn=withdrawn)
        record(conn, src, outcome)
    return outcome


def ingest_file(conn: sqlite3.Connection, src: SourceFile, load: Callable[[], Validated], *,
                verified: bool) -> FileOutcome:
    """Validate (`load`) and write one file, and record it; a data error is recorded, never raised.

    A file whose SHA-256 was already ingested is skipped without parsing it; a file that fails
    validation is recorded as rejected and writes no candle.
    """
    if src.sha256 and already_ingested(conn, src, verified):
        return skipped(conn, src)
    try:
        parsed = load()
    except ImageCacheError as exc:
        return reject(conn, src, str(exc))
    return write_file(conn, src, parsed, verified=verified)


class FileSink:
    """Where a streamed file's validated chunks go: upserted into its series inside the file's transaction.

    `span`: the period an archive holds whole ([start, end) in ms): rows stored there that the file
    lacks are withdrawn as its chunks pass them, so that memory follows a chunk, not the period.
    """

    def __init__(self, conn: sqlite3.Connection, sid: int, interval: str, span: tuple[int, int] | None = None):
        self.conn = conn
        self.sid = sid
        self.interval = interval
        self.span = span
        self.inserted = self.revised = self.withdrawn = 0
        self.written_to: int | None = None  # the last open time written
        conn.execute("SAVEPOINT file_start")

    def write(self, candles: np.ndarray) -> None:
        """Upsert sorted, unique candles later than any written before, and update the gaps around them."""
        counts = upsert_candles(self.conn, self.sid, candles)
        self.inserted += counts.inserted
        self.revised += counts.revised
        times = candles["open_time"]
        lo, hi = int(times[0]), int(times[-1])
        if self.span is not None:
            start = self.span[0] if self.written_to is None else self.written_to + 1
            self.withdrawn += withdraw(self.conn, self.sid, (start, hi + 1), times)
            lo = min(lo, start)
        refresh_gaps_between(self.conn, self.sid, self.interval, lo, hi, times)
        self.written_to = hi

    def finish(self) -> None:
        """After the last chunk: withdraw what the span holds beyond the file's last row."""
        if self.span is None:
            return
        start = self.span[0] if self.written_to is None else self.written_to + 1
        if start < self.span[1] and (gone := withdraw(self.conn, self.sid, (start, self.span[1]),
                                                      np.empty(0, np.int64))):
            self.withdrawn += gone
            refresh_gaps_between(self.conn, self.sid, self.interval, start, self.span[1] - 1, np.empty(0, np.int64))

    def restart(self) -> None:
        """Undo everything written so far: the file is read again from its start."""
        self.conn.execute("ROLLBACK TO file_start")
        self.inserted = self.revised = self.withdrawn = 0
        self.written_to = None


def ingest_stream(conn: sqlite3.Connection, src: SourceFile, produce: Callable[[FileSink], Tally], *,
                  verified: bool) -> FileOutcome:
    """ingest_file for a file too large to hold: `produce` validates it chunk by chunk into the sink.

    One transaction still: a file rejected at its last line is rolled back whole and recorded as rejected.
    A file that names a period (an archive) holds the whole of it, as in write_file: rows stored there
    that it lacks are withdrawn.
    """
    if src.symbol is None or src.interval is None:
        raise ValueError("a file to ingest needs a symbol and an interval")
    if src.sha256 and already_ingested(conn, src, verified):
        return skipped(conn, src)
    try:
        with immediate(conn):
            sink = FileSink(conn, series_id(conn, src.symbol, src.interval, src.venue), src.interval,
                                period_span(src.period))
            tally = produce(sink)
            sink.finish()
            outcome = _outcome(src, "ok" if verified else "unverified", time_unit=tally.time_unit,
                               rows_read=tally.rows_read, rows_inserted=sink.inserted, rows_revised=sink.revised,
                               rows_dropped=tally.dropped, rows_flagged=tally.flagged, rows_withdrawn=sink.withdrawn)
            record(conn, src, outcome)
    except ImageCacheError as exc:
        return reject(conn, src, str(exc))
    return outcome


@dataclass
class IngestResult:
    """What an ingest command returns: one outcome per input file, plus totals."""

    files: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not any(f.status == "rejected" for f in self.files)

    def totals(self) -> dict[str, Any]:
        by_status = {s: sum(f.status == s for f in self.files) for s in ("ok", "skipped", "rejected", "unverified")}
        written = [f for f in self.files if f.status in ("ok", "unverified")]
        rows = sum(f.rows_read for f in written)
        return {
            "files": by_status,
            "rows_read": rows,
            "rows_inserted": sum(f.rows_inserted for f in written),
            "rows_revised": sum(f.rows_revised for f in written),
            "rows_withdrawn": sum(f.rows_withdrawn for f in written),
            "rows_dropped": sum(f.rows_dropped for f in written),
            "rows_flagged": sum(f.rows_flagged for f in written),
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(rows / self.seconds) if self.seconds > 0 else 0,
        }

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, **self.totals(), "file_outcomes": [f.as_dict() for f in self.files]}

    def text(self) -> str:
        t = self.totals()
        lines = [f"rejected: {f.reason}" for f in self.files if f.status == "rejected"]
        files = t["files"]
        lines.append(
            f"files: {files['ok']} ok, {files['skipped']} skipped, {files['rejected']} rejected, "
            f"{files['unverified']} unverified; rows: {t['rows_inserted']} inserted, {t['rows_revised']} revised, "
            f"{t['rows_dropped']} dropped; {t['rows_flagged']} flagged; {t['rows_withdrawn']} withdrawn; "
            f"{t['seconds']:.2f} s, {t['rows_per_second']} rows/s")
        return "\n".join(lines)
