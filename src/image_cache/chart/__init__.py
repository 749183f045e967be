"""Pure drawing: arrays in, PNG bytes out. No files, no SQLite, no global state.

Engines: `raster` (preset mike), `jkx` (the Jiang-Kelly-Xiu OHLC images) and `mplfinance`
(any built-in mplfinance style; matplotlib is imported only when such a spec is drawn).
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType

import numpy as np

from image_cache.chart.png import PIXEL_HASH_VERSION, Drawn, decode, encode_palette, pixel_hash, png_size
from image_cache.chart.styles import (
    ENGINES,
    STYLES,
    STYLES_HELP,
    STYLES_USAGE,
    ChartError,
    Engine,
    Spec,
    engine_of,
    make_spec,
    style_from_tag,
)

__all__ = ["ENGINES", "PIXEL_HASH_VERSION", "STYLES", "STYLES_HELP", "STYLES_USAGE", "ChartError", "Drawn", "Engine",
           "Spec", "check_input", "decode", "draw_pixels", "encode_palette", "make_spec", "palette", "pixel_hash",
           "png_size", "render", "style_from_tag"]


def check_input(spec: Spec, open_times_ms: np.ndarray, ohlcv: np.ndarray) -> np.ndarray:
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


@functools.cache
def _module(engine: Engine) -> ModuleType:
    """The engine's module, imported on first use (matplotlib costs ~0.5 s: only workers drawing with it pay)."""
    return importlib.import_module(f"image_cache.chart.{engine.module}")


def render(spec: Spec, open_times_ms: np.ndarray, ohlcv: np.ndarray) -> Drawn:
    """PNG bytes and pixel hash of one window: ohlcv rows are history + window candles, columns O, H, L, C, V."""
    values = check_input(spec, open_times_ms, ohlcv)
    return _module(engine_of(spec)).draw_png(spec, open_times_ms, values)


def draw_pixels(spec: Spec, open_times_ms: np.ndarray, ohlcv: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """The pixels render() would encode, in the engine's own mode, without encoding them; and the palette
    of a palette engine (None otherwise)."""
    values = check_input(spec, open_times_ms, ohlcv)
    return _module(engine_of(spec)).draw_pixels(spec, open_times_ms, values)


def palette(spec: Spec) -> list[str] | None:
    """The colours (hex) of the palette indices a palette engine's images hold; None for other engines."""
    engine = engine_of(spec)
    return _module(engine).palette(spec) if engine.mode == "palette" else None
