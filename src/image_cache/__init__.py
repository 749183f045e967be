"""image_cache: crypto candles in market.sqlite -> a deterministic, verifiable dataset of chart images.

The public API (docs/api.md has runnable examples):

- `Settings`: the options (a frozen dataclass; `load()` reads defaults < TOML < overrides, validated);
- `render`, `verify`, `repair`, `status`, `export`: what the command lines do, as functions that return results;
- `ChartDataset`: the labelled windows of one split, drawn in memory on access (no files);
- `draw_chart`: one chart from arrays, PNG bytes and the pixel hash;
- `ImageCacheError`: the root of every error raised on purpose (`image_cache.errors` names the kinds).

Sub-packages, each importing only those below it:

- `image_cache.cli`: the command lines (`image-cache`, and the checkout's launchers);
- `image_cache.cache`: the image cache (render, verify, repair, status, export, the training dataset),
  `image_cache.ingest`: everything that writes market.sqlite;
- `image_cache.settings`: the renderer's settings, a plain dataclass and its validation;
- `image_cache.chart`: pure drawing, arrays in, PNG bytes out;
- `image_cache.core`: the contracts every part shares (errors, the interval grid, SQLite helpers).

Importing this package stays cheap: nothing below is imported until asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.9.0"

__all__ = ["ChartDataset", "ImageCacheError", "Settings", "__version__", "draw_chart", "export", "load", "render",
           "repair", "status", "verify"]

if TYPE_CHECKING:
    from image_cache.cache.dataset import ChartDataset
    from image_cache.chart.png import Drawn
    from image_cache.core.errors import ImageCacheError
    from image_cache.settings import Settings, load

# Names resolved on first use (PEP 562), so that `import image_cache` imports neither numpy nor SQLite code.
_LAZY = {"Settings": "image_cache.settings", "load": "image_cache.settings",
         "ChartDataset": "image_cache.cache.dataset", "ImageCacheError": "image_cache.core.errors"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'image_cache' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _filters(symbols: list[str] | None, intervals: list[str] | None) -> Any:
    from image_cache.cache.market import Filters
    from image_cache.settings import check_filters
    check_filters(symbols, intervals)
    return Filters(symbols=list(symbols) if symbols else None, intervals=list(intervals) if intervals else None)


def render(settings: Settings, *, symbols: list[str] | None = None, intervals: list[str] | None = None,
           dry_run: bool = False, limit: int | None = None, **hooks: Any) -> Any:
    """Draw the due windows that are not up to date; a RenderResult (`.as_dict()`, `.ok`).

    `symbols` / `intervals` narrow the configured series; `progress` and `warn` hooks are optional."""
    from image_cache.cache.runner import render as run
    return run(settings, _filters(symbols, intervals), dry_run=dry_run, limit=limit, **hooks)


def verify(settings: Settings, *, symbols: list[str] | None = None, intervals: list[str] | None = None,
           deep: bool = False, **hooks: Any) -> Any:
    """Check every indexed image and the image root; a VerifyResult (`.ok` is False when problems are found)."""
    from image_cache.cache.verify import verify as run
    return run(settings, _filters(symbols, intervals), deep=deep, **hooks)


def repair(settings: Settings, *, symbols: list[str] | None = None, intervals: list[str] | None = None,
           reindex: bool = False, **hooks: Any) -> Any:
    """Re-draw, adopt or remove until `verify(deep=True)` passes; a RepairResult."""
    from image_cache.cache.verify import repair as run
    return run(settings, _filters(symbols, intervals), reindex=reindex, **hooks)


def status(settings: Settings, *, symbols: list[str] | None = None, intervals: list[str] | None = None) -> Any:
    """Counts per series and status: a StatusResult whose `.series` is a list of dicts (DataFrame rows)."""
    from image_cache.cache.status import status as run
    return run(settings.image_index_db, symbols, intervals)


def export(settings: Settings, out: str, format: str, *, symbols: list[str] | None = None,
           intervals: list[str] | None = None, horizons: tuple[int, ...] = (5, 20), label: str = "sign",
           splits: str | None = None, warn: Any = None, **options: Any) -> Any:
    """Write an ML dataset to the new folder `out` (formats: imagefolder, parquet, webdataset, numpy, manifest).

    `label` and `splits` take the command line's forms ("sign", "bucket:-0.01,0.01"; "train:..2024-06-01,...");
    other options (shard_size, min_shards, seed, mode, sample, array_file, license, force) are ExportOptions
    fields."""
    from image_cache.cache.export import ExportOptions
    from image_cache.cache.export import export as run
    from image_cache.cache.exports.labels import parse_label, parse_splits
    opts = ExportOptions(format=format, horizons=tuple(horizons), label=parse_label(label),
                         splits=parse_splits(splits) if splits else None, **options)
    return run(settings, _filters(symbols, intervals), out, opts, **({"warn": warn} if warn else {}))


def draw_chart(style: str, times: Any, ohlcv: Any, *, size: int = 1280, window_len: int | None = None,
               version: int = 1, jkx_height: int = 64) -> Drawn:
    """One chart from arrays: `times` the candles' open times (epoch ms), `ohlcv` one row per candle
    (open, high, low, close, volume). Returns `Drawn`: `.png` (bytes) and `.pixel_hash`.

    `window_len` defaults to every candle given (jkx draws a moving average: it needs window_len - 1 more
    candles of history before the window, so it defaults to half of them)."""
    import numpy as np

    from image_cache import chart
    times = np.ascontiguousarray(times, dtype=np.int64)
    ohlcv = np.ascontiguousarray(ohlcv, dtype=np.float64)
    n = len(times)
    if window_len is None:
        spec = chart.make_spec(style, size, n, version, jkx_height)
        if spec.history:
            spec = chart.make_spec(style, size, (n + 1) // 2, version, jkx_height)
    else:
        spec = chart.make_spec(style, size, window_len, version, jkx_height)
    return chart.render(spec, times, ohlcv)
