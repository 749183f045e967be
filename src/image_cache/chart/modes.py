"""Pixel modes a user asks images in (`--mode rgb|palette|gray`), and the conversions from an engine's own.

Each engine draws in one mode (its `Engine.mode`): the raster engine palette indices, jkx gray levels, mplfinance
RGB. Any of them converts to `rgb` or `gray` exactly as Pillow converts the PNG (`Image.convert`), so
that a converted array equals what a client decoding the file in that mode gets; `palette` exists only
where the engine draws one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from image_cache.chart.styles import ChartError, Spec, engine_of

MODES = ("rgb", "palette", "gray")
PIL_MODES = {"rgb": "RGB", "palette": "P", "gray": "L"}


def native(spec: Spec) -> str:
    """The mode the spec's engine draws in."""
    return engine_of(spec).mode


def check(mode: str, spec: Spec) -> str:
    """`mode`, refused where the spec's images cannot be given in it."""
    if mode not in MODES:
        raise ChartError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if mode == "palette" and native(spec) != "palette":
        raise ChartError(f"mode palette: {spec.name} images are {native(spec)}, not palette images "
                         "(choose rgb or gray)")
    return mode


def _rgb_table(palette: list[str]) -> np.ndarray:
    return np.array([[int(c[k:k + 2], 16) for k in (1, 3, 5)] for c in palette], dtype=np.uint8)


class Converter:
    """The engine's pixels to `mode`'s: (H, W) for palette and gray, (H, W, 3) for rgb. Picklable, for
    loader workers."""

    def __init__(self, spec: Spec, mode: str, palette: list[str] | None) -> None:
        self.have, self.mode = native(spec), check(mode, spec)
        self.table: np.ndarray | None = None
        if self.have == "palette" and mode != "palette":
            assert palette is not None
            self.table = _rgb_table(palette)
            if mode == "gray":  # each palette colour's gray level, as Pillow converts a P image to L
                self.table = np.asarray(Image.fromarray(self.table[None, :, :], "RGB").convert("L"))[0]

    def __call__(self, pixels: np.ndarray) -> np.ndarray:
        if self.mode == self.have:
            return pixels
        if self.table is not None:
            return self.table[pixels]
        if self.have == "gray":  # gray to rgb: the level in each channel
            return np.repeat(pixels[:, :, None], 3, axis=2)
        return np.asarray(Image.fromarray(pixels, "RGB").convert("L"))
