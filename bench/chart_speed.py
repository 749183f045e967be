"""Milliseconds per image of the drawing engine on one core, per preset, and where they go:
`.venv/bin/python -m bench.chart_speed` (`--json` for bench/__main__.py).

Draw, encode and hash only (no market reads, no files): the part of the pipeline chart/ owns. Not a
test; the machines are shared, so it reports the best of several rounds, as CPU time of this thread
(what one core spends, whatever else runs on the machine) and as wall time. The allocator is tuned as
in the render workers (cache.system.tune_allocator) unless --plain-malloc: without it, fresh mmaps
for each image's buffers cost more than the drawing at 1280 px.

Stages: check (input validation), draw (the engine's pixels as PNG stores them: mike draws 4-bit rows
directly), filter (PNG Up filter), deflate (ISA-L), hash (the pixel hash) and png (the rest of
chart.render: chunks, CRCs, the result object), computed as the total less the others.
"""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from image_cache import chart
from image_cache.cache.system import tune_allocator
from image_cache.chart import jkx, png, raster

# (label, style, size, window): the presets issue 13 sets targets for, and two more jkx lengths.
CASES = (("mike 1280 w150", "mike", 1280, 150), ("mike 224 w60", "mike", 224, 60), ("jkx w5", "jkx", 0, 5),
         ("jkx w20", "jkx", 0, 20), ("jkx w60", "jkx", 0, 60))
MPL_CASES = (("mplfinance:mike 1280 w150", "mplfinance:mike", 1280, 150),
             ("mplfinance:yahoo 224 w60", "mplfinance:yahoo", 224, 60))
STAGES = ("check", "draw", "filter", "deflate", "hash", "png")


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


def best_ms(fn: Callable[[], object], repeat: int, rounds: int = 5,
            clock: Callable[[], float] = time.thread_time) -> float:
    """Best of `rounds` rounds of the mean time of `repeat` calls, in ms of `clock`."""
    best = float("inf")
    for _ in range(rounds):
        start = clock()
        for _ in range(repeat):
            fn()
        best = min(best, (clock() - start) / repeat * 1000)
    return best


def _repeat(spec: chart.Spec) -> int:
    if spec.engine == "mplfinance":
        return 3
    return 40 if spec.width * spec.height > 500_000 else 300


def stages(spec: chart.Spec, times: np.ndarray, ohlcv: np.ndarray) -> dict[str, float]:
    """CPU ms of each stage of chart.render for the raster and jkx engines (module docstring)."""
    values = chart.check_input(spec, times, ohlcv)
    if spec.engine == "raster":
        draw: Callable[[], Any] = lambda: raster.draw_rows(spec, values)  # noqa: E731
        rows, palette = draw()
        mode = "P"
    else:
        draw = lambda: jkx.draw(spec, values)  # noqa: E731
        rows, mode, palette = draw(), "L", b""
    filtered = png._filtered(rows).copy()
    repeat = _repeat(spec)
    found = {
        "check": best_ms(lambda: chart.check_input(spec, times, ohlcv), repeat),
        "draw": best_ms(draw, repeat),
        "filter": best_ms(lambda: png._filtered(rows), repeat),
        "deflate": best_ms(lambda: png.deflate(filtered.data), repeat),
        "hash": best_ms(lambda: png._canonical_hash(mode, spec.width, spec.height, palette, rows), repeat),
    }
    total = best_ms(lambda: chart.render(spec, times, ohlcv), repeat)
    found["png"] = max(0.0, total - sum(found.values()))
    return found


def measure(cases: tuple[tuple[str, str, int, int], ...] = CASES, with_stages: bool = True) -> list[dict[str, Any]]:
    """Per case: CPU and wall ms per image of chart.render, PNG bytes, and the stage breakdown."""
    out = []
    for label, style, size, n in cases:
        spec = chart.make_spec(style, size, n)
        times, ohlcv = window(spec.n_candles)
        drawn = chart.render(spec, times, ohlcv)
        repeat = _repeat(spec)
        found: dict[str, Any] = {
            "case": label, "style": style, "size": spec.size_label, "window": n, "png_bytes": len(drawn.png),
            "cpu_ms": best_ms(functools.partial(chart.render, spec, times, ohlcv), repeat),
            "wall_ms": best_ms(functools.partial(chart.render, spec, times, ohlcv), repeat, clock=time.perf_counter),
        }
        if with_stages and spec.engine != "mplfinance":
            found["stages"] = stages(spec, times, ohlcv)
        out.append(found)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mpl", action="store_true", help="also time the mplfinance engine (slow)")
    parser.add_argument("--plain-malloc", action="store_true", help="leave glibc's allocator untuned")
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = parser.parse_args()
    if not args.plain_malloc:
        tune_allocator()
    results = measure(CASES + (MPL_CASES if args.mpl else ()))
    if args.json:
        print(json.dumps(results))
        return
    print(f"{'case':<26} {'CPU ms':>8} {'wall ms':>8} {'PNG bytes':>10}  " + " ".join(f"{s:>7}" for s in STAGES))
    for r in results:
        cells = " ".join(f"{r['stages'][s]:7.3f}" for s in STAGES) if "stages" in r else ""
        print(f"{r['case']:<26} {r['cpu_ms']:8.3f} {r['wall_ms']:8.3f} {r['png_bytes']:>10,}  {cells}")


if __name__ == "__main__":
    main()
