"""Deterministic OHLCV windows for the chart tests, from closed formulas (no RNG, no transcendentals).

Every builder returns an (n, 5) float64 array of open, high, low, close, volume with
low <= open, close <= high and volume >= 0. Only integer arithmetic and exact-enough float
add/mul/div feed the values, so the same arrays (and goldens) come out on every platform.
"""

from __future__ import annotations

import numpy as np

HOUR_MS = 3_600_000
# 2024-01-01T00:00:00Z: any fixed grid works; the raster engines ignore times, mplfinance labels them.
START_MS = 1_704_067_200_000


def open_times(n: int) -> np.ndarray:
    """n consecutive hourly open times in epoch milliseconds."""
    return START_MS + HOUR_MS * np.arange(n, dtype=np.int64)


def _candles(opens: np.ndarray, closes: np.ndarray, up_wick: np.ndarray, down_wick: np.ndarray,
             volume: np.ndarray) -> np.ndarray:
    highs = np.maximum(opens, closes) + up_wick
    lows = np.minimum(opens, closes) - down_wick
    return np.column_stack([opens, highs, lows, closes, volume]).astype(np.float64)


def trending(n: int) -> np.ndarray:
    """A rising market around 100 with up, down and doji candles of varied bodies, wicks and volumes."""
    i = np.arange(n, dtype=np.float64)
    k = np.arange(n, dtype=np.int64)
    mid = 100.0 + 0.25 * i + ((k * 37) % 23 - 11) * 0.4
    body = ((k * 13) % 7 - 3) * 0.35  # negative: down candle, zero: doji
    volume = 1000.0 + ((k * 29) % 17) * 150.0
    return _candles(mid - body / 2, mid + body / 2, ((k * 5) % 4) * 0.3 + 0.1, ((k * 11) % 5) * 0.25 + 0.05,
                    volume)


def flat(n: int) -> np.ndarray:
    """Every price 42 (high == low everywhere); volumes still vary."""
    k = np.arange(n, dtype=np.int64)
    out = np.full((n, 5), 42.0)
    out[:, 4] = 10.0 + (k * 7) % 5
    return out


def zero_volume(n: int) -> np.ndarray:
    """The trending prices with no volume at all."""
    out = trending(n)
    out[:, 4] = 0.0
    return out


def scaled(n: int, factor: float) -> np.ndarray:
    """The trending window with prices multiplied by factor (1e-10 -> around 1e-8, 1e4 -> around 1e6)."""
    out = trending(n)
    out[:, :4] *= factor
    return out


def tiny_prices(n: int) -> np.ndarray:
    return scaled(n, 1e-10)


def huge_prices(n: int) -> np.ndarray:
    return scaled(n, 1e4)


def one_huge_candle(n: int) -> np.ndarray:
    """Small candles around 100 (range about 0.3) and, in the middle, one candle from 50 to 400 with 100x volume."""
    k = np.arange(n, dtype=np.int64)
    opens = 100.0 + ((k * 3) % 5) * 0.05
    closes = 100.0 + ((k * 7) % 5) * 0.05
    out = _candles(opens, closes, np.full(n, 0.05), np.full(n, 0.05), 500.0 + (k % 4) * 100.0)
    out[n // 2] = (110.0, 400.0, 50.0, 300.0, 80_000.0)
    return out


def alternating(n: int, pattern: str) -> np.ndarray:
    """Tall-bodied candles following pattern ('u' up, 'd' down, repeated), all spanning 100..110, volume 1..n.

    Every candle has the same body rows, so columns alone tell candles apart.
    """
    up = np.array([pattern[i % len(pattern)] == "u" for i in range(n)])
    opens = np.where(up, 101.0, 109.0)
    closes = np.where(up, 109.0, 101.0)
    return _candles(opens, closes, np.ones(n), np.ones(n), np.arange(1, n + 1, dtype=np.float64))


BUILDERS = {
    "normal": trending,
    "flat": flat,
    "zero_volume": zero_volume,
    "tiny": tiny_prices,
    "huge": huge_prices,
    "huge_candle": one_huge_candle,
}
