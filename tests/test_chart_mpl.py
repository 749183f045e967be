"""The mplfinance engine: exact sizes, RGB, no metadata, style names, no leaked figures, lazy matplotlib import."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from chart_windows import flat, open_times, trending, zero_volume
from image_cache import chart
from image_cache.chart.styles import MPL_STYLES, STYLES
from test_chart_raster import png_chunks

REPO = Path(__file__).resolve().parents[1]


def draw(style: str, size: int, window) -> chart.Drawn:
    spec = chart.make_spec(f"mplfinance:{style}", size, len(window))
    return chart.render(spec, open_times(len(window)), window)


@pytest.mark.parametrize("style", ["mike", "yahoo"])
@pytest.mark.parametrize("size", [100, 256])
def test_exact_size_rgb_no_text_chunks(style, size):
    drawn = draw(style, size, trending(30))
    img = chart.decode(drawn.png)
    assert img.size == (size, size) and img.mode == "RGB"
    assert chart.pixel_hash(drawn.png) == drawn.pixel_hash
    assert png_chunks(drawn.png) == [b"IHDR", b"IDAT", b"IEND"]
    # A chart, not a blank canvas: candles, axes and labels give many colours.
    assert len(img.getcolors(maxcolors=size * size)) > 10


@pytest.mark.parametrize("window", [flat(30), zero_volume(30)], ids=["flat", "zero_volume"])
def test_degenerate_windows_draw_at_the_exact_size(window):
    assert chart.decode(draw("mike", 128, window).png).size == (128, 128)


def test_unknown_style_lists_the_built_ins():
    with pytest.raises(chart.ChartError) as error:
        chart.make_spec("mplfinance:nosuch", 256, 30)
    message = str(error.value)
    assert "'nosuch'" in message and "\n" not in message
    assert all(style in message for style in MPL_STYLES)
    with pytest.raises(chart.ChartError, match="mplfinance:<style>"):
        chart.make_spec("candles", 256, 30)


def test_style_list_is_mplfinances():
    import mplfinance

    assert sorted(MPL_STYLES) == sorted(mplfinance.available_styles())
    assert len(MPL_STYLES) == len(set(MPL_STYLES))


@pytest.mark.parametrize("style", STYLES)
def test_file_tag_names_its_style(style):
    assert chart.style_from_tag(chart.make_spec(style, 256, 20).file_tag) == style


def test_too_small_a_size_is_a_chart_error():
    with pytest.raises(chart.ChartError, match="image size"):
        chart.make_spec("mplfinance:mike", 63, 20)


def test_no_figures_leak():
    import matplotlib.pyplot as plt

    draw("yahoo", 100, trending(20))
    draw("mike", 100, trending(20))
    assert plt.get_fignums() == []


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}{os.pathsep}{REPO / 'tests'}"}
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=env)


def test_raster_engines_never_import_matplotlib():
    result = _python(
        "import sys\nfrom image_cache import chart\n"
        "from chart_windows import open_times, trending\n"
        "for style, size, n in (('mike', 256, 30), ('jkx', 0, 20)):\n"
        "    spec = chart.make_spec(style, size, n)\n"
        "    chart.render(spec, open_times(spec.n_candles), trending(spec.n_candles))\n"
        "chart.make_spec('mplfinance:yahoo', 256, 30)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('matplotlib', 'mplfinance')))\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_drawing_writes_nothing_to_stderr():
    """Workers share the terminal with the progress bar: a style's missing font weight must not be logged there."""
    result = _python(
        "from image_cache import chart\n"
        "from chart_windows import open_times, trending\n"
        "for style in ('binance', 'charles'):\n"
        "    spec = chart.make_spec('mplfinance:' + style, 100, 20)\n"
        "    print(chart.render(spec, open_times(20), trending(20)).pixel_hash)\n")
    assert result.returncode == 0, result.stderr
    assert [len(line) for line in result.stdout.splitlines()] == [64, 64]
    assert result.stderr == ""
