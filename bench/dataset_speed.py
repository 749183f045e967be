"""The in-memory dataset against the engine, one core: `python -m bench.dataset_speed`.

Per preset (1280 px, 224 px, jkx 20), CPU ms per image (thread time, best of 3 rounds) of
- `chart.render` (the engine: pixels + PNG encoding, what render writes) and `cache.dataset.draw_pixels`
  (what `ChartDataset[i]` draws: pixels, no encoding), on bench/chart_speed's synthetic window;
- whole items: `ChartDataset(...)[i]` over the train split of a 30-day sample market (bench/work/dataset),
  against `chart.render` of the same windows;
- raster presets: the 4-bit unpack alone, compiled (chart/_kernel.c) and as the two strided numpy writes it
  replaced (issue 21 item 5).
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np

from bench.chart_speed import CASES, _repeat, best_ms, window
from image_cache import chart
from image_cache.cache.dataset import ChartDataset
from image_cache.cache.windows import window_rows
from image_cache.chart import draw_pixels, raster
from image_cache.chart.kernel import kernel


def _numpy_unpack(packed: np.ndarray, width: int) -> np.ndarray:
    indices = np.empty((packed.shape[0], 2 * packed.shape[1]), dtype=np.uint8)
    np.right_shift(packed, 4, out=indices[:, 0::2])
    np.bitwise_and(packed, 15, out=indices[:, 1::2])
    return indices[:, :width]


WORK = Path(__file__).resolve().parent / "work" / "dataset"
SIZES = {"mike 1280 w150": ("mike", 1280, 150), "mike 224 w60": ("mike", 224, 60), "jkx w20": ("jkx", 224, 20)}


def _items_ms(label: str, limit: int = 400) -> tuple[float, float]:
    """(engine, dataset) CPU ms per whole item over the first `limit` windows of the train split."""
    from image_cache import settings as config
    from image_cache.ingest.sample import build_sample

    WORK.mkdir(parents=True, exist_ok=True)
    if not (WORK / "market.sqlite").exists():
        build_sample(str(WORK / "market.sqlite"), symbols=["BTCUSDT", "ETHUSDT"], days=30, seed=3)
    style, size, n = SIZES[label]
    settings = config.load(None, {"market_db_path": str(WORK / "market.sqlite"), "pairs": ["BTCUSDT", "ETHUSDT"],
                                  "intervals": ["1h"], "style_name": style, "img_size_px": size, "window_len": n})
    ds = ChartDataset(settings, "train", horizons=(5,))
    count = min(limit, len(ds))
    windows = []
    for w in ds.windows[:count]:
        rows = window_rows(w.last, ds.spec.window_len, ds.spec.history)
        windows.append((ds.series[w.series].times[rows], ds.series[w.series].ohlcv[rows]))
    engine = dataset = float("inf")
    for _ in range(3):
        start = time.thread_time()
        for times, ohlcv in windows:
            chart.render(ds.spec, times, ohlcv)
        engine = min(engine, (time.thread_time() - start) / count * 1000)
        start = time.thread_time()
        for k in range(count):
            ds[k]
        dataset = min(dataset, (time.thread_time() - start) / count * 1000)
    return engine, dataset


def measure() -> list[dict]:
    results = []
    for label, style, size, n in CASES:
        if label not in ("mike 1280 w150", "mike 224 w60", "jkx w20"):
            continue
        spec = chart.make_spec(style, size or None, n)
        times, ohlcv = window(spec.n_candles)
        repeat = _repeat(spec)
        row = {"preset": label,
               "engine_ms": best_ms(functools.partial(chart.render, spec, times, ohlcv), repeat),
               "dataset_ms": best_ms(functools.partial(draw_pixels, spec, times, ohlcv), repeat)}
        if spec.engine == "raster":
            packed, _ = raster.draw_rows(spec, ohlcv)
            out = np.empty((spec.height, spec.width), dtype=np.uint8)
            row["unpack_c_ms"] = best_ms(functools.partial(kernel.unpack4, packed, out, spec.height, spec.width),
                                         repeat)
            row["unpack_numpy_ms"] = best_ms(functools.partial(_numpy_unpack, packed, spec.width), repeat)
        row["items_engine_ms"], row["items_dataset_ms"] = _items_ms(label)
        results.append(row)
    return results


def main() -> None:
    for row in measure():
        ratio = row["engine_ms"] / row["dataset_ms"]
        extra = (f", unpack {row['unpack_c_ms']:.3f} ms compiled / {row['unpack_numpy_ms']:.3f} ms numpy"
                 if "unpack_c_ms" in row else "")
        items = row["items_engine_ms"] / row["items_dataset_ms"]
        print(f"{row['preset']}: engine {row['engine_ms']:.3f} ms, in-memory draw {row['dataset_ms']:.3f} ms "
              f"({ratio:.2f}x the engine's images/s){extra}; whole items: engine {row['items_engine_ms']:.3f} ms, "
              f"ChartDataset[i] {row['items_dataset_ms']:.3f} ms ({items:.2f}x)")


if __name__ == "__main__":
    main()
