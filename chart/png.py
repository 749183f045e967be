"""Deterministic PNG encoding (no time or software chunks, fixed zlib settings) and the pixel hash.

The file bytes depend on Pillow's zlib; the pixel hash does not, so it is what identifies an image.
"""

from __future__ import annotations

import hashlib
import io
import struct

import numpy as np
from PIL import Image

from chart.styles import ChartError

# Level 1 measured fastest for 4-bit palette charts at 1280 px with files a few percent larger
# than level 6 (bench/chart_speed.py prints the numbers); never `optimize`, whose output is slower.
COMPRESS_LEVEL = 1
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _save(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    # Pillow writes IHDR, PLTE, IDAT and IEND only: no tIME, tEXt or pHYs unless asked for.
    img.save(buf, format="PNG", compress_level=COMPRESS_LEVEL, optimize=False)
    return buf.getvalue()


def _rgb_bytes(colour: str) -> bytes:
    return bytes.fromhex(colour.lstrip("#"))


def encode_palette(indices: np.ndarray, palette: list[str]) -> bytes:
    """A P-mode PNG; Pillow packs it to 1, 2 or 4 bits per pixel when the palette is that small."""
    img = Image.fromarray(indices, mode="P")
    img.putpalette(b"".join(_rgb_bytes(c) for c in palette), rawmode="RGB")
    return _save(img)


def encode_gray(pixels: np.ndarray) -> bytes:
    """An 8-bit grayscale (mode L) PNG."""
    return _save(Image.fromarray(pixels, mode="L"))


def encode_rgb(pixels: np.ndarray) -> bytes:
    """An 8-bit RGB PNG."""
    return _save(Image.fromarray(pixels, mode="RGB"))


def decode(png: bytes) -> Image.Image:
    """A fully decoded PNG; ChartError for anything that is not a complete, valid PNG."""
    if not png.startswith(PNG_SIGNATURE):
        raise ChartError("not a PNG file")
    try:
        img = Image.open(io.BytesIO(png), formats=["PNG"])
        img.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ChartError(f"unreadable PNG: {exc}") from exc
    return img


def pixel_hash(png: bytes) -> str:
    """SHA-256 of width, height and the RGBA pixels: equal pixels hash equal whatever the encoder."""
    img = decode(png)
    rgba = img.convert("RGBA").tobytes()
    return hashlib.sha256(struct.pack(">II", img.width, img.height) + rgba).hexdigest()


def png_size(png_head: bytes) -> tuple[int, int]:
    """(width, height) from the IHDR chunk in the first 24 bytes of a PNG file."""
    if len(png_head) < 24 or not png_head.startswith(PNG_SIGNATURE) or png_head[12:16] != b"IHDR":
        raise ChartError("not a PNG file")
    width, height = struct.unpack(">II", png_head[16:24])
    return width, height
