"""Gaps of a series: runs of interval-grid slots with no candle between its first and last candle.

`find_gaps` is pure (open times in, gaps out) and shared with the renderer; `record_gaps` writes
them to `known_gaps` as (series_id, first missing open time, last missing open time), both inclusive.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from image_cache.core.db import immediate
from image_cache.core.grid import check_interval, check_symbol, grid_index, grid_time, iso_utc
from image_cache.core.hooks import no_progress, no_warn
from image_cache.ingest.schema import open_times, writer


@dataclass(frozen=True)
class Gap:
    """Missing grid slots `first`..`last` (open times, epoch ms, inclusive), `count` of them."""

    first: int
    last: int
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"first_missing": iso_utc(self.first), "last_missing": iso_utc(self.last),
                "first_missing_ms": self.first, "last_missing_ms": self.last, "count": self.count}

    def text(self) -> str:
        return f"{iso_utc(self.first)} … {iso_utc(self.last)} ({self.count} missing)"


def gap_arrays(interval: str, open_times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectorised gaps of sorted open times: (first missing, last missing, count) as int64 arrays.

    Works on the interval's grid (Monday weeks, calendar months); a time off the grid counts for
    the slot it falls in, so flagged off-grid candles never make a gap of their own.
    """
    check_interval(interval)
    times = np.asarray(open_times, dtype=np.int64)
    if len(times) < 2:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    slots = np.asarray(grid_index(interval, times), dtype=np.int64)
    step = np.diff(slots)
    at = np.flatnonzero(step > 1)
    first = np.asarray(grid_time(interval, slots[at] + 1), dtype=np.int64)
    last = np.asarray(grid_time(interval, slots[at + 1] - 1), dtype=np.int64)
    return first, last, step[at] - 1


def find_gaps(interval: str, open_times: np.ndarray) -> list[Gap]:
    """The gaps of one series given its sorted open times (epoch ms)."""
    first, last, count = gap_arrays(interval, open_times)
    return [Gap(int(f), int(la), int(c)) for f, la, c in zip(first, last, count, strict=True)]


# ---------------------------------------------------------------------------------------- database

@dataclass
class SeriesGaps:
    symbol: str
    interval: str
    candles: int
    gaps: list[Gap]

    @property
    def missing(self) -> int:
        return sum(g.count for g in self.gaps)

    def as_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "interval": self.interval, "candles": self.candles,
                "missing": self.missing, "gaps": [g.as_dict() for g in self.gaps]}


@dataclass
class GapsResult:
    series: list[SeriesGaps] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # Gaps are facts about the data, not failures of the command.
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"series": [s.as_dict() for s in self.series],
                "gaps": sum(len(s.gaps) for s in self.series)}

    def text(self) -> str:
        if not self.series:
            return "gaps: no matching series"
        lines = []
        for s in self.series:
            summary = f"{len(s.gaps)} gap(s), {s.missing} missing" if s.gaps else "no gaps"
            lines.append(f"{s.symbol} {s.interval}: {s.candles} candles, {summary}")
            lines.extend(f"  {g.text()}" for g in s.gaps)
        return "\n".join(lines)


def select_series(conn: sqlite3.Connection, symbols: list[str] | None,
                  intervals: list[str] | None) -> list[tuple[int, str, str]]:
    """(series id, symbol, interval) of the matching series, in a stable order."""
    rows = conn.execute("""SELECT se.id, s.symbol, i.code FROM series se
                           JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                           ORDER BY s.symbol, i.ms, i.code""").fetchall()
    return [r for r in rows if (not symbols or r[1] in symbols) and (not intervals or r[2] in intervals)]


def series_open_times(conn: sqlite3.Connection, sid: int) -> np.ndarray:
    return open_times(conn, "SELECT open_time FROM candles WHERE series_id = ? ORDER BY open_time", (sid,))


def refresh_known_gaps(conn: sqlite3.Connection, sid: int, interval: str) -> tuple[int, list[Gap]]:
    """Replace one series' `known_gaps` rows with its gaps now, inside the caller's transaction.

    Returns (candle count, gaps).
    """
    times = series_open_times(conn, sid)
    gaps = find_gaps(interval, times)
    conn.execute("DELETE FROM known_gaps WHERE series_id = ?", (sid,))
    conn.executemany("INSERT INTO known_gaps(series_id, start_open_time, end_open_time) VALUES (?, ?, ?)",
                     [(sid, g.first, g.last) for g in gaps])
    return len(times), gaps


def refresh_gaps_between(conn: sqlite3.Connection, sid: int, interval: str, lo: int, hi: int,
                         written: np.ndarray | None = None, exact: bool = False) -> None:
    """Bring one series' `known_gaps` up to date after its rows in [lo, hi] changed, inside the caller's
    transaction: only the gaps between the nearest candles outside that span are recomputed.

    `written`: the sorted open times just written. When the stored rows in [lo, hi] are exactly those
    (`exact`, or equal counts), they are not read back: a bulk write stays a write.
    """
    before = conn.execute("SELECT MAX(open_time) FROM candles WHERE series_id = ? AND open_time < ?",
                          (sid, lo)).fetchone()[0]
    after = conn.execute("SELECT MIN(open_time) FROM candles WHERE series_id = ? AND open_time > ?",
                         (sid, hi)).fetchone()[0]
    a = -(2**63) if before is None else before
    b = 2**63 - 1 if after is None else after
    inside = None if written is None else written[(written >= lo) & (written <= hi)]
    if inside is not None and not exact and conn.execute(
            "SELECT COUNT(*) FROM candles WHERE series_id = ? AND open_time BETWEEN ? AND ?",
            (sid, lo, hi)).fetchone()[0] != len(inside):
        inside = None
    if inside is None:
        times = open_times(conn, "SELECT open_time FROM candles WHERE series_id = ? AND open_time BETWEEN ? AND ? "
                                 "ORDER BY open_time", (sid, a, b))
    else:
        times = np.concatenate([[before] if before is not None else [], inside,
                                [after] if after is not None else []]).astype(np.int64)
    conn.execute("DELETE FROM known_gaps WHERE series_id = ? AND start_open_time > ? AND start_open_time < ?",
                 (sid, a, b))
    first, last, _ = gap_arrays(interval, times)
    conn.executemany("INSERT INTO known_gaps(series_id, start_open_time, end_open_time) VALUES (?, ?, ?)",
                     [(sid, int(f), int(la)) for f, la in zip(first, last, strict=True)])


def record_gaps(db: str, *, symbols: list[str] | None = None, intervals: list[str] | None = None,
                lock_wait: float = 30.0, progress: Callable = no_progress,
                warn: Callable[[str], None] = no_warn) -> GapsResult:
    """Find the gaps of each matching series and replace that series' rows in `known_gaps`."""
    for symbol in symbols or []:
        check_symbol(symbol)
    for interval in intervals or []:
        check_interval(interval)
    result = GapsResult()
    with writer(db, "ingest gaps", lock_wait) as conn:
        todo = select_series(conn, symbols, intervals)
        for symbol in sorted(set(symbols or []) - {row[1] for row in todo}):
            warn(f"{symbol}: no matching series")
        for sid, symbol, interval in progress(todo, total=len(todo), desc="gaps", unit="series"):
            with immediate(conn):
                count, gaps = refresh_known_gaps(conn, sid, interval)
            result.series.append(SeriesGaps(symbol, interval, count, gaps))
    return result
