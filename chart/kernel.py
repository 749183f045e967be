"""The compiled pixel loops (chart/_kernel.c), or a clear error where they are not built or out of date.

`make venv` compiles chart/_kernel.c into chart/_kernel.so and records the source's SHA-256 in it; a
missing or stale build fails the first drawing with a one-line ChartError naming the fix, so that a
checkout that skipped the build never draws with loops other than the ones in its source.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from types import ModuleType
from typing import Any

from chart.styles import ChartError

SOURCE = Path(__file__).with_name("_kernel.c")


class _Unbuilt:
    """Stands in for the module: any use raises the reason it could not be loaded."""

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __getattr__(self, name: str) -> Any:
        raise ChartError(f"{self.reason}: run `make venv` (it needs a C compiler and the Python headers)")


def load() -> ModuleType | _Unbuilt:
    try:
        from chart import _kernel
    except ImportError:
        return _Unbuilt("the drawing kernel chart/_kernel.so is not built")
    if _kernel.SOURCE_SHA256 != hashlib.sha256(SOURCE.read_bytes()).hexdigest():
        return _Unbuilt("the drawing kernel chart/_kernel.so was built from another chart/_kernel.c")
    return _kernel


kernel = load()
