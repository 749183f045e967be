"""The compiled pixel loops (chart/_kernel.c), or a clear error where they are not built or out of date.

`make venv` compiles chart/_kernel.c into chart/_kernel.so; a missing or stale build fails the first
drawing with a one-line ChartError naming the fix (core/compiled.py).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from image_cache.chart.styles import ChartError
from image_cache.core import compiled

SOURCE = Path(__file__).with_name("_kernel.c")


def load() -> ModuleType | compiled.Unbuilt:
    return compiled.load("image_cache.chart._kernel", "the drawing kernel", SOURCE, ChartError)


kernel = load()
