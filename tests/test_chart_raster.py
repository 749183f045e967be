"""Observable geometry of the mike preset (numpy raster engine): size, palette, candles, wicks, volume, PNG chunks."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest

from chart_windows import alternating, flat, one_huge_candle, open_times, trending, zero_volume
from image_cache import chart

BACKGROUND, GRID, WHITE, BLACK, BLUE, VOLUME = ((10, 10, 10), (46, 46, 46), (255, 255, 255), (0, 0, 0),
                                              (0, 128, 255), (113, 137, 170))
MIKE_PALETTE = {BACKGROUND, GRID, WHITE, BLACK, BLUE, VOLUME}
CANDLE = (WHITE, BLACK, BLUE)


def draw(size: int, window_len: int, ohlcv: np.ndarray) -> chart.Drawn:
    return chart.render(chart.make_spec("mike", size, window_len), open_times(window_len), ohlcv)


def rgb(size: int, window_len: int, ohlcv: np.ndarray) -> np.ndarray:
    img = chart.decode(draw(size, window_len, ohlcv).png)
    assert img.mode == "P"
    return np.asarray(img.convert("RGB"))


def is_colour(pixels: np.ndarray, *colours: tuple[int, int, int]) -> np.ndarray:
    return np.any([(pixels == c).all(axis=-1) for c in colours], axis=0)


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, length) of each run of True in a 1-D mask."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def price_area(size: int) -> slice:
    """Rows above the volume panel (the bottom fifth)."""
    return slice(0, size - size // 5)


def candle_runs(pixels: np.ndarray) -> list[tuple[int, int]]:
    """Column runs holding candle colours anywhere in the price area."""
    return runs(is_colour(pixels[price_area(pixels.shape[0])], *CANDLE).any(axis=0))


@pytest.mark.parametrize("size, window_len", [(1280, 150), (224, 60), (128, 20), (450, 150), (33, 11)])
def test_exact_size(size, window_len):
    drawn = draw(size, window_len, trending(window_len))
    assert chart.decode(drawn.png).size == (size, size)
    assert chart.png_size(drawn.png[:24]) == (size, size)
    # Odd widths pad the last 4-bit byte: the hash verify recomputes must still match.
    assert chart.pixel_hash(drawn.png) == drawn.pixel_hash


def test_palette_mode_with_mike_colours_only():
    drawn = draw(1280, 150, trending(150))
    img = chart.decode(drawn.png)
    assert img.mode == "P"
    used = {tuple(c) for c in np.asarray(img.convert("RGB")).reshape(-1, 3).tolist()}
    assert used <= MIKE_PALETTE
    # Up and down candles, wicks, volume, grid and background all appear in a normal window.
    assert used == MIKE_PALETTE


def test_candles_fill_the_width_centred():
    pixels = rgb(1280, 150, trending(150))
    found = candle_runs(pixels)
    assert len(found) == 150
    left = found[0][0]
    right = 1280 - (found[-1][0] + found[-1][1])
    slot = 1280 // 150
    assert left <= 1280 * 5 // 100 and right <= 1280 * 5 // 100
    assert abs(left - right) <= slot


def test_every_candle_at_least_3_px_wide():
    pixels = rgb(1280, 150, trending(150))
    assert all(width >= 3 for _, width in candle_runs(pixels))


def test_smallest_size_gives_every_candle_3_px():
    """At 450 px a 150-candle window has exactly 3 px per candle: down bodies are 3 blue columns each."""
    pixels = rgb(450, 150, alternating(150, "ud"))
    body_row = pixels[pixels.shape[0] * 2 // 5]  # 105, the middle of every body
    blue = runs(is_colour(body_row, BLUE))
    assert len(blue) == 75 and all(width == 3 for _, width in blue)
    # Up candles at this width: white edge, black body, white edge.
    assert is_colour(body_row, WHITE).sum() == 2 * 75 and is_colour(body_row, BLACK).sum() == 75


PATTERN = "uudud"


def _columns_320() -> tuple[np.ndarray, list[tuple[int, int]]]:
    pixels = rgb(320, 20, alternating(20, PATTERN))
    found = candle_runs(pixels)
    assert len(found) == 20
    return pixels, found


def _rows_of(pixels: np.ndarray, column: int, colour: tuple[int, int, int]) -> np.ndarray:
    return np.flatnonzero(is_colour(pixels[price_area(pixels.shape[0]), column], colour))


def test_up_and_down_candle_colours():
    pixels, found = _columns_320()
    body_row = pixels.shape[0] * 2 // 5
    for i, (start, width) in enumerate(found):
        middle, edge = tuple(pixels[body_row, start + width // 2 - 1]), tuple(pixels[body_row, start])
        if PATTERN[i % len(PATTERN)] == "u":
            assert (middle, edge) == (BLACK, WHITE), i
        else:
            assert (middle, edge) == (BLUE, BLUE), i


def test_wick_is_one_centred_column():
    pixels, found = _columns_320()
    for i, (start, width) in enumerate(found):
        body_top = min(_rows_of(pixels, start, WHITE).min(initial=10**6),
                       _rows_of(pixels, start, BLUE).min(initial=10**6))
        above = is_colour(pixels[:body_top, start:start + width], *CANDLE).any(axis=0)
        assert width % 2 == 1 and np.flatnonzero(above).tolist() == [width // 2], i
        # High to low through the body with no hole: one run of candle colours in the centre column.
        centre = is_colour(pixels[price_area(320), start + width // 2], *CANDLE)
        (top, length), = runs(centre)
        assert top < body_top and top + length > body_top + 1, i


def _bar_height(pixels: np.ndarray, column: int) -> int:
    """Contiguous volume-coloured pixels from the bottom row up."""
    column_pixels = is_colour(pixels[::-1, column], VOLUME)
    return int(np.argmin(column_pixels)) if not column_pixels.all() else len(column_pixels)


def test_volume_bars_proportional_max_fills_panel_zero_has_none():
    window = alternating(20, PATTERN)
    window[:, 4] = [float(v) for v in (5, 10, 0, 20, 40, 3, 7, 12, 0, 25, 15, 1, 30, 8, 2, 9, 11, 6, 4, 35)]
    pixels = rgb(320, 20, window)
    found = candle_runs(pixels)
    heights = [_bar_height(pixels, start + width // 2) for start, width in found]
    tallest = max(heights)
    assert heights.index(tallest) == 4  # volume 40
    # The tallest bar nearly fills the bottom fifth and stays inside it.
    assert 320 // 5 * 0.85 <= tallest <= 320 // 5
    for i, (volume, height) in enumerate(zip(window[:, 4], heights, strict=True)):
        assert abs(height - volume / 40 * tallest) <= 1, i
    for i in (2, 8):
        start, width = found[i]
        assert not is_colour(pixels[:, start:start + width], VOLUME).any(), i
    # Bars span the candle's body columns exactly.
    start, width = found[4]
    assert runs(is_colour(pixels[-1], VOLUME))[3] == (start, width)


def test_zero_volume_window_draws_no_bars():
    pixels = rgb(1280, 150, zero_volume(150))
    assert not is_colour(pixels, VOLUME).any()
    assert len(candle_runs(pixels)) == 150


def test_flat_window_draws_one_row_of_bodies_in_the_middle():
    pixels = rgb(1280, 150, flat(150))
    rows = np.flatnonzero(is_colour(pixels[price_area(1280)], *CANDLE).any(axis=1))
    assert len(rows) == 1
    assert abs(int(rows[0]) - 1280 * 2 // 5) <= 1280 // 50
    assert len(runs(is_colour(pixels[rows[0]], WHITE))) == 150


def test_single_huge_candle_spans_the_price_panel_others_stay_visible():
    pixels = rgb(1280, 150, one_huge_candle(150))
    found = candle_runs(pixels)
    assert len(found) == 150
    start, width = found[75]
    wick = _rows_of(pixels, start + width // 2, WHITE)
    assert wick.max() - wick.min() >= 0.8 * (1280 - 1280 // 5)
    assert all(w >= 3 for _, w in found)


def test_too_small_a_size_names_the_smallest_that_fits():
    with pytest.raises(chart.ChartError, match=r"at least 450 px"):
        chart.make_spec("mike", 449, 150)
    chart.make_spec("mike", 450, 150)
    with pytest.raises(chart.ChartError, match=r"at least 32 px"):
        chart.make_spec("mike", 31, 5)


@pytest.mark.parametrize("change, message", [
    (lambda w: w.__setitem__((3, 1), np.nan), "non-finite"),
    (lambda w: w.__setitem__((3, 2), -np.inf), "non-finite"),
    (lambda w: w.__setitem__((3, 4), -1.0), "negative volume"),
])
def test_bad_values_are_chart_errors(change, message):
    window = trending(20)
    change(window)
    with pytest.raises(chart.ChartError, match=message):
        draw(128, 20, window)


def test_wrong_shape_is_a_chart_error():
    spec = chart.make_spec("mike", 128, 20)
    with pytest.raises(chart.ChartError, match="20 candles"):
        chart.render(spec, open_times(19), trending(19))
    with pytest.raises(chart.ChartError, match="open times"):
        chart.render(spec, open_times(19), trending(20))


def png_chunks(png: bytes) -> list[bytes]:
    """Chunk types in file order, checking each chunk's length and CRC."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    kinds, at = [], 8
    while at < len(png):
        (length,) = struct.unpack(">I", png[at:at + 4])
        kind, data = png[at + 4:at + 8], png[at + 8:at + 8 + length]
        (crc,) = struct.unpack(">I", png[at + 8 + length:at + 12 + length])
        assert crc == zlib.crc32(kind + data), kind
        kinds.append(kind)
        at += 12 + length
    assert at == len(png)
    return kinds


def test_png_has_only_critical_chunks():
    kinds = png_chunks(draw(1280, 150, trending(150)).png)
    assert kinds[0] == b"IHDR" and kinds[1] == b"PLTE" and kinds[-1] == b"IEND"
    assert set(kinds) == {b"IHDR", b"PLTE", b"IDAT", b"IEND"}
    assert not {b"tIME", b"tEXt", b"iTXt", b"zTXt", b"pHYs"} & set(kinds)
