"""Pure drawing: arrays in, PNG bytes out. No files, no SQLite, no global state.

Engines: `raster` (preset mike), `jkx` (the Jiang-Kelly-Xiu OHLC images) and `mplfinance`
(any built-in mplfinance style; matplotlib is imported only when such a spec is drawn).
"""

from __future__ import annotations

import numpy as np

from image_cache.chart import jkx, raster
from image_cache.chart.png import (
    PIXEL_HASH_VERSION,
    Drawn,
    decode,
    encode_gray,
    encode_palette,  # noqa: F401 - not used here: chart.encode_palette is for callers (the tests re-encode)
    encode_palette4,
    encode_rgb,
    pixel_hash,
    png_size,
)
from image_cache.chart.styles import STYLES, STYLES_HELP, ChartError, Spec, make_spec, style_from_tag

__all__ = ["PIXEL_HASH_VERSION", "STYLES", "STYLES_HELP", "ChartError", "Drawn", "Spec", "decode", "make_spec",
           "pixel_hash", "png_size", "render", "style_from_tag"]


def _check_input(spec: Spec, open_times_ms: np.ndarray, ohlcv: np.ndarray) -> np.ndarray:
    expected = (spec.n_candles, 5)
    if ohlcv.shape != expected:
        raise ChartError(f"{spec.name} needs {expected[0]} candles x 5 columns, got shape {ohlcv.shape}")
    if open_times_ms.shape != (expected[0],):
        raise ChartError(f"{spec.name} needs {expected[0]} open times, got shape {open_times_ms.shape}")
    values = np.asarray(ohlcv, dtype=np.float64)
    if not np.isfinite(values).all():
        raise ChartError("window has non-finite prices or volumes")
    if (values[:, 4] < 0).any():
        raise ChartError("window has negative volume")
    return values


def _raster(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> Drawn:
    rows, plte = raster.draw_rows(spec, values)
    return encode_palette4(rows, spec.width, plte)


def _jkx(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> Drawn:
    return encode_gray(jkx.draw(spec, values))


def _mplfinance(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> Drawn:
    from image_cache.chart import mpl  # matplotlib costs ~0.5 s to import: only workers drawing with it pay

    return encode_rgb(mpl.draw(spec, open_times_ms, values))


# The engines by name (Spec.engine): a new engine is its module plus one line here.
ENGINES = {"raster": _raster, "jkx": _jkx, "mplfinance": _mplfinance}


def render(spec: Spec, open_times_ms: np.ndarray, ohlcv: np.ndarray) -> Drawn:
    """PNG bytes and pixel hash of one window: ohlcv rows are history + window candles, columns O, H, L, C, V."""
    values = _check_input(spec, open_times_ms, ohlcv)
    engine = ENGINES.get(spec.engine)
    if engine is None:
        raise ChartError(f"unknown engine {spec.engine!r}")
    return engine(spec, open_times_ms, values)
