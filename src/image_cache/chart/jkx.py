"""The JKX engine: black-and-white OHLC bar images of Jiang, Kelly and Xiu (Journal of Finance, 2023).

Each period takes 3 columns: open tick left, high-low bar centre, close tick right. The moving average
of the close is a 1-px polyline through the period centres; volume bars fill the bottom fifth.
numpy turns prices into integer rows; the compiled kernel (chart/_kernel.c) draws the pixels.
"""

from __future__ import annotations

import functools

import numpy as np

from image_cache.chart.kernel import kernel
from image_cache.chart.png import Drawn, encode_gray
from image_cache.chart.styles import ChartError, Spec


@functools.lru_cache(maxsize=64)
def _windows(length: int, count: int) -> np.ndarray:
    """Row k: the indices of closes[k:k + count], in at least two columns (the one column of count 1
    repeated): numpy would sum a matrix of one column along its then contiguous axis, pairwise."""
    columns = np.minimum(np.arange(max(count, 2)), count - 1)
    return np.arange(length)[:, None] + columns


def moving_average(closes: np.ndarray, length: int) -> np.ndarray:
    """Simple MA over `length` periods for each of the last len(closes) - length + 1 closes.

    Summed period by period in a fixed order, ((c[k] + c[k+1]) + c[k+2]) + ..., so the floats are the
    same on every platform: numpy reduces axis 0 of a C-contiguous matrix of two or more columns one
    row after another (tests/test_chart_jkx.py checks it against the plain loop).
    """
    count = len(closes) - length + 1
    return np.add.reduce(closes[_windows(length, count)], axis=0)[:count] / length


def draw(spec: Spec, ohlcv: np.ndarray) -> np.ndarray:
    """Grayscale pixels (height x width, uint8, 0 or 255) of one window and its MA history."""
    n, height = spec.window_len, spec.height
    first_close = ohlcv[spec.history, 3]
    if first_close <= 0:
        raise ChartError("jkx needs a positive first close to rebase the window")
    # Rebased so the window's first close is 1, as in the paper.
    prices = ohlcv[:, :4] / first_close
    ma = moving_average(prices[:, 3], n)
    # The window's opens, highs, lows, closes, then the MA: one array, so one pass finds its range and rows.
    points = np.concatenate([prices[spec.history:].T.ravel(), ma])
    low, high = float(points.min()), float(points.max())
    if high == low:
        raise ChartError("jkx cannot draw a window whose prices are all equal (max == min)")
    volume_rows = height // 5
    price_h = height - volume_rows - 1
    if not np.isfinite((high - low) * (price_h - 1)):
        raise ChartError(f"price range {low:g}..{high:g} is too wide to draw")

    scaled = np.rint((points - low) * (price_h - 1) / (high - low))
    rows = price_h - 1 - scaled.astype(np.int64)
    volume = ohlcv[spec.history:, 4]
    top = float(volume.max())
    bars = (np.rint(volume / top * volume_rows).astype(np.int64) if top > 0
            else np.zeros(n, dtype=np.int64))
    img = np.empty((height, spec.width), dtype=np.uint8)
    kernel.jkx(img, spec.width, height, price_h, rows, bars)
    return img


def draw_png(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> Drawn:
    return encode_gray(draw(spec, values))


def draw_pixels(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, None]:
    return draw(spec, values), None
