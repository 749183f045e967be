"""Windows of a series: which are due, which have gaps, their input fingerprints, month digests.

Pure functions over a series held as arrays (`times` int64 epoch ms, ascending and unique; `ohlcv`
float64 of shape (n, 5)). A window is identified by the index of its last candle.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from image_cache.core.grid import close_time_ms, grid_index, iso_utc, month_index
from image_cache.ingest.validate import first_broken, row_rules

FINGERPRINT_VERSION = b"fp1"


@dataclass(frozen=True)
class Series:
    """One (symbol, interval) series as arrays; the unit of reading and planning."""

    symbol: str
    interval: str
    times: np.ndarray
    ohlcv: np.ndarray

    def __post_init__(self) -> None:
        if len(self.times) != len(self.ohlcv):
            raise ValueError("times and ohlcv differ in length")


@dataclass(frozen=True)
class DueWindows:
    """Windows whose last candle is closed, in range and on the stride grid.

    `last` are indices of each window's last candle; `gap` marks windows whose candles (history
    included) are not consecutive on the interval grid; `short_history` marks windows that lack the
    extra history candles their preset needs.
    """

    last: np.ndarray
    gap: np.ndarray
    short_history: np.ndarray


def window_gaps(series: Series, last: np.ndarray, window_len: int, history: int) -> tuple[np.ndarray, np.ndarray]:
    """(gap, short_history) of the windows ending at the indices `last` (each >= window_len - 1)."""
    slots = grid_index(series.interval, series.times)
    short_history = last < window_len - 1 + history
    first = np.maximum(last - (window_len - 1) - history, 0)
    # Unique ascending times: consecutive on the grid exactly when the slot span equals the index span.
    gap = (slots[last] - slots[first]) != (last - first)
    return gap, short_history


def due_windows(series: Series, window_len: int, history: int, stride: int, start_ms: int,
                end_ms: int, now_ms: int) -> DueWindows:
    times = series.times
    n = len(times)
    if n < window_len:
        empty = np.empty(0, dtype=np.int64)
        return DueWindows(empty, empty.astype(bool), empty.astype(bool))
    last = np.arange(window_len - 1, n, dtype=np.int64)
    t_last = times[last]
    keep = ((close_time_ms(series.interval, t_last) <= now_ms) & (t_last >= start_ms) & (t_last < end_ms)
            & (grid_index(series.interval, t_last) % stride == 0))
    last = last[keep]
    gap, short_history = window_gaps(series, last, window_len, history)
    return DueWindows(last, gap, short_history)


def _columns(series: Series, rows: slice) -> dict[str, np.ndarray]:
    return dict(zip(("open", "high", "low", "close", "volume"), series.ohlcv[rows].T, strict=True))


def unsound_before(series: Series) -> np.ndarray:
    """How many of the first k candles break a rule ingest enforces (ingest/validate.py row_rules), for
    each k: a market another program wrote may hold high < low or a negative price, which ingest
    would refuse. Rows [a, b) hold such a candle when out[b] > out[a]. One vectorised pass a series."""
    broken = np.logical_or.reduce([mask for mask, _, _ in row_rules(_columns(series, slice(None)))])
    return np.concatenate([[0], np.cumsum(broken)])


def unsound_candle(series: Series, rows: slice) -> str | None:
    """Why the window of `rows` may not be drawn: its first candle that breaks a rule, or None."""
    found = first_broken(_columns(series, rows))
    if found is None:
        return None
    row, rule, detail = found
    return f"bad candle at {iso_utc(int(series.times[rows][row]))}: {rule} broken ({detail})"


def member_of_sorted(values: np.ndarray, sorted_set: np.ndarray) -> np.ndarray:
    """For each value, whether it is in the ascending array `sorted_set` (np.isin without hashing:
    a binary search, several times faster on a million end times)."""
    if len(sorted_set) == 0:
        return np.zeros(len(values), bool)
    pos = np.minimum(np.searchsorted(sorted_set, values), len(sorted_set) - 1)
    return sorted_set[pos] == values


def window_rows(last: int, window_len: int, history: int) -> slice:
    """The rows a window draws: its history, then its window_len candles (clipped at the series start)."""
    return slice(max(last - (window_len - 1) - history, 0), last + 1)


def fingerprint(series: Series, rows: slice) -> str:
    """SHA-256 of the window's open times and OHLCV in a canonical byte form (little-endian)."""
    digest = hashlib.sha256(FINGERPRINT_VERSION)
    # The arrays' own buffers (a copy only where not already contiguous little-endian): no bytes copy.
    digest.update(np.ascontiguousarray(series.times[rows], dtype="<i8").data)
    digest.update(np.ascontiguousarray(series.ohlcv[rows], dtype="<f8").data)
    return digest.hexdigest()


def month_digests(series: Series) -> dict[int, str]:
    """One SHA-256 per calendar month of candles: a changed digest marks the months to re-check.

    Each month's digest also covers the open time of the candle before it, so that removing a
    whole month changes the digest of the month after it (whose windows then span other candles).
    """
    months = month_index(series.times)
    if not len(months):
        return {}
    bounds = np.flatnonzero(np.diff(months)) + 1
    starts = np.concatenate([[0], bounds])
    ends = np.concatenate([bounds, [len(months)]])
    out = {}
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        previous = int(series.times[s - 1]) if s else -1
        digest = hashlib.sha256(FINGERPRINT_VERSION + previous.to_bytes(8, "little", signed=True))
        digest.update(np.ascontiguousarray(series.times[s:e], dtype="<i8").tobytes())
        digest.update(np.ascontiguousarray(series.ohlcv[s:e], dtype="<f8").tobytes())
        out[int(months[s])] = digest.hexdigest()
    return out


def touches_months(series: Series, last: np.ndarray, window_len: int, history: int,
                   months: set[int]) -> np.ndarray:
    """For each window, whether any of its rows falls in one of `months`."""
    if not months or len(last) == 0:
        return np.zeros(len(last), dtype=bool)
    row_months = month_index(series.times)
    flagged = np.isin(row_months, np.fromiter(months, dtype=np.int64))
    cumulative = np.concatenate([[0], np.cumsum(flagged)])
    first = np.maximum(last - (window_len - 1) - history, 0)
    return cumulative[last + 1] > cumulative[first]
