"""The mplfinance engine: any built-in mplfinance style, candles and volume, at an exact pixel size.

Imported only when such a spec is drawn (matplotlib costs about half a second to import). The figure
is rasterised by Agg straight into an RGB array, so the size is exactly figsize x dpi (no tight bbox)
and the PNG is written by chart/png.py like every other engine: no metadata chunks.
"""

from __future__ import annotations

import logging
import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import mplfinance as mpf  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from image_cache.chart.png import Drawn, encode_rgb  # noqa: E402
from image_cache.chart.styles import ChartError, Spec  # noqa: E402

DPI = 100
# Styles asking for font weights DejaVu lacks (charles, binance: "medium", "semibold") make matplotlib log a
# warning to stderr through logging's last-resort handler, into the user's terminal; the fallback is fine.
logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


def draw(spec: Spec, open_times_ms: np.ndarray, ohlcv: np.ndarray) -> np.ndarray:
    """RGB pixels (height x width x 3, uint8) of one window drawn by mplfinance."""
    frame = pd.DataFrame(ohlcv, columns=["Open", "High", "Low", "Close", "Volume"],
                         index=pd.DatetimeIndex(pd.to_datetime(open_times_ms, unit="ms"), name="Date"))
    try:
        with warnings.catch_warnings():
            # mplfinance warns about large data sets and flat series; neither changes what we draw.
            warnings.simplefilter("ignore")
            figure, _ = mpf.plot(frame, type="candle", style=spec.mpl_style, volume=True, returnfig=True,
                                 figsize=(spec.width / DPI, spec.height / DPI), closefig=False)
    except (ValueError, TypeError) as exc:
        raise ChartError(f"mplfinance cannot draw this window: {exc}") from None
    try:
        figure.set_dpi(DPI)
        figure.canvas.draw()
        rgba = np.asarray(figure.canvas.buffer_rgba())
        if rgba.shape[:2] != (spec.height, spec.width):
            raise ChartError(f"mplfinance drew {rgba.shape[1]}x{rgba.shape[0]} px, not {spec.width}x{spec.height}")
        return np.ascontiguousarray(rgba[:, :, :3])
    finally:
        plt.close(figure)


def draw_png(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> Drawn:
    return encode_rgb(draw(spec, open_times_ms, values))


def draw_pixels(spec: Spec, open_times_ms: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, None]:
    return draw(spec, open_times_ms, values), None
