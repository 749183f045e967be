"""The compiled pixel loops (chart/_kernel.c): they refuse coordinates outside the image instead of
writing past it, the index image handed to datasets is the PNG's, and a missing or stale build is a
one-line ChartError that names the fix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import chart
from chart import jkx, kernel, raster
from chart_windows import open_times, trending

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
    with pytest.raises(chart.ChartError, match=r"built from another chart/_kernel.c: run `make venv`"):
        kernel.load().mike


def test_missing_build_is_a_one_line_cli_error(tmp_path):
    """A checkout without chart/_kernel.so: render fails with one Error line, no traceback."""
    block = ("import sys\n"
             "class Block:\n"
             "    def find_spec(self, name, path=None, target=None):\n"
             "        if name == 'chart._kernel':\n"
             "            raise ImportError(name)\n"
             "sys.meta_path.insert(0, Block())\n")
    (tmp_path / "sitecustomize.py").write_text(block)
    code = ("import numpy as np, chart, console\n"
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
    env = {"PYTHONPATH": f"{tmp_path}:{REPO}:{REPO / 'tests'}", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 1
    assert proc.stderr == ("Error: the drawing kernel chart/_kernel.so is not built: run `make venv` "
                           "(it needs a C compiler and the Python headers)\n")


def test_jkx_draw_is_the_png_pixels():
    spec = chart.make_spec("jkx", 0, 20)
    ohlcv = trending(spec.n_candles)
    pixels = jkx.draw(spec, ohlcv)
    assert np.array_equal(pixels, np.asarray(chart.decode(chart.render(spec, open_times(spec.n_candles), ohlcv).png)))
