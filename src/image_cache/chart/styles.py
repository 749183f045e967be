"""Render specs: every preset as a frozen dataclass with a stable hash of what decides its pixels.

A spec is built once per run (make_spec) and passed to every worker; the renderer records its
spec_hash per image, so changing anything here that changes pixels must change the hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from importlib import metadata

from image_cache.core.errors import ChartError

# Bump an engine's number whenever its drawing code changes pixels: every image it drew goes stale.
DRAW_VERSION: dict[str, int] = {"raster": 1, "jkx": 1, "mplfinance": 1}

# mplfinance 0.12.10b0's built-in styles (pinned; tests compare with mplfinance.available_styles()),
# listed here so that validating a style name never imports matplotlib.
MPL_STYLES: tuple[str, ...] = (
    "binance", "binancedark", "blueskies", "brasil", "charles", "checkers", "classic", "default",
    "ibd", "kenan", "mike", "nightclouds", "sas", "starsandstripes", "tradingview", "yahoo",
)
MPL_PREFIX = "mplfinance:"
STYLES_HELP = "mike (default), jkx, or mplfinance:<style> with <style> one of " + ", ".join(MPL_STYLES)

# mplfinance's "mike" palette (mplfinance 0.12.10b0's style file); roles are what the raster engine paints.
MIKE_COLOURS: tuple[tuple[str, str], ...] = (
    ("background", "#0a0a0a"),
    ("grid", "#2e2e2e"),
    ("wick", "#ffffff"),
    ("up_edge", "#ffffff"),
    ("up_body", "#000000"),
    ("down_edge", "#0080ff"),
    ("down_body", "#0080ff"),
    ("volume", "#7189aa"),
)
JKX_COLOURS: tuple[tuple[str, str], ...] = (("background", "#000000"), ("mark", "#ffffff"))

# JKX paper sizes (Jiang, Kelly, Xiu 2023): window length -> image height; width is always 3 px per period.
JKX_HEIGHTS: dict[int, int] = {5: 32, 20: 64, 60: 96}
RASTER_MIN_PX_PER_CANDLE = 3
RASTER_MIN_SIZE = 32
MPL_MIN_SIZE = 64
MAX_SIZE = 16384
JKX_MIN_HEIGHT = 12


@dataclass(frozen=True)
class Spec:
    """Everything an engine needs to draw one kind of image, and nothing that varies per window."""

    name: str
    engine: str
    width: int
    height: int
    window_len: int
    version: int
    history: int
    file_tag: str
    colours: tuple[tuple[str, str], ...] = ()
    mpl_style: str = ""
    # Library versions that decide pixels (mplfinance engine only: the raster engines need none).
    libraries: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def spec_hash(self) -> str:
        """SHA-256 of a canonical JSON of the fields that affect pixels and the engine's DRAW_VERSION."""
        fields = asdict(self)
        # The user's style_version only names files; file_tag and name are derived from the rest.
        for key in ("version", "file_tag"):
            del fields[key]
        fields["draw_version"] = DRAW_VERSION[self.engine]
        canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode("ascii")).hexdigest()

    @property
    def size_label(self) -> str:
        """The px part of file names: '1280' for squares, 'WxH' otherwise."""
        return str(self.width) if self.width == self.height else f"{self.width}x{self.height}"

    @property
    def n_candles(self) -> int:
        """Rows render() expects: the history before the window plus the window."""
        return self.history + self.window_len


def _check_int(label: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ChartError(f"{label} must be an integer in {low}..{high}, got {value!r}")


def raster_min_size(window_len: int) -> int:
    """Smallest square edge that gives every candle of the window at least 3 px."""
    return max(RASTER_MIN_SIZE, RASTER_MIN_PX_PER_CANDLE * window_len)


def _mike(style: str, size: int, window_len: int, version: int, jkx_height: int) -> Spec:
    _check_int("image size", size, 1, MAX_SIZE)
    smallest = raster_min_size(window_len)
    if size < smallest:
        raise ChartError(f"image size {size} px is too small for a {window_len}-candle window: "
                         f"mike needs at least {smallest} px")
    return Spec(name="mike", engine="raster", width=size, height=size, window_len=window_len,
                version=version, history=0, file_tag="", colours=MIKE_COLOURS)


def _jkx(style: str, size: int, window_len: int, version: int, jkx_height: int) -> Spec:
    height = JKX_HEIGHTS.get(window_len)
    if height is None:
        _check_int("jkx height", jkx_height, JKX_MIN_HEIGHT, MAX_SIZE)
        height = jkx_height
    return Spec(name="jkx", engine="jkx", width=3 * window_len, height=height, window_len=window_len,
                version=version, history=window_len - 1, file_tag="jkx", colours=JKX_COLOURS)


def _mplfinance(style: str, size: int, window_len: int, version: int, jkx_height: int) -> Spec:
    mpl_style = style[len(MPL_PREFIX):]
    _check_int("image size", size, MPL_MIN_SIZE, MAX_SIZE)
    libraries = tuple((lib, metadata.version(lib)) for lib in ("matplotlib", "mplfinance"))
    return Spec(name=style, engine="mplfinance", width=size, height=size, window_len=window_len,
                version=version, history=0, file_tag="mpl-" + mpl_style, mpl_style=mpl_style,
                libraries=libraries)


@dataclass(frozen=True)
class Style:
    """A registry entry: the style names it serves, the file tag of each, and how its spec is made
    (from style, size, window length, version and jkx height)."""

    names: tuple[str, ...]
    tag: Callable[[str], str]
    make: Callable[[str, int, int, int, int], Spec]


# The style registry: adding a style is its engine module (and an entry in chart.ENGINES) plus one line
# here. File names carry the tag, so cache/layout.py recognises every registered style's images.
REGISTRY: tuple[Style, ...] = (
    Style(("mike",), lambda name: "", _mike),
    Style(("jkx",), lambda name: "jkx", _jkx),
    Style(tuple(MPL_PREFIX + s for s in MPL_STYLES), lambda name: "mpl-" + name[len(MPL_PREFIX):], _mplfinance),
)
_BY_NAME = {name: style for style in REGISTRY for name in style.names}
_BY_TAG = {style.tag(name): name for style in REGISTRY for name in style.names}
STYLES: tuple[str, ...] = tuple(_BY_NAME)


def make_spec(style: str, size: int, window_len: int, version: int = 1, jkx_height: int = 64) -> Spec:
    """The spec of a style name; size is the square edge for mike and mplfinance, ignored by jkx."""
    _check_int("window length", window_len, 1, MAX_SIZE // RASTER_MIN_PX_PER_CANDLE)
    _check_int("style version", version, 0, 1_000_000)
    entry = _BY_NAME.get(style)
    if entry is None and style.startswith(MPL_PREFIX):
        raise ChartError(f"unknown mplfinance style {style[len(MPL_PREFIX):]!r}; built-in styles: "
                         + ", ".join(MPL_STYLES))
    if entry is None:
        raise ChartError(f"unknown style {style!r}; valid styles: {STYLES_HELP}")
    return entry.make(style, size, window_len, version, jkx_height)


def style_from_tag(file_tag: str) -> str:
    """The style name whose file_tag this is (file names carry the tag, not the style)."""
    name = _BY_TAG.get(file_tag)
    if name is None:
        raise ChartError(f"unknown style tag {file_tag!r} in file name")
    return name
