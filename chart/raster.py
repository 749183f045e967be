"""The numpy rasteriser (preset `mike`): candles and volume drawn into a palette-index image.

Only integer geometry and float add/sub/mul/div/round feed the pixels: no fonts, no anti-aliasing and
no transcendental functions, so the pixels are the same on every platform.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from chart.styles import ChartError, Spec

# Grid lines at fixed fractions of the price panel (quarters) and the middle of the volume panel.
PRICE_GRID_FRACTIONS = ((1, 4), (2, 4), (3, 4))


@dataclass(frozen=True)
class Layout:
    """Integer geometry of one image: where candles, price rows and volume rows go."""

    slot: int        # px per candle, body plus spacing
    body: int        # body width, odd so the 1-px wick sits in its centre
    left: int        # x of the first body's left edge
    price_top: int   # first usable price row (highest price)
    price_span: int  # usable price rows minus one (lowest price at price_top + price_span)
    volume_rows: int  # height of the tallest volume bar, ending at the bottom row
    grid_rows: tuple[int, ...]


def layout(width: int, height: int, n: int) -> Layout:
    """Geometry for n candles in a width x height image (checked by make_spec to give >= 3 px each)."""
    slot = width // n
    spacing = max(1, slot // 4) if slot > 3 else 0
    body = max(3, slot - spacing)
    body -= 1 - body % 2
    left = (width - slot * n) // 2 + (slot - body) // 2
    volume_panel = height // 5
    gap = max(1, height // 80)
    price_rows = height - volume_panel - gap
    margin = max(1, price_rows // 20)
    price_span = price_rows - 1 - 2 * margin
    volume_rows = volume_panel - volume_panel // 10
    grid = [margin + price_span * a // b for a, b in PRICE_GRID_FRACTIONS]
    grid.append(height - volume_rows // 2 - 1)
    return Layout(slot, body, left, margin, price_span, volume_rows, tuple(grid))


def _palette(spec: Spec) -> tuple[list[str], dict[str, int]]:
    """Distinct colours in role order, and each role's palette index."""
    colours: list[str] = []
    index: dict[str, int] = {}
    for role, colour in spec.colours:
        if colour not in colours:
            colours.append(colour)
        index[role] = colours.index(colour)
    return colours, index


def price_rows(values: np.ndarray, low: float, high: float, top: int, span: int) -> np.ndarray:
    """Row of each price: high at `top`, low at `top + span`; a flat window sits in the middle."""
    if high == low:
        return np.full(values.shape, top + span // 2, dtype=np.int64)
    # The ratio stays in [0, 1], so no overflow whatever the price scale.
    ratio = (high - values) / (high - low)
    return top + np.rint(ratio * span).astype(np.int64)


def volume_heights(volume: np.ndarray, rows: int) -> np.ndarray:
    """Bar height per candle, the largest volume filling `rows`; all zero when there is no volume."""
    top = float(volume.max())
    if top <= 0:
        return np.zeros(volume.shape, dtype=np.int64)
    return np.rint(volume / top * rows).astype(np.int64)


def draw(spec: Spec, ohlcv: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Palette indices (height x width, uint8) and the palette (hex colours) of one window."""
    n = ohlcv.shape[0]
    geo = layout(spec.width, spec.height, n)
    palette, ix = _palette(spec)
    opens, highs, lows, closes, volume = (ohlcv[:, k] for k in range(5))
    low, high = float(ohlcv[:, :4].min()), float(ohlcv[:, :4].max())
    if not np.isfinite(high - low):
        raise ChartError(f"price range {low:g}..{high:g} is too wide to draw")
    rows = price_rows(ohlcv[:, :4], low, high, geo.price_top, geo.price_span)
    high_row = rows[:, 1].tolist()
    low_row = rows[:, 2].tolist()
    body_top = np.minimum(rows[:, 0], rows[:, 3]).tolist()
    body_bottom = np.maximum(rows[:, 0], rows[:, 3]).tolist()
    up = (closes >= opens).tolist()
    bars = volume_heights(volume, geo.volume_rows).tolist()

    img = np.full((spec.height, spec.width), ix["background"], dtype=np.uint8)
    img[list(geo.grid_rows), :] = ix["grid"]
    body, bottom = geo.body, spec.height
    up_edge, up_body, down_edge, down_body = (ix[r] for r in ("up_edge", "up_body", "down_edge", "down_body"))
    for i in range(n):
        x = geo.left + i * geo.slot
        img[high_row[i]:low_row[i] + 1, x + body // 2] = ix["wick"]
        top, end = body_top[i], body_bottom[i] + 1
        edge, fill = (up_edge, up_body) if up[i] else (down_edge, down_body)
        img[top:end, x:x + body] = edge
        # mike's up candles: a 1-px edge framing the body colour, where there is room for it.
        if fill != edge and end - top > 2:
            img[top + 1:end - 1, x + 1:x + body - 1] = fill
        if bars[i]:
            img[bottom - bars[i]:bottom, x:x + body] = ix["volume"]
    return img, palette
