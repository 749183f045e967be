"""Higher intervals from a base interval: O first, H max, L min, C last, volumes and trades summed.

Only complete buckets are written: a bucket with a missing base candle would be a wrong candle
(a high that misses the real high), so it is left out and reported instead. The core
(`resample_candles`) is pure: candle array in, candle array out.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from image_cache.core.db import immediate
from image_cache.core.errors import MarketError
from image_cache.core.grid import (
    DAY_MS,
    INTERVAL_MS,
    WEEK_OFFSET_MS,
    check_interval,
    check_symbol,
    grid_index,
    grid_time,
    iso_utc,
    on_grid,
)
from image_cache.core.hooks import no_progress, no_warn
from image_cache.ingest.gaps import Gap, refresh_known_gaps
from image_cache.ingest.schema import CANDLE_DTYPE, read_candles, series_id, upsert_candles, writer
from image_cache.ingest.venues import venue_of

SUMMED = ("volume", "quote_asset_volume", "trades", "taker_buy_base_volume", "taker_buy_quote_volume")


def check_pair(source: str, target: str) -> None:
    """Raise MarketError unless every `target` bucket is a whole number of `source` grid slots."""
    check_interval(source)
    check_interval(target)
    if source == "1mo":
        raise MarketError("cannot resample from 1mo: no interval is a whole number of calendar months")
    src_ms = INTERVAL_MS[source]
    if target == "1mo":
        ok = DAY_MS % src_ms == 0
        need = "1d or an interval that divides a day"
    elif target == "1w":
        # Weeks start on Monday, four days after the epoch: the source grid must hit that boundary too.
        ok = INTERVAL_MS[target] % src_ms == 0 and WEEK_OFFSET_MS % src_ms == 0
        need = "an interval that divides a day"
    else:
        ok = INTERVAL_MS[target] % src_ms == 0
        need = f"a multiple of {source}"
    if not ok or target == source:
        raise MarketError(f"cannot resample {source} to {target}: the target must be {need}, "
                          f"and different from the source")


def slots_per_bucket(source: str, target: str, bucket_index: np.ndarray) -> np.ndarray:
    """How many source candles make each target bucket complete (calendar months vary)."""
    start = grid_time(target, bucket_index)
    end = grid_time(target, bucket_index + 1)
    return (np.asarray(end, dtype=np.int64) - start) // INTERVAL_MS[source]


@dataclass(frozen=True)
class Resampled:
    """The complete buckets, and the open times of buckets left out for missing source candles."""

    candles: np.ndarray
    incomplete: np.ndarray


def resample_candles(candles: np.ndarray, source: str, target: str) -> Resampled:
    """Aggregate sorted, unique `source` candles (CANDLE_DTYPE) into complete `target` candles.

    A bucket counts as complete when it holds every source slot of its span; candles off the
    source grid make their bucket incomplete (their span is unknown).
    """
    check_pair(source, target)
    if len(candles) == 0:
        return Resampled(np.empty(0, dtype=CANDLE_DTYPE), np.empty(0, dtype=np.int64))
    times = candles["open_time"]
    if np.any(np.diff(times) <= 0):
        raise MarketError("resample needs candles sorted by open time without duplicates")
    bucket = np.asarray(grid_index(target, times), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    ends = np.r_[starts[1:], len(times)]
    keys = bucket[starts]
    expected = slots_per_bucket(source, target, keys)
    off_grid = ~np.asarray(on_grid(source, times), dtype=bool)
    bad = np.add.reduceat(off_grid.astype(np.int64), starts) > 0
    complete = ((ends - starts) == expected) & ~bad

    out = np.empty(len(starts), dtype=CANDLE_DTYPE)
    out["open_time"] = grid_time(target, keys)
    out["open"] = candles["open"][starts]
    out["close"] = candles["close"][ends - 1]
    out["high"] = np.maximum.reduceat(candles["high"], starts)
    out["low"] = np.minimum.reduceat(candles["low"], starts)
    for name in SUMMED:
        out[name] = np.add.reduceat(candles[name], starts)
    return Resampled(out[complete], out["open_time"][~complete])


# ---------------------------------------------------------------------------------------- database

@dataclass
class TargetReport:
    symbol: str
    interval: str
    candles: int
    inserted: int
    revised: int
    incomplete: list[int]
    gaps: list[Gap]

    def as_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "interval": self.interval, "candles": self.candles,
                "inserted": self.inserted, "revised": self.revised,
                "incomplete_buckets": [iso_utc(t) for t in self.incomplete],
                "gaps": [g.as_dict() for g in self.gaps]}


@dataclass
class ResampleResult:
    source: str
    targets: list[str]
    series: list[TargetReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return True

    def as_dict(self) -> dict[str, Any]:
        return {"source": self.source, "targets": self.targets, "seconds": round(self.seconds, 3),
                "series": [s.as_dict() for s in self.series]}

    def text(self) -> str:
        if not self.series:
            return f"resample {self.source} → {','.join(self.targets)}: no {self.source} series found"
        lines = [f"resample {self.source} → {','.join(self.targets)}: {len(self.series)} series "
                 f"in {self.seconds:.2f}s"]
        for s in self.series:
            line = (f"  {s.symbol} {s.interval}: {s.candles} candles ({s.inserted} new, {s.revised} revised)")
            if s.incomplete:
                line += f", {len(s.incomplete)} incomplete bucket(s) not written"
            lines.append(line)
            lines.extend(f"    gap: {g.text()}" for g in s.gaps)
        return "\n".join(lines)


def source_symbols(conn: sqlite3.Connection, source: str) -> list[str]:
    return [row[0] for row in conn.execute(
        """SELECT s.symbol FROM series se JOIN symbols s ON s.id = se.symbol_id
           JOIN intervals i ON i.id = se.interval_id WHERE i.code = ? ORDER BY s.symbol""", (source,))]


def write_resampled(conn: sqlite3.Connection, symbol: str, base: np.ndarray, source: str,
                    target: str) -> TargetReport:
    """Resample one symbol's base candles into `target`, upsert them and refresh the target's known_gaps,
    inside the caller's transaction."""
    result = resample_candles(base, source, target)
    sid = series_id(conn, symbol, target, venue_of(conn, symbol))
    counts = upsert_candles(conn, sid, result.candles)
    # The target series' gaps (buckets left out included) stay current in known_gaps.
    _, gaps = refresh_known_gaps(conn, sid, target)
    return TargetReport(symbol, target, len(result.candles), counts.inserted, counts.revised,
                        [int(t) for t in result.incomplete], gaps)


