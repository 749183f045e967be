"""Any valid window draws: exact size, a pixel hash that verify recomputes from the file, the same bytes twice."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from chart_windows import open_times
from image_cache import chart

MIKE = chart.make_spec("mike", 128, 20)
JKX = chart.make_spec("jkx", 0, 20)
unit = st.floats(0.0, 1.0)


@st.composite
def windows(draw, n: int) -> np.ndarray:
    """n candles with low <= open, close <= high, volume >= 0, at a price scale from 1e-8 to 1e8.

    Shapes: random ranges, all prices equal, or one candle far larger than the rest; volumes random,
    all zero, or one huge.
    """
    scale = 10.0 ** draw(st.integers(-8, 8))
    shape = draw(st.sampled_from(["random", "flat", "huge_candle"]))
    if shape == "flat":
        prices = np.full((n, 4), scale * (1 + draw(unit)))
    else:
        rows = np.array(draw(st.lists(st.tuples(unit, unit, unit, unit), min_size=n, max_size=n)))
        low = scale * (1 + rows[:, 0])
        high = low + scale * rows[:, 1]
        if shape == "huge_candle":
            at = draw(st.integers(0, n - 1))
            high[at] = low[at] * draw(st.sampled_from([10.0, 1e3, 1e6]))
        # Clipped: low + (high - low) * 1.0 may round one ulp past high.
        opens = np.clip(low + (high - low) * rows[:, 2], low, high)
        closes = np.clip(low + (high - low) * rows[:, 3], low, high)
        prices = np.column_stack([opens, high, low, closes])
    volume_kind = draw(st.sampled_from(["random", "zero", "one_huge"]))
    volume = np.zeros(n)
    if volume_kind != "zero":
        volume = np.array(draw(st.lists(st.floats(0.0, 1e6), min_size=n, max_size=n)))
    if volume_kind == "one_huge":
        volume[draw(st.integers(0, n - 1))] = 1e15
    return np.column_stack([prices, volume])


def check_drawn(spec: chart.Spec, window: np.ndarray, drawn: chart.Drawn) -> None:
    img = chart.decode(drawn.png)
    assert img.size == (spec.width, spec.height)
    assert chart.pixel_hash(drawn.png) == drawn.pixel_hash
    assert chart.render(spec, open_times(spec.n_candles), window.copy()).png == drawn.png


@settings(max_examples=60, deadline=None)
@given(windows(MIKE.n_candles))
def test_mike_draws_any_valid_window(window):
    check_drawn(MIKE, window, chart.render(MIKE, open_times(MIKE.n_candles), window))


@settings(max_examples=100, deadline=None)
@given(windows(JKX.n_candles))
def test_jkx_draws_any_valid_window_that_is_not_flat(window):
    try:
        drawn = chart.render(JKX, open_times(JKX.n_candles), window)
    except chart.ChartError as error:
        # The one documented refusal: the window's prices and its MA (from all closes) are one value.
        assert "max == min" in str(error)
        drawn_prices = np.concatenate([window[JKX.history:, :4].ravel(), window[:, 3]])
        assert drawn_prices.max() - drawn_prices.min() <= 1e-12 * drawn_prices.max()
        return
    check_drawn(JKX, window, drawn)
