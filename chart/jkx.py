"""The JKX engine: black-and-white OHLC bar images of Jiang, Kelly and Xiu (Journal of Finance, 2023).

Each period takes 3 columns: open tick left, high-low bar centre, close tick right. The moving average
of the close is a 1-px polyline through the period centres; volume bars fill the bottom fifth.
"""

from __future__ import annotations

import numpy as np

from chart.styles import ChartError, Spec

MARK = 255


def moving_average(closes: np.ndarray, length: int) -> np.ndarray:
    """Simple MA over `length` periods for each of the last len(closes) - length + 1 closes.

    Summed column by column in a fixed order, so the floats are the same on every platform.
    """
    count = len(closes) - length + 1
    total = closes[:count].copy()
    for k in range(1, length):
        total += closes[k:k + count]
    return total / length


def line_pixels(xs: np.ndarray, ys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels of the 1-px polyline through integer points: an integer DDA, one pixel per major step."""
    x0, y0 = xs[:-1], ys[:-1]
    dx, dy = np.diff(xs), np.diff(ys)
    steps = np.maximum(np.maximum(np.abs(dx), np.abs(dy)), 1)
    seg = np.repeat(np.arange(len(dx)), steps + 1)
    # k runs 0..steps inside each segment.
    k = np.arange(len(seg)) - np.repeat(np.cumsum(steps + 1) - (steps + 1), steps + 1)
    s = steps[seg]
    # round(k * d / s) in integers: floor((2kd + s) / 2s), exact for any sign of d.
    px = x0[seg] + (2 * k * dx[seg] + s) // (2 * s)
    py = y0[seg] + (2 * k * dy[seg] + s) // (2 * s)
    return px, py


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

    # Rows of the window's open, high, low, close and of the MA, computed in one pass.
    scaled = np.rint((np.concatenate([window.T.ravel(), ma]) - low) * (price_h - 1) / (high - low))
    o, h, lo, c, ma_rows = (price_h - 1 - scaled.astype(np.int64)).reshape(5, n)
    img = np.zeros((height, spec.width), dtype=np.uint8)
    centre = 3 * np.arange(n) + 1
    r = np.arange(price_h)[:, None]
    img[:price_h, 1::3][(r >= h) & (r <= lo)] = MARK
    img[o, centre - 1] = MARK
    img[c, centre + 1] = MARK
    if n > 1:
        px, py = line_pixels(centre, ma_rows)
        img[py, px] = MARK
    else:
        img[ma_rows, centre] = MARK

    volume = ohlcv[spec.history:, 4]
    top = float(volume.max())
    if top > 0:
        bars = np.rint(volume / top * volume_rows).astype(np.int64)
        rv = np.arange(height - volume_rows, height)[:, None]
        img[height - volume_rows:, 1::3][rv >= height - bars] = MARK
    return img
