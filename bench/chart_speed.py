"""Milliseconds per image of the drawing core, per preset: `.venv/bin/python -m bench.chart_speed`.

Draw and encode only (no market reads, no files): the part of the pipeline chart/ owns. Not a test;
the machines are shared, so it prints the best of several rounds rather than asserting anything.
The allocator is tuned as in the render workers (cache.system.tune_allocator) unless --plain-malloc:
without it, fresh mmaps for each image's buffers cost more than the drawing at 1280 px.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np

import chart
from cache.system import tune_allocator
from chart import jkx, raster

CASES = (("mike", 1280, 150), ("mike", 224, 60), ("jkx", 0, 5), ("jkx", 0, 20), ("jkx", 0, 60))
MPL_CASES = (("mplfinance:mike", 1280, 150), ("mplfinance:yahoo", 224, 60))


def window(n: int) -> tuple[np.ndarray, np.ndarray]:
    """A trending window of n hourly candles from a closed formula (no RNG)."""
    k = np.arange(n, dtype=np.int64)
    mid = 100.0 + 0.25 * k + ((k * 37) % 23 - 11) * 0.4
    body = ((k * 13) % 7 - 3) * 0.35
    opens, closes = mid - body / 2, mid + body / 2
    highs = np.maximum(opens, closes) + ((k * 5) % 4) * 0.3 + 0.1
    lows = np.minimum(opens, closes) - ((k * 11) % 5) * 0.25 - 0.05
    volume = 1000.0 + ((k * 29) % 17) * 150.0
    return k * 3_600_000, np.column_stack([opens, highs, lows, closes, volume])


def best_ms(fn: Callable[[], object], repeat: int, rounds: int = 5) -> float:
    """Best of `rounds` rounds of the mean time of `repeat` calls, in ms."""
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeat):
            fn()
        best = min(best, (time.perf_counter() - start) / repeat * 1000)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpl", action="store_true", help="also time the mplfinance engine (slow)")
    parser.add_argument("--plain-malloc", action="store_true", help="leave glibc's allocator untuned")
    args = parser.parse_args()
    if not args.plain_malloc:
        tune_allocator()
    cases = CASES + (MPL_CASES if args.mpl else ())
    print(f"{'preset':<18} {'size':>8} {'window':>6} {'draw ms':>8} {'total ms':>9} {'PNG bytes':>10}")
    for style, size, n in cases:
        spec = chart.make_spec(style, size, n)
        times, ohlcv = window(spec.n_candles)
        repeat = 3 if spec.engine == "mplfinance" else 200
        drawn = chart.render(spec, times, ohlcv)
        engines: dict[str, Callable[[], object]] = {"raster": lambda: raster.draw(spec, ohlcv),
                                                    "jkx": lambda: jkx.draw(spec, ohlcv)}
        draw = f"{best_ms(engines[spec.engine], repeat):8.3f}" if spec.engine in engines else f"{'-':>8}"
        total = best_ms(lambda: chart.render(spec, times, ohlcv), repeat)
        print(f"{style:<18} {spec.size_label:>8} {n:>6} {draw} {total:9.3f} {len(drawn.png):>10,}")


if __name__ == "__main__":
    main()
