"""Window planning on arrays: closed rule, range, stride grid, gaps, history, fingerprints, digests."""

from __future__ import annotations

import numpy as np

from image_cache.cache.windows import Series, due_windows, fingerprint, month_digests, touches_months, window_rows

H = 3600_000
T0 = 1719532800000  # 2024-06-28T00:00Z


def hourly(n: int, drop: tuple[int, ...] = ()) -> Series:
    times = np.array([T0 + i * H for i in range(n) if i not in drop], dtype=np.int64)
    ohlcv = np.tile([1.0, 2.0, 0.5, 1.5, 10.0], (len(times), 1)) * (1 + np.arange(len(times)))[:, None]
    return Series("BTCUSDT", "1h", times, ohlcv)


def test_closed_rule_and_range():
    s = hourly(10)
    due = due_windows(s, 3, 0, 1, start_ms=0, end_ms=2**62, now_ms=T0 + 9 * H)  # candle 9 still open
    assert due.last.tolist() == list(range(2, 9))
    due = due_windows(s, 3, 0, 1, start_ms=T0 + 4 * H, end_ms=T0 + 6 * H, now_ms=2**62)
    assert due.last.tolist() == [4, 5]


def test_stride_uses_the_absolute_grid():
    due = due_windows(hourly(24), 3, 0, 4, 0, 2**62, 2**62)
    assert [int(hourly(24).times[i] // H) % 4 for i in due.last] == [0] * len(due.last)
    assert due.last.tolist() == [4, 8, 12, 16, 20]


def test_gaps_and_short_history():
    s = hourly(12, drop=(5,))
    due = due_windows(s, 3, 0, 1, 0, 2**62, 2**62)
    # rows 0..10 (time 5 missing); windows ending at rows 5 and 6 (times 6 and 7) span the hole
    assert due.last[due.gap].tolist() == [5, 6]
    due = due_windows(hourly(12), 3, 2, 1, 0, 2**62, 2**62)
    assert due.last[due.short_history].tolist() == [2, 3]


def test_fingerprint_changes_only_with_window_values():
    s = hourly(10)
    base = fingerprint(s, window_rows(5, 3, 0))
    other = hourly(10)
    other.ohlcv[2, 3] += 1  # outside rows 3..5
    assert fingerprint(other, window_rows(5, 3, 0)) == base
    other.ohlcv[4, 3] += 1
    assert fingerprint(other, window_rows(5, 3, 0)) != base


def test_month_digests_and_touches():
    s = Series("X", "1d", np.array([T0 + i * 24 * H for i in range(6)], dtype=np.int64), np.ones((6, 5)))
    digests = month_digests(s)
    assert sorted(digests) == [653, 654]  # 2024-06 and 2024-07 as months since 1970-01
    touched = touches_months(s, np.array([2, 3, 5]), 2, 0, {654})
    assert touched.tolist() == [False, True, True]  # rows 2-3 are June 30 / July 1
