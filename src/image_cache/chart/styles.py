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


@dataclass(frozen=True)
class Engine:
    """How one kind of image is drawn: the module of image_cache.chart that draws it (its `draw_png` and
    `draw_pixels`, both (spec, open_times_ms, values)), the mode its pixels are in, and its draw version:
    bump it whenever the module's code changes pixels, and every image it drew goes stale."""

    name: str
    module: str
    mode: str  # rgb | palette | gray (chart/modes.py)
    draw_version: int


RASTER = Engine("raster", "raster", "palette", 1)
JKX = Engine("jkx", "jkx", "gray", 1)
MPLFINANCE = Engine("mplfinance", "mpl", "rgb", 1)

# mplfinance 0.12.10b0's built-in styles (pinned; tests compare with mplfinance.available_styles()),
# listed here so that validating a style name never imports matplotlib.
MPL_STYLES: tuple[str, ...] = (
    "binance", "binancedark", "blueskies", "brasil", "charles", "checkers", "classic", "default",
    "ibd", "kenan", "mike", "nightclouds", "sas", "starsandstripes", "tradingview", "yahoo",
)
MPL_PREFIX = "mplfinance:"

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
    draw_version: int  # the engine's (Engine.draw_version): part of the hash, so a bump makes images stale
    colours: tuple[tuple[str, str], ...] = ()
    mpl_style: str = ""
    # Library versions that decide pixels (mplfinance engine only: the raster engines need none).
    libraries: tuple[tuple[str, str], ...] = ()

    @functools.cached_property
    def spec_hash(self) -> str:
        """SHA-256 of a canonical JSON of the fields that affect pixels, the engine's draw version included."""
        fields = asdict(self)
        # The user's style_version only names files; file_tag and name are derived from the rest.
        for key in ("version", "file_tag"):
            del fields[key]
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
    return Spec(name="mike", engine=RASTER.name, width=size, height=size, window_len=window_len,
                version=version, history=0, file_tag="", draw_version=RASTER.draw_version, colours=MIKE_COLOURS)


def _jkx(style: str, size: int, window_len: int, version: int, jkx_height: int) -> Spec:
    height = JKX_HEIGHTS.get(window_len)
    if height is None:
        _check_int("jkx height", jkx_height, JKX_MIN_HEIGHT, MAX_SIZE)
        height = jkx_height
    return Spec(name="jkx", engine=JKX.name, width=3 * window_len, height=height, window_len=window_len,
                version=version, history=window_len - 1, file_tag="jkx", draw_version=JKX.draw_version,
                colours=JKX_COLOURS)


def _mplfinance(style: str, size: int, window_len: int, version: int, jkx_height: int) -> Spec:
    mpl_style = style[len(MPL_PREFIX):]
    _check_int("image size", size, MPL_MIN_SIZE, MAX_SIZE)
    libraries = tuple((lib, metadata.version(lib)) for lib in ("matplotlib", "mplfinance"))
    return Spec(name=style, engine=MPLFINANCE.name, width=size, height=size, window_len=window_len,
                version=version, history=0, file_tag="mpl-" + mpl_style, draw_version=MPLFINANCE.draw_version,
                mpl_style=mpl_style, libraries=libraries)


@dataclass(frozen=True)
class Style:
    """A registry entry: the style names it serves, the file tag of each, how its spec is made (from style,
    size, window length, version and jkx height), the engine that draws it, and how --help names it."""

    names: tuple[str, ...]
    tag: Callable[[str], str]
    make: Callable[[str, int, int, int, int], Spec]
    engine: Engine
    usage: str  # the name as --style takes it
    help: str   # the name in the list of valid styles


# The style registry: a new style is its engine module (draw_png, draw_pixels) and one row here. File names
# carry the tag, so cache/layout.py recognises every registered style's images.
REGISTRY: tuple[Style, ...] = (
    Style(("mike",), lambda name: "", _mike, RASTER, "mike", "mike (default)"),
    Style(("jkx",), lambda name: "jkx", _jkx, JKX, "jkx", "jkx"),
    Style(tuple(MPL_PREFIX + s for s in MPL_STYLES), lambda name: "mpl-" + name[len(MPL_PREFIX):], _mplfinance,
          MPLFINANCE, "mplfinance:<style>", "mplfinance:<style> with <style> one of " + ", ".join(MPL_STYLES)),
)
_BY_NAME = {name: style for style in REGISTRY for name in style.names}
_BY_TAG = {style.tag(name): name for style in REGISTRY for name in style.names}
ENGINES: dict[str, Engine] = {style.engine.name: style.engine for style in REGISTRY}
STYLES: tuple[str, ...] = tuple(_BY_NAME)
STYLES_USAGE = " | ".join(style.usage for style in REGISTRY)
STYLES_HELP = ", ".join(style.help for style in REGISTRY[:-1]) + ", or " + REGISTRY[-1].help


def engine_of(spec: Spec) -> Engine:
    engine = ENGINES.get(spec.engine)
    if engine is None:
        raise ChartError(f"unknown engine {spec.engine!r}")
    return engine


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
