"""The JKX engine against the paper's layout (Jiang, Kelly, Xiu 2023), on a window computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chart_windows import flat, open_times, trending
from image_cache import chart
from image_cache.chart import jkx

# 4 history candles at 12 (the MA's extra history), then the 5-period window; columns O, H, L, C, V.
HISTORY = [(12.0, 12.0, 12.0, 12.0, 1.0)] * 4
WINDOW = [
    (10.0, 10.4, 9.6, 10.0, 100.0),
    (10.0, 10.8, 9.9, 10.6, 250.0),
    (10.6, 10.7, 9.4, 9.5, 0.0),
    (9.5, 9.9, 9.2, 9.8, 50.0),
    (9.8, 10.2, 9.7, 10.1, 200.0),
]
HEIGHT, PRICE_H, VOLUME_ROWS = 32, 25, 6


def render(spec: chart.Spec, ohlcv) -> np.ndarray:
    ohlcv = np.asarray(ohlcv, dtype=np.float64)
    img = chart.decode(chart.render(spec, open_times(len(ohlcv)), ohlcv).png)
    assert img.mode == "L"
    return np.asarray(img)


def expected_rows() -> tuple[list[tuple[int, int, int, int]], list[int]]:
    """(open, high, low, close) rows per period and the MA row per period, by the reference formula."""
    first_close = WINDOW[0][3]
    closes = [c[3] / first_close for c in HISTORY + WINDOW]
    ma = [sum(closes[k:k + 5]) / 5 for k in range(5)]
    prices = [[p / first_close for p in candle[:4]] for candle in WINDOW]
    low = min(min(min(p) for p in prices), min(ma))
    high = max(max(max(p) for p in prices), max(ma))

    def row(p: float) -> int:
        return PRICE_H - 1 - round((p - low) * (PRICE_H - 1) / (high - low))

    return [tuple(row(p) for p in period) for period in prices], [row(m) for m in ma]


@pytest.fixture(scope="module")
def tiny() -> np.ndarray:
    return render(chart.make_spec("jkx", 0, 5), HISTORY + WINDOW)


@pytest.mark.parametrize("window_len, size", [(5, (15, 32)), (20, (60, 64)), (60, (180, 96))])
def test_paper_sizes(window_len, size):
    spec = chart.make_spec("jkx", 1280, window_len, jkx_height=200)  # paper lengths ignore both
    assert (spec.width, spec.height) == size
    png = chart.render(spec, open_times(spec.n_candles), trending(spec.n_candles)).png
    assert chart.decode(png).size == size
    assert chart.png_size(png[:24]) == size


def test_other_lengths_use_jkx_height():
    spec = chart.make_spec("jkx", 0, 30, jkx_height=48)
    assert render(spec, trending(spec.n_candles)).shape == (48, 90)
    with pytest.raises(chart.ChartError, match="jkx height"):
        chart.make_spec("jkx", 0, 30, jkx_height=11)


@pytest.mark.parametrize("window_len", [5, 20, 60])
def test_only_black_and_white(window_len):
    spec = chart.make_spec("jkx", 0, window_len)
    pixels = render(spec, trending(spec.n_candles))
    assert set(np.unique(pixels).tolist()) == {0, 255}


def test_bars_and_ticks_at_the_reference_rows(tiny):
    periods, _ = expected_rows()
    for i, (o, h, lo, c) in enumerate(periods):
        centre = 3 * i + 1
        assert h < lo  # a real bar, not a dot
        assert (tiny[h:lo + 1, centre] == 255).all(), i
        assert tiny[o, centre - 1] == 255 and tiny[c, centre + 1] == 255, i
        # Nothing of the bar above the high or below the low, other than the MA line.
        assert tiny[h - 1, centre] == 0 or h - 1 in _ma_band(i, centre), i
        assert tiny[lo + 1, centre] == 0 or lo + 1 in _ma_band(i, centre), i


def _ma_band(period: int, column: int) -> set[int]:
    """Rows the MA may cover in this column: its vertex there, or between the rows of a segment's end points."""
    _, ma = expected_rows()
    centre = 3 * period + 1
    segments = [(a, a + 1) for a in (period - 1, period) if 0 <= a < len(ma) - 1]
    if column < centre:
        segments = segments[:1] if period > 0 else []
    elif column > centre:
        segments = segments[-1:] if period < len(ma) - 1 else []
    band = {ma[period]} if column == centre else set()
    for a, b in segments:
        band |= set(range(min(ma[a], ma[b]), max(ma[a], ma[b]) + 1))
    return band


