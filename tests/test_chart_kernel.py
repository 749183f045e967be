"""The compiled pixel loops (chart/_kernel.c): they refuse coordinates outside the image instead of
writing past it, the index image handed to datasets is the PNG's, and a missing or stale build is a
one-line ChartError that names the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chart_windows import open_times, trending
from image_cache import chart
from image_cache.chart import jkx, kernel, raster
from image_cache.chart.styles import JKX_MIN_HEIGHT, raster_min_size
from test_chart_jkx import sequential_moving_average
from test_chart_properties import windows

REPO = Path(__file__).resolve().parents[1]


def mike_args(size: int = 224, n: int = 60) -> tuple[chart.Spec, list]:
    spec = chart.make_spec("mike", size, n)
    plan = raster._plan(spec)
    geo = plan.geo
    out = np.empty((size, (size + 1) // 2), dtype=np.uint8)
    rows = np.full((n, 4), geo.price_top, dtype=np.int64)
    args = [out, size, size, plan.role_indices, plan.grid_rows, geo.left, geo.slot, geo.body, rows,
            np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64)]
    return spec, args


@pytest.mark.parametrize("where,value,message", [
    (8, -1, "price row -1"), (8, 224, "price row 224"), (10, 225, "volume bar 225"), (10, -3, "volume bar -3")])
def test_mike_refuses_rows_outside_the_image(where, value, message):
    _, args = mike_args()
    args[where][5] = value
    with pytest.raises(ValueError, match=message):
        kernel.kernel.mike(*args)


def test_mike_refuses_price_strokes_over_the_volume_bars():
    _, args = mike_args()
    args[10][3] = 30  # bars reach row 194
    args[8][7] = 194
    with pytest.raises(ValueError, match=r"price row 194 is outside 0\.\.193"):
        kernel.kernel.mike(*args)
    args[8][7] = 193
    kernel.kernel.mike(*args)


def test_mike_refuses_candles_past_the_right_edge_and_short_buffers():
    _, args = mike_args()
    args[6] += 1  # slot: the last candle ends past the width
    with pytest.raises(ValueError, match="last candle end"):
        kernel.kernel.mike(*args)
    _, args = mike_args()
    args[0] = args[0][:-1]
    with pytest.raises(ValueError, match="out: expected"):
        kernel.kernel.mike(*args)


@pytest.mark.parametrize("value,message", [(-1, "price row -1"), (50, "price row 50")])
def test_jkx_refuses_rows_outside_the_price_area(value, message):
    rows = np.zeros(5 * 20, dtype=np.int64)
    rows[42] = value
    with pytest.raises(ValueError, match=message):
        kernel.kernel.jkx(np.empty((64, 60), dtype=np.uint8), 60, 64, 50, rows, np.zeros(20, dtype=np.int64))


@pytest.mark.parametrize("size,n", [(224, 60), (225, 60), (97, 31)])
def test_dataset_indices_are_the_png_pixels(size, n):
    spec = chart.make_spec("mike", size, n)
    ohlcv = trending(n)
    indices, _ = raster.draw(spec, ohlcv)
    assert indices.shape == (size, size)
    assert np.array_equal(indices, np.asarray(chart.decode(chart.render(spec, open_times(n), ohlcv).png)))


def test_stale_build_is_refused(tmp_path, monkeypatch):
    edited = tmp_path / "_kernel.c"
    edited.write_bytes(kernel.SOURCE.read_bytes() + b"\n/* edited */\n")
    monkeypatch.setattr(kernel, "SOURCE", edited)
    with pytest.raises(chart.ChartError, match=r"built from another image_cache/chart/_kernel.c: run `make venv`"):
        kernel.load().mike  # noqa: B018 - any attribute of an unbuilt module raises, which is the subject


def test_missing_build_is_a_one_line_cli_error(tmp_path):
    """A checkout without chart/_kernel.so: render fails with one Error line, no traceback."""
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'image_cache.chart._kernel':\n"
             "            raise ImportError(name)\n"
             "sys.meta_path.insert(0, Block())\n")
    (tmp_path / "sitecustomize.py").write_text(block)
    code = ("import numpy as np; from image_cache import chart; from image_cache.cli import console\n"
            "from chart_windows import open_times, trending\n"
            "spec = chart.make_spec('jkx', 0, 5)\n"
            "class R:\n"
            "    ok = True\n"
            "    def as_dict(self): return {}\n"
            "    def text(self): return ''\n"
            "def command():\n"
            "    chart.render(spec, open_times(9), trending(9))\n"
            "    return R()\n"
            "raise SystemExit(console.run(command, False))\n")
    env = {"PYTHONPATH": f"{tmp_path}:{REPO / 'src'}:{REPO / 'tests'}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr == ("Error: the drawing kernel image_cache/chart/_kernel.so is not built: run `make venv` "
                           "(a checkout) or reinstall with `pip install .` (both need a C compiler and the Python "
                           "headers)\n")


def test_jkx_draw_is_the_png_pixels():
    spec = chart.make_spec("jkx", 0, 20)
    ohlcv = trending(spec.n_candles)
    pixels = jkx.draw(spec, ohlcv)
    assert np.array_equal(pixels, np.asarray(chart.decode(chart.render(spec, open_times(spec.n_candles), ohlcv).png)))


def reference_mike(spec: chart.Spec, ohlcv: np.ndarray) -> np.ndarray:
    """The engine's former numpy loop, stroke by stroke over the whole image: the kernel's oracle."""
    n = ohlcv.shape[0]
    geo = raster.layout(spec.width, spec.height, n)
    _, ix = raster._palette(spec)
    low, high = float(ohlcv[:, :4].min()), float(ohlcv[:, :4].max())
    rows = raster.price_rows(ohlcv[:, :4], low, high, geo.price_top, geo.price_span)
    bars = raster.volume_heights(ohlcv[:, 4], geo.volume_rows)
    img = np.full((spec.height, spec.width), ix["background"], dtype=np.uint8)
    img[list(geo.grid_rows), :] = ix["grid"]
    body, bottom = geo.body, spec.height
    for i in range(n):
        x = geo.left + i * geo.slot
        img[rows[i, 1]:rows[i, 2] + 1, x + body // 2] = ix["wick"]
        top, end = min(rows[i, 0], rows[i, 3]), max(rows[i, 0], rows[i, 3]) + 1
        up = ohlcv[i, 3] >= ohlcv[i, 0]
        edge, fill = (ix["up_edge"], ix["up_body"]) if up else (ix["down_edge"], ix["down_body"])
        img[top:end, x:x + body] = edge
        if fill != edge and end - top > 2:
            img[top + 1:end - 1, x + 1:x + body - 1] = fill
        if bars[i]:
            img[bottom - bars[i]:bottom, x:x + body] = ix["volume"]
    return img


def reference_jkx(spec: chart.Spec, ohlcv: np.ndarray) -> np.ndarray:
    """The engine's former numpy drawing (prices to rows exactly as chart/jkx.py): the kernel's oracle."""
    n, height = spec.window_len, spec.height
    prices = ohlcv[:, :4] / ohlcv[spec.history, 3]
    ma = sequential_moving_average(prices[:, 3], n)
    window = prices[spec.history:]
    low, high = float(min(window.min(), ma.min())), float(max(window.max(), ma.max()))
    volume_rows = height // 5
    price_h = height - volume_rows - 1
    scaled = np.rint((np.concatenate([window.T.ravel(), ma]) - low) * (price_h - 1) / (high - low))
    o, h, lo, c, ma_rows = (price_h - 1 - scaled.astype(np.int64)).reshape(5, n)
    img = np.zeros((height, spec.width), dtype=np.uint8)
    centre = 3 * np.arange(n) + 1
    r = np.arange(price_h)[:, None]
    img[:price_h, 1::3][(r >= h) & (r <= lo)] = 255
    img[o, centre - 1] = 255
    img[c, centre + 1] = 255
    img[ma_rows[0], 1] = 255
    for i in range(n - 1):  # integer DDA: round(k * d / s) as floor((2kd + s) / 2s)
        dy = int(ma_rows[i + 1] - ma_rows[i])
        s = max(3, abs(dy))
        for k in range(s + 1):
            img[ma_rows[i] + (2 * k * dy + s) // (2 * s), centre[i] + (2 * k * 3 + s) // (2 * s)] = 255
    volume = ohlcv[spec.history:, 4]
    if volume.max() > 0:
        bars = np.rint(volume / float(volume.max()) * volume_rows).astype(np.int64)
        rv = np.arange(height - volume_rows, height)[:, None]
        img[height - volume_rows:, 1::3][rv >= height - bars] = 255
    return img


@st.composite
def mike_cases(draw) -> tuple[chart.Spec, np.ndarray]:
    n = draw(st.integers(1, 40))
    size = draw(st.integers(raster_min_size(n), 300))
    return chart.make_spec("mike", size, n), draw(windows(n))


@settings(max_examples=150, deadline=None)
@given(mike_cases())
def test_mike_kernel_draws_what_the_numpy_loop_drew(case):
    spec, ohlcv = case
    assert np.array_equal(raster.draw(spec, ohlcv)[0], reference_mike(spec, ohlcv))


@st.composite
def jkx_cases(draw) -> tuple[chart.Spec, np.ndarray]:
    n = draw(st.sampled_from([1, 2, 5, 20, 33, 60]))
    spec = chart.make_spec("jkx", 0, n, jkx_height=draw(st.integers(JKX_MIN_HEIGHT, 120)))
    return spec, draw(windows(spec.n_candles))


@settings(max_examples=150, deadline=None)
@given(jkx_cases())
def test_jkx_kernel_draws_what_numpy_drew(case):
    spec, ohlcv = case
    try:
        got = jkx.draw(spec, ohlcv)
    except chart.ChartError:  # refused before any pixel (a window with no price range)
        return
    assert np.array_equal(got, reference_jkx(spec, ohlcv))


# Runs of every length around the match limits (3, 258, 259..261), literals, and counts skewed like
# Fibonacci numbers, which would give codes over 15 bits without the length limit.
_FIBONACCI = [1, 1]
while len(_FIBONACCI) < 30:
    _FIBONACCI.append(_FIBONACCI[-1] + _FIBONACCI[-2])
SKEWED = b"".join(bytes([7 * k % 256, (7 * k + 1) % 256]) * f for k, f in enumerate(_FIBONACCI))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.sampled_from([1, 2, 3, 4, 10, 11, 138, 139, 258, 259, 260, 261,
                                                                  600])), max_size=60))
def test_deflate_runs_gives_a_stream_zlib_inflates_to_the_data(runs):
    import zlib
    data = b"".join(bytes([b]) * n for b, n in runs)
    assert zlib.decompress(kernel.kernel.deflate_runs(data), -15) == data


@pytest.mark.parametrize("data", [b"", b"\x00", bytes(819_200), bytes(range(256)) * 40, SKEWED],
                         ids=["empty", "one", "zeros", "every-byte", "skewed"])
def test_deflate_runs_edge_cases_inflate_and_repeat(data):
    import zlib
    stream = kernel.kernel.deflate_runs(data)
    assert zlib.decompress(stream, -15) == data
    assert kernel.kernel.deflate_runs(bytearray(data)) == stream  # the same bytes, whatever holds them


@pytest.mark.parametrize("width", [1, 7, 224])
def test_unpack4_gives_each_nibble_in_order(width: int):
    # The high nibble is the first pixel; an odd width leaves the last byte's low nibble unused.
    rng = np.random.default_rng(width)
    packed = rng.integers(0, 256, size=(3, (width + 1) // 2), dtype=np.uint8)
    out = np.empty((3, width), dtype=np.uint8)
    kernel.kernel.unpack4(packed, out, 3, width)
    assert (out == np.stack([packed >> 4, packed & 15], axis=2).reshape(3, -1)[:, :width]).all()
    with pytest.raises(ValueError, match="out: expected"):
        kernel.kernel.unpack4(packed, np.empty((3, width + 2), dtype=np.uint8), 3, width)
