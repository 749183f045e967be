"""The in-memory dataset's drawing against the engine, one core: `python -m bench.dataset_speed`.

Per preset, CPU ms per image of `chart.render` (the engine: pixels + PNG encoding, what render writes)
and of `cache.dataset.draw_pixels` (what `ChartDataset[i]` draws: pixels, no encoding), on bench/chart_speed's
synthetic window; for the raster engine also the 4-bit unpack alone, compiled (chart/_kernel.c) and as the two
strided numpy writes it replaced (issue 21 item 5).
"""

from __future__ import annotations

import numpy as np

from bench.chart_speed import CASES, _repeat, best_ms, window
from image_cache import chart
from image_cache.cache.dataset import draw_pixels
from image_cache.chart import raster
from image_cache.chart.kernel import kernel


def _numpy_unpack(packed: np.ndarray, width: int) -> np.ndarray:
    indices = np.empty((packed.shape[0], 2 * packed.shape[1]), dtype=np.uint8)
    np.right_shift(packed, 4, out=indices[:, 0::2])
    np.bitwise_and(packed, 15, out=indices[:, 1::2])
    return indices[:, :width]


def measure() -> list[dict]:
    results = []
    for label, style, size, n in CASES:
        if label not in ("mike 1280 w150", "mike 224 w60", "jkx w20"):
            continue
        spec = chart.make_spec(style, size or None, n)
        times, ohlcv = window(spec.n_candles)
        repeat = _repeat(spec)
        row = {"preset": label, "engine_ms": best_ms(lambda: chart.render(spec, times, ohlcv), repeat),
               "dataset_ms": best_ms(lambda: draw_pixels(spec, times, ohlcv), repeat)}
        if spec.engine == "raster":
            packed, _ = raster.draw_rows(spec, ohlcv)
            out = np.empty((spec.height, spec.width), dtype=np.uint8)
            row["unpack_c_ms"] = best_ms(lambda: kernel.unpack4(packed, out, spec.height, spec.width), repeat)
            row["unpack_numpy_ms"] = best_ms(lambda: _numpy_unpack(packed, spec.width), repeat)
        results.append(row)
    return results


def main() -> None:
    for row in measure():
        ratio = row["engine_ms"] / row["dataset_ms"]
        extra = (f", unpack {row['unpack_c_ms']:.3f} ms compiled / {row['unpack_numpy_ms']:.3f} ms numpy"
                 if "unpack_c_ms" in row else "")
        print(f"{row['preset']}: engine {row['engine_ms']:.3f} ms, in-memory dataset {row['dataset_ms']:.3f} ms "
              f"({ratio:.2f}x the engine's images/s){extra}")


if __name__ == "__main__":
    main()
