"""The JKX engine: black-and-white OHLC bar images of Jiang, Kelly and Xiu (Journal of Finance, 2023).

Each period takes 3 columns: open tick left, high-low bar centre, close tick right. The moving average
of the close is a 1-px polyline through the period centres; volume bars fill the bottom fifth.
numpy turns prices into integer rows; the compiled kernel (chart/_kernel.c) draws the pixels.
"""

from __future__ import annotations

import numpy as np

from chart.kernel import kernel
from chart.styles import ChartError, Spec


def moving_average(closes: np.ndarray, length: int) -> np.ndarray:
    """Simple MA over `length` periods for each of the last len(closes) - length + 1 closes.

    Summed column by column in a fixed order, so the floats are the same on every platform.
    """
    count = len(closes) - length + 1
    total = closes[:count].copy()
    for k in range(1, length):
        total += closes[k:k + count]
    return total / length


def draw(spec: Spec, ohlcv: np.ndarray) -> np.ndarray:
    """Grayscale pixels (height x width, uint8, 0 or 255) of one window and its MA history."""
    n, height = spec.window_len, spec.height
    first_close = ohlcv[spec.history, 3]
    if first_close <= 0:
        raise ChartError("jkx needs a positive first close to rebase the window")
    # Rebased so the window's first close is 1, as in the paper.
    prices = ohlcv[:, :4] / first_close
    ma = moving_average(prices[:, 3], n)
    window = prices[spec.history:]
    low = float(min(window.min(), ma.min()))
    high = float(max(window.max(), ma.max()))
    if high == low:
        raise ChartError("jkx cannot draw a window whose prices are all equal (max == min)")
    volume_rows = height // 5
    price_h = height - volume_rows - 1
    if not np.isfinite((high - low) * (price_h - 1)):
        raise ChartError(f"price range {low:g}..{high:g} is too wide to draw")

    # Rows of the window's opens, highs, lows, closes and of the MA, computed in one pass.
    scaled = np.rint((np.concatenate([window.T.ravel(), ma]) - low) * (price_h - 1) / (high - low))
    rows = price_h - 1 - scaled.astype(np.int64)
    volume = ohlcv[spec.history:, 4]
    top = float(volume.max())
    bars = (np.rint(volume / top * volume_rows).astype(np.int64) if top > 0
            else np.zeros(n, dtype=np.int64))
    img = np.empty((height, spec.width), dtype=np.uint8)
    kernel.jkx(img, spec.width, height, price_h, rows, bars)
    return img
