"""`python -m ingest status`: what market.sqlite holds, and what became of each ingested file.

Read-only: the database is opened with `mode=ro` and never created. A database written by the
upstream pipeline (no `ingested_files`, maybe no `known_gaps`) is reported too.
"""

from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from image_cache.core.db import file_uri
from image_cache.core.errors import MarketError
from image_cache.core.grid import iso_utc

STATUSES = ("ok", "unverified", "skipped", "rejected")


@dataclass(frozen=True)
class SeriesStatus:
    symbol: str
    interval: str
    first_open_time: str | None
    last_open_time: str | None
    candles: int
    gaps: int

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


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

    ok = True

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"db": self.db, "series": [s.as_dict() for s in self.series], "files": self.files}
        if self.failures is not None:
            out["failures"] = [dict(f.__dict__) for f in self.failures]
        return out

    def text(self) -> str:
        lines = [f"{self.db}: {len(self.series)} series"]
        for s in self.series:
            span = f"{s.first_open_time} .. {s.last_open_time}" if s.candles else "empty"
            lines.append(f"  {s.symbol} {s.interval}: {s.candles} candles, {span}, {s.gaps} gaps")
        lines.append("files: " + ", ".join(f"{self.files.get(k, 0)} {k}" for k in STATUSES)
                     + (" (current failures: --failures)" if self.failures is None and self.files.get("rejected") else ""))
        if self.failures is not None:
            lines.append(f"failures: {len(self.failures)}")
            lines.extend(f"  {f.reason}" for f in self.failures)
        return "\n".join(lines)


def _tables(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def status(db: str, *, failures: bool = False) -> StatusResult:
    """Per series: span, candle count and recorded gaps; per registry status: how many file records.

    `failures` lists the files whose latest record is a rejection, with the reason.
    """
    if not os.path.isfile(db):
        raise MarketError(f"no market database at {db}")
    try:
        conn = sqlite3.connect(file_uri(db, "ro"), uri=True)
    except sqlite3.Error as exc:
        raise MarketError(f"cannot open {db}: {exc}") from None
    try:
        return _read(conn, db, failures)
    except sqlite3.DatabaseError as exc:
        raise MarketError(f"cannot read {db}: {exc}") from None
    finally:
        conn.close()


def _read(conn: sqlite3.Connection, db: str, failures: bool) -> StatusResult:
    tables = _tables(conn)
    if not {"symbols", "intervals", "series", "candles"} <= tables:
        raise MarketError(f"{db} is not a market database (no candles table)")
    gaps = "(SELECT COUNT(*) FROM known_gaps g WHERE g.series_id = se.id)" if "known_gaps" in tables else "0"
    result = StatusResult(db)
    for symbol, interval, first, last, count, n_gaps in conn.execute(
            f"""SELECT s.symbol, i.code, MIN(c.open_time), MAX(c.open_time), COUNT(c.open_time), {gaps}
                FROM series se JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                LEFT JOIN candles c ON c.series_id = se.id
                GROUP BY se.id ORDER BY s.symbol, i.ms"""):
        result.series.append(SeriesStatus(symbol, interval, None if first is None else iso_utc(first),
                                          None if last is None else iso_utc(last), count, n_gaps))
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
