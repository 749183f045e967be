"""The PNG encoder and the pixel hash: the hash is exactly its documented definition, recomputed from
decoded pixels by an independent implementation, and it changes with any single pixel; buffers the
encoder reuses never leak one image into another, across sizes or threads."""

from __future__ import annotations

import struct
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from blake3 import blake3

from chart_windows import open_times, trending
from image_cache import chart
from image_cache.chart import jkx, png, raster


def reference_hash(data: bytes) -> str:
    """pixels-v2 as chart/png.py's docstring defines it, from Pillow's decoding and plain Python packing."""
    img = chart.decode(data)
    pixels = np.asarray(img)
    palette = bytes(img.getpalette() or b"") if img.mode == "P" else b""
    rows = []
    for row in pixels.reshape(img.height, -1).tolist():
        if img.mode == "P" and len(palette) <= 48:
            row = row + [0] * (len(row) % 2)
            row = [(row[i] << 4) | row[i + 1] for i in range(0, len(row), 2)]
        rows.append(bytes(row))
    head = b"pixels-v2 " + img.mode.encode() + struct.pack(">II", img.width, img.height)
    return blake3(head + palette + b"".join(rows)).hexdigest()


def draw(style: str, size: int, window: int) -> chart.Drawn:
    spec = chart.make_spec(style, size, window)
    return chart.render(spec, open_times(spec.n_candles), trending(spec.n_candles))


@pytest.mark.parametrize("style,size,window", [("mike", 224, 60), ("mike", 225, 60), ("mike", 97, 31),
                                               ("jkx", 0, 20), ("jkx", 0, 5)])
def test_pixel_hash_is_the_documented_definition(style, size, window):
    drawn = draw(style, size, window)
    assert drawn.pixel_hash == reference_hash(drawn.png) == chart.pixel_hash(drawn.png)


def test_pixel_hash_of_rgb_images():
    rgb = np.random.default_rng(5).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    drawn = png.encode_rgb(rgb)
    assert np.array_equal(np.asarray(chart.decode(drawn.png)), rgb)
    assert drawn.pixel_hash == reference_hash(drawn.png)


@pytest.mark.parametrize("kind", ["palette", "gray"])
def test_any_single_pixel_changes_the_hash(kind):
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 8 if kind == "palette" else 256, (21, 35), dtype=np.uint8)
    encode = ((lambda p: png.encode_palette(p, [f"#0000{i:02x}" for i in range(8)])) if kind == "palette"
              else png.encode_gray)
    seen = {encode(pixels).pixel_hash}
    for y, x in [(0, 0), (0, 34), (20, 0), (20, 34), (10, 17), (10, 18)]:
        changed = pixels.copy()
        changed[y, x] = (int(changed[y, x]) + 1) % (8 if kind == "palette" else 256)
        seen.add(encode(changed).pixel_hash)
    assert len(seen) == 7


def test_reused_buffers_give_the_bytes_of_a_fresh_process_order():
    """Sizes interleaved and threads drawing at once give each image its own bytes."""
    cases = [("mike", 224, 60), ("mike", 1280, 150), ("jkx", 0, 20), ("mike", 224, 60), ("mike", 226, 60)]
    alone = [draw(*case).png for case in cases]
    assert [draw(*case).png for case in reversed(cases)] == alone[::-1]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda case: draw(*case).png, cases * 4)) == alone * 4


def _filled_with(garbage: int):
    """np.empty that hands out memory filled with `garbage`."""
    def dirty_empty(shape, dtype=float, **kwargs):
        return np.full(shape, garbage, dtype=dtype)
    return dirty_empty


@pytest.mark.parametrize("style,size,window", [("mike", 128, 30), ("mike", 97, 31), ("mike", 1280, 150),
                                               ("jkx", 0, 5), ("jkx", 0, 60)])
def test_bytes_do_not_depend_on_leftover_memory(monkeypatch, style, size, window):
    """Issue 23 item 16: kernel outputs and the filter's buffer pre-filled with garbage give the bytes of
    clean memory (a read of memory nobody wrote would make them vary from run to run)."""
    clean = draw(style, size, window)
    for garbage in (0x00, 0x5A, 0xFF):
        dirty_empty = _filled_with(garbage)
        monkeypatch.setattr(raster.np, "empty", dirty_empty)
        monkeypatch.setattr(jkx.np, "empty", dirty_empty)
        drawn = draw(style, size, window)
        monkeypatch.undo()
        stored = png._scratch.stored
        png._scratch.stored = np.full(stored.shape, garbage, dtype=np.uint8)  # the next image's buffer, dirty
        try:
            assert (drawn.png, drawn.pixel_hash) == (clean.png, clean.pixel_hash)
            assert draw(style, size, window).png == clean.png
        finally:
            png._scratch.stored = stored