def test_price_area_holds_bars_ticks_and_ma_only(tiny):
    periods, _ = expected_rows()
    for x in range(15):
        period, offset = divmod(x, 3)
        o, h, lo, c = periods[period]
        marks = {0: {o}, 1: set(range(h, lo + 1)), 2: {c}}[offset]
        set_rows = set(np.flatnonzero(tiny[:PRICE_H, x]).tolist())
        assert marks <= set_rows, x
        assert set_rows - marks <= _ma_band(period, x), x


def test_moving_average_is_drawn_off_the_bars(tiny):
    periods, ma = expected_rows()
    for i, row in enumerate(ma):
        assert tiny[row, 3 * i + 1] == 255, i
    # The window opens below its 12.0 history: the first MA points sit above their bars.
    for i in (0, 1):
        assert ma[i] < periods[i][1]
    # Between those two centres the line crosses the tick columns above the bars.
    for x in (2, 3):
        band = set(range(ma[0], ma[1] + 1))
        assert any(tiny[r, x] == 255 for r in band), x


def test_volume_bars_in_the_bottom_fifth_below_an_empty_gap_row(tiny):
    assert (tiny[PRICE_H] == 0).all()
    volume = tiny[HEIGHT - VOLUME_ROWS:]
    assert volume.shape[0] == HEIGHT // 5
    # round(v / 250 * 6) for volumes 100, 250, 0, 50, 200.
    for i, bar in enumerate([2, 6, 0, 1, 5]):
        column = volume[:, 3 * i + 1]
        assert column.tolist() == [0] * (VOLUME_ROWS - bar) + [255] * bar, i
        assert not volume[:, 3 * i].any() and not volume[:, 3 * i + 2].any(), i


def test_zero_volume_window_leaves_the_volume_rows_empty():
    spec = chart.make_spec("jkx", 0, 20)
    window = trending(spec.n_candles)
    window[:, 4] = 0.0
    pixels = render(spec, window)
    assert not pixels[64 - 64 // 5 - 1:].any()
    assert pixels[:64 - 64 // 5 - 1].any()


def test_flat_window_is_a_chart_error():
    spec = chart.make_spec("jkx", 0, 20)
    with pytest.raises(chart.ChartError, match=r"max == min"):
        chart.render(spec, open_times(spec.n_candles), flat(spec.n_candles))


def test_wrong_row_count_is_a_chart_error():
    spec = chart.make_spec("jkx", 0, 5)
    with pytest.raises(chart.ChartError, match="9 candles"):
        chart.render(spec, open_times(5), trending(5))


def test_non_positive_first_close_is_a_chart_error():
    window = np.array(HISTORY + WINDOW)
    window[4, [0, 2, 3]] = 0.0
    with pytest.raises(chart.ChartError, match="positive first close"):
        chart.render(chart.make_spec("jkx", 0, 5), open_times(9), window)


def sequential_moving_average(closes: np.ndarray, length: int) -> np.ndarray:
    """The reference order: the first window's closes, then each later period added in turn."""
    count = len(closes) - length + 1
    total = closes[:count].copy()
    for k in range(1, length):
        total += closes[k:k + count]
    return total / length


@settings(max_examples=300, deadline=None)
@given(length=st.integers(1, 130), extra=st.integers(0, 130), seed=st.integers(0, 2**32 - 1))
def test_moving_average_sums_in_the_reference_order(length, extra, seed):
    # Magnitudes over 16 decades, so any other summation order (pairwise, say) rounds differently.
    rng = np.random.default_rng(seed)
    closes = rng.random(length + extra) * 10.0 ** rng.uniform(-8, 8, length + extra)
    assert np.array_equal(jkx.moving_average(closes, length), sequential_moving_average(closes, length))
