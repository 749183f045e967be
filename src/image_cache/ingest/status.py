"""`python -m ingest status`: what market.sqlite holds, and what became of each ingested file.

`--summary`: per venue, symbol and interval, the span, rows, gaps, bytes and freshness (how many candles
the series is behind the last closed one).

Read-only: the database is opened with `mode=ro` and never created, in a read-only folder too, as the renderer
opens it (core/db.py open_readonly). A database written by the upstream pipeline (no `ingested_files`, maybe no
`known_gaps`) is reported too.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from image_cache.core.db import open_readonly
from image_cache.core.errors import MarketError
from image_cache.core.grid import INTERVAL_MS, grid_index, iso_utc, now_ms

STATUSES = ("ok", "unverified", "skipped", "rejected")


@dataclass(frozen=True)
class SeriesStatus:
    symbol: str
    interval: str
    first_open_time: str | None
    last_open_time: str | None
    candles: int
    gaps: int
    venue: str  # exchange and market (ingest/venues.py)
    # --summary: the series' share of the candles table, and candles missing up to the last closed one.
    bytes: int | None = None
    behind: int | None = None

    def freshness(self) -> str:
        return "up to date" if self.behind == 0 else "no candles" if self.behind is None else \
            f"{self.behind} candles behind the last closed one"

    def as_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        if self.bytes is None:  # not asked for (--summary)
            del out["bytes"], out["behind"]
        return out


@dataclass(frozen=True)
class Failure:
    file_name: str
    path: str
    reason: str
    ingested_utc: str


@dataclass
class StatusResult:
    db: str
    series: list[SeriesStatus] = field(default_factory=list)
    files: dict[str, int] = field(default_factory=dict)
    failures: list[Failure] | None = None
    summary: bool = False
    now: str | None = None  # --summary: the moment freshness is judged at

    ok = True

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"db": self.db, "series": [s.as_dict() for s in self.series], "files": self.files}
        if self.failures is not None:
            out["failures"] = [dict(f.__dict__) for f in self.failures]
        if self.summary:
            out["now"] = self.now
        return out

    def text(self) -> str:
        lines = [f"{self.db}: {len(self.series)} series" + (f" (freshness at {self.now})" if self.summary else "")]
        venue = None
        for s in self.series:
            span = f"{s.first_open_time} .. {s.last_open_time}" if s.candles else "empty"
            if not self.summary:
                lines.append(f"  {s.symbol} {s.interval}: {s.candles} candles, {span}, {s.gaps} gaps")
                continue
            if s.venue != venue:
                venue = s.venue
                lines.append(f"  {venue}:")
            lines.append(f"    {s.symbol} {s.interval}: {span}, {s.candles} rows, {s.gaps} gaps, "
                         f"{(s.bytes or 0) / 1024:,.0f} KiB, {s.freshness()}")
        lines.append("files: " + ", ".join(f"{self.files.get(k, 0)} {k}" for k in STATUSES)
                     + (" (current failures: --failures)"
                        if self.failures is None and self.files.get("rejected") else ""))
        if self.failures is not None:
            lines.append(f"failures: {len(self.failures)}")
            lines.extend(f"  {f.reason}" for f in self.failures)
        return "\n".join(lines)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def status(db: str, *, failures: bool = False, summary: bool = False, now: int | None = None) -> StatusResult:
    """Per series: venue, span, candle count and recorded gaps; per registry status: how many file records.

    `failures` lists the files whose latest record is a rejection, with the reason; `summary` orders the
    series by venue and adds their bytes and freshness at `now` (default: this moment).
    """
    if not os.path.isfile(db):
        raise MarketError(f"no market database at {db}")
    try:
        conn = open_readonly(db)  # which reads the schema: SQLite reads a file only when a statement needs it
    except sqlite3.Error as exc:
        raise MarketError(f"cannot read {db}: {exc}") from None
    try:
        return _read(conn, db, failures, summary, now_ms() if now is None else now)
    except sqlite3.DatabaseError as exc:
        raise MarketError(f"cannot read {db}: {exc}") from None
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, db: str, failures: bool, summary: bool, now: int) -> StatusResult:
    tables = _tables(conn)
    if not {"symbols", "intervals", "series", "candles"} <= tables:
        raise MarketError(f"{db} is not a market database (no candles table)")
    gaps = "(SELECT COUNT(*) FROM known_gaps g WHERE g.series_id = se.id)" if "known_gaps" in tables else "0"
    # A series with no venue recorded was written by another tool: the upstream pipeline writes Binance spot.
    venue, venues = (("COALESCE(v.exchange || ' ' || v.market, 'binance spot')",
                      "LEFT JOIN series_venues v ON v.series_id = se.id") if "series_venues" in tables
                     else ("'binance spot'", ""))
    result = StatusResult(db, summary=summary, now=iso_utc(now) if summary else None)
    per_row = _bytes_per_candle(conn, db) if summary else 0.0
    order = "3, 1, i.ms" if summary else "1, i.ms"
    for symbol, interval, where, first, last, count, n_gaps in conn.execute(
            f"""SELECT s.symbol, i.code, {venue}, MIN(c.open_time), MAX(c.open_time), COUNT(c.open_time), {gaps}
                FROM series se JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                LEFT JOIN candles c ON c.series_id = se.id {venues}
                GROUP BY se.id ORDER BY {order}"""):
        extra = {}
        if summary:
            behind = None
            if last is not None and interval in INTERVAL_MS:
                last_closed = grid_index(interval, now) - 1
                behind = max(0, int(last_closed) - int(grid_index(interval, last)))
            extra = {"bytes": round(count * per_row), "behind": behind}
        result.series.append(SeriesStatus(symbol, interval, None if first is None else iso_utc(first),
                                          None if last is None else iso_utc(last), count, n_gaps, where, **extra))
    if "ingested_files" in tables:
        counts = dict(conn.execute("SELECT status, COUNT(*) FROM ingested_files GROUP BY status").fetchall())
    else:
        counts = {}
    result.files = {k: counts.get(k, 0) for k in STATUSES}
    if failures:
        result.failures = []
        if "ingested_files" in tables:
            # The latest record per file name: a file fixed and re-ingested since is no longer a failure.
            rows = conn.execute("""SELECT f.file_name, f.path, f.reason, f.ingested_utc FROM ingested_files f
                                   WHERE f.id = (SELECT MAX(id) FROM ingested_files g WHERE g.file_name = f.file_name)
                                     AND f.status = 'rejected' ORDER BY f.file_name""")
            result.failures = [Failure(*row) for row in rows]
    return result


def _bytes_per_candle(conn: sqlite3.Connection, db: str) -> float:
    """Bytes the candles table takes per row: its pages (SQLite's dbstat, where built in), else the file's."""
    rows = conn.execute("SELECT COUNT(*) FROM candles").fetchone()[0]
    if not rows:
        return 0.0
    try:
        size = conn.execute("SELECT SUM(pgsize) FROM dbstat WHERE name IN "
                            "('candles', 'sqlite_autoindex_candles_1')").fetchone()[0]
    except sqlite3.OperationalError:  # no dbstat in this SQLite build
        size = os.path.getsize(db)
    return (size or 0) / rows
