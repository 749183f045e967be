"""The raster engine (preset `mike`): candles and volume drawn as palette indices, 4 bits per pixel.

numpy turns prices into integer rows; the compiled kernel (chart/_kernel.c) draws the strokes straight
into the rows PNG stores. Only integer geometry and float add/sub/mul/div/round feed the pixels: no
fonts, no anti-aliasing and no transcendental functions, so the pixels are the same on every platform.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from image_cache.chart.kernel import kernel
from image_cache.chart.png import Drawn, encode_palette4, palette_bytes
from image_cache.chart.styles import ChartError, Spec

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


# The roles in the order chart/_kernel.c's mike() takes their palette indices.
ROLES = ("background", "grid", "wick", "up_edge", "up_body", "down_edge", "down_body", "volume")


def _palette(spec: Spec) -> tuple[list[str], dict[str, int]]:
    """Distinct colours in role order, and each role's palette index."""
    colours: list[str] = []
    index: dict[str, int] = {}
    for role, colour in spec.colours:
        if colour not in colours:
            colours.append(colour)
        index[role] = colours.index(colour)
    return colours, index


@dataclass(frozen=True)
class _Plan:
    """What draw_rows needs of a spec besides the prices, worked out once per spec."""

    geo: Layout
    palette: tuple[str, ...]
    plte: bytes  # the palette as PNG's PLTE chunk holds it
    role_indices: bytes  # palette index per ROLES entry
    grid_rows: np.ndarray  # int64, as the kernel takes them


@functools.lru_cache(maxsize=64)
def _plan(spec: Spec) -> _Plan:
    palette, ix = _palette(spec)
    geo = layout(spec.width, spec.height, spec.n_candles)
    return _Plan(geo, tuple(palette), palette_bytes(palette), bytes(ix[role] for role in ROLES),
                 np.array(geo.grid_rows, dtype=np.int64))


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


def draw_rows(spec: Spec, ohlcv: np.ndarray) -> tuple[np.ndarray, bytes]:
    """The image as PNG stores it (height x ceil(width / 2) uint8, two palette indices per byte, first
    pixel in the high nibble) and its palette as PLTE holds it."""
    plan = _plan(spec)
    geo = plan.geo
    low, high = float(ohlcv[:, :4].min()), float(ohlcv[:, :4].max())
    if not np.isfinite(high - low):
        raise ChartError(f"price range {low:g}..{high:g} is too wide to draw")
    rows = price_rows(ohlcv[:, :4], low, high, geo.price_top, geo.price_span)
    up = ohlcv[:, 3] >= ohlcv[:, 0]
    bars = volume_heights(ohlcv[:, 4], geo.volume_rows)
    out = np.empty((spec.height, (spec.width + 1) // 2), dtype=np.uint8)
    kernel.mike(out, spec.width, spec.height, plan.role_indices, plan.grid_rows, geo.left, geo.slot, geo.body,
                rows, up, bars)
    return out, plan.plte


def palette(spec: Spec) -> list[str]:
    """The colours of the palette indices the spec's images hold, as hex strings."""
    return list(_plan(spec).palette)


def draw(spec: Spec, ohlcv: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """Palette indices (height x width, uint8) and the palette (hex colours) of one window."""
    packed, _ = draw_rows(spec, ohlcv)
    indices = np.empty((spec.height, spec.width), dtype=np.uint8)
    kernel.unpack4(packed, indices, spec.height, spec.width)  # in C: numpy's two strided writes took 2x longer
    return indices, palette(spec)


def draw_png(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> Drawn:
    rows, plte = draw_rows(spec, values)
    return encode_palette4(rows, spec.width, plte)


def draw_pixels(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, list[str]]:
    return draw(spec, values)