def resample(db: str, *, source: str = "1m", targets: list[str], symbols: list[str] | None = None,
             lock_wait: float = 30.0, progress: Callable = no_progress,
             warn: Callable[[str], None] = no_warn) -> ResampleResult:
    """Derive `targets` from `source` for `symbols` (default: every symbol with a `source` series)."""
    started = time.monotonic()
    for target in targets:
        check_pair(source, target)
    for symbol in symbols or []:
        check_symbol(symbol)
    result = ResampleResult(source, list(targets))
    with writer(db, f"ingest resample {source} → {','.join(targets)}", lock_wait) as conn:
        known = source_symbols(conn, source)
        wanted = symbols or known
        for symbol in wanted:
            if symbol not in known:
                warn(f"{symbol}: no {source} series, skipped")
        todo = [s for s in wanted if s in known]
        for symbol in progress(todo, total=len(todo), desc="resample", unit="series"):
            base = read_candles(conn, series_id(conn, symbol, source, venue_of(conn, symbol)))
            for target in targets:
                with immediate(conn):
                    report = write_resampled(conn, symbol, base, source, target)
                result.series.append(report)
                if report.incomplete:
                    warn(f"{symbol} {target}: {len(report.incomplete)} incomplete bucket(s) not written")
    result.seconds = time.monotonic() - started
    return result
