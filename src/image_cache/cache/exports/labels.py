"""Labels, splits and purge: pure functions over a series' arrays, shared by export and the training dataset."""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass

import numpy as np

from image_cache.cache.windows import Series
from image_cache.core.errors import ImageCacheError
from image_cache.core.grid import close_time_ms, grid_index, grid_time, iso_utc, month_index, on_grid, utc_ms
from image_cache.settings import ConfigError

DEFAULT_FRACTIONS = (("train", 70), ("validation", 15), ("test", 15))
SPLIT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# Names the Hugging Face loaders rename (a folder `val` loads as `validation`) or reserve (`all`: every
# split), so that an export would load under another name, or not at all: refused, naming ours.
RENAMED_SPLITS = {"training": "train", "valid": "validation", "val": "validation", "dev": "validation",
                  "testing": "test", "eval": "test", "evaluation": "test"}
RESERVED_SPLITS = ("all",)
MAX_HORIZON = 100_000


@dataclass(frozen=True)
class LabelRule:
    """`sign`: 1 if the forward return is > 0, else 0. `bucket`: class k holds returns in [edge[k-1], edge[k])."""

    kind: str
    edges: tuple[float, ...] = ()

    def classes(self, returns: np.ndarray) -> np.ndarray:
        if self.kind == "sign":
            return (returns > 0).astype(np.int64)
        return np.searchsorted(np.asarray(self.edges), returns, side="right").astype(np.int64)

    @property
    def n_classes(self) -> int:
        return 2 if self.kind == "sign" else len(self.edges) + 1

    @property
    def names(self) -> tuple[str, ...]:
        """Class names that sort in class order, as folder loaders number classes: `down`/`up` for sign,
        `K_lt_E`, `K_E_to_F`, `K_ge_F` (K the zero-padded class number) for buckets with edges E < F."""
        if self.kind == "sign":
            return ("down", "up")
        width = len(str(self.n_classes - 1))
        edges = [repr(e) for e in self.edges]
        spans = [f"lt_{edges[0]}", *(f"{a}_to_{b}" for a, b in itertools.pairwise(edges)), f"ge_{edges[-1]}"]
        return tuple(f"{k:0{width}d}_{span}" for k, span in enumerate(spans))

    def describe(self) -> str:
        if self.kind == "sign":
            return "sign: 1 (`up`) if the forward return is > 0, else 0 (`down`) (as Jiang, Kelly and Xiu)"
        bounds = ["-inf", *(repr(e) for e in self.edges), "+inf"]
        ranges = ", ".join(f"{k}: [{bounds[k]}, {bounds[k + 1]})" for k in range(self.n_classes))
        return f"bucket:{','.join(repr(e) for e in self.edges)} (class: return range) {ranges}"


def parse_label(text: str) -> LabelRule:
    if text == "sign":
        return LabelRule("sign")
    if text.startswith("bucket:"):
        try:
            edges = tuple(float(part) for part in text[len("bucket:"):].split(","))
        except ValueError:
            raise ConfigError(f"--label {text!r}: bucket edges must be numbers, e.g. bucket:-0.01,0.01") from None
        if not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in itertools.pairwise(edges)):
            raise ConfigError(f"--label {text!r}: bucket edges must be finite and strictly increasing")
        return LabelRule("bucket", edges)
    raise ConfigError(f"--label {text!r}: expected sign or bucket:EDGES (e.g. bucket:-0.01,0.01)")


def parse_horizons(text: str) -> tuple[int, ...]:
    try:
        horizons = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--horizons {text!r}: expected comma-separated candle counts, e.g. 5,20") from None
    if not all(1 <= h <= MAX_HORIZON for h in horizons) or len(set(horizons)) != len(horizons):
        raise ConfigError(f"--horizons {text!r}: each horizon must be a distinct integer in 1..{MAX_HORIZON}")
    return horizons


@dataclass(frozen=True)
class Split:
    """A named range [start_ms, end_ms) of window end times; None is open-ended."""

    name: str
    start_ms: int | None
    end_ms: int | None

    def text(self) -> str:
        return f"{self.name}:{iso_utc(self.start_ms) if self.start_ms is not None else ''}.." \
               f"{iso_utc(self.end_ms) if self.end_ms is not None else ''}"


def parse_splits(text: str) -> tuple[Split, ...]:
    """`train:2019-01-01..2023-01-01,validation:2023-01-01..2024-01-01,test:2024-01-01..`, sorted by time."""
    splits = []
    for part in text.split(","):
        name, colon, span = part.strip().partition(":")
        start, dots, end = span.partition("..")
        if not colon or not dots:
            raise ConfigError(f"--split {part!r}: expected NAME:START..END (either date may be empty)")
        if not SPLIT_NAME_RE.match(name):
            raise ConfigError(f"--split {part!r}: split names are lower-case letters, digits and _, "
                              "starting with a letter")
        check_split_name(name, f"--split {part!r}")
        try:
            split = Split(name, utc_ms(start) if start else None, utc_ms(end) if end else None)
        except ImageCacheError as exc:
            raise ConfigError(f"--split {part!r}: {exc}") from None
        if split.start_ms is not None and split.end_ms is not None and split.end_ms <= split.start_ms:
            raise ConfigError(f"--split {part!r}: end is not after start")
        splits.append(split)
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ConfigError(f"--split {text!r}: split names must be distinct")
    splits.sort(key=lambda s: -math.inf if s.start_ms is None else s.start_ms)
    for before, after in itertools.pairwise(splits):
        if before.end_ms is None or after.start_ms is None or after.start_ms < before.end_ms:
            raise ConfigError(f"--split: {before.name} and {after.name} overlap")
    return tuple(splits)


def check_split_name(name: str, what: str) -> None:
    """Refuse a split name that a loader would rename or that `datasets` reserves."""
    if name in RENAMED_SPLITS:
        raise ConfigError(f"{what}: the Hugging Face loaders read a split named {name!r} as "
                          f"{RENAMED_SPLITS[name]!r}: name it {RENAMED_SPLITS[name]}")
    if name in RESERVED_SPLITS:
        raise ConfigError(f"{what}: {name!r} is reserved by the datasets library (every split together): "
                          "choose another name, e.g. train, validation or test")


def default_splits(first_end_ms: int, last_end_ms: int) -> tuple[Split, ...]:
    """70/15/15 of the time from the first to the last labelled window end, boundaries floored to the second."""
    span = last_end_ms - first_end_ms
    bounds, cumulative = [], 0
    for _, share in DEFAULT_FRACTIONS[:-1]:
        cumulative += share
        point = first_end_ms + span * cumulative // 100
        bounds.append(point - point % 1000)
    edges = [None, *bounds, None]
    return tuple(Split(name, edges[k], edges[k + 1]) for k, (name, _) in enumerate(DEFAULT_FRACTIONS))


def forward_returns(series: Series, last: np.ndarray, horizons: tuple[int, ...],
                    now: int) -> tuple[np.ndarray, np.ndarray]:
    """close[t+h] / close[t] - 1 for each window's last candle t and horizon h, and which are valid.

    t+h is h slots later on the interval grid: a label is valid only when every slot from t to t+h
    holds a candle (no gap), the candle at t+h is closed at `now`, and close[t] > 0.
    """
    n = len(series.times)
    steps = np.asarray(horizons, dtype=np.int64)
    target = last[:, None] + steps[None, :]
    clipped = np.minimum(target, n - 1)
    slots = grid_index(series.interval, series.times)
    close = series.ohlcv[:, 3]
    valid = ((target < n) & (slots[clipped] - slots[last][:, None] == steps)
             & (close_time_ms(series.interval, series.times[clipped]) <= now)).all(axis=1) & (close[last] > 0)
    base = np.where(close[last] > 0, close[last], 1.0)[:, None]
    return close[clipped] / base - 1.0, valid


def on_stride(interval: str, end_ms: np.ndarray, stride: int) -> np.ndarray:
    """Windows on the stride grid: every `stride`-th slot of the interval grid, fixed as data grows."""
    return grid_index(interval, np.asarray(end_ms, dtype=np.int64)) % stride == 0


SAMPLES = ("all", "month-end")


def on_sample(interval: str, end_ms: np.ndarray, sample: str) -> np.ndarray:
    """Windows kept by `--sample`: all, or month-end, those whose last candle is the last slot of its
    calendar month on the interval grid (UTC), as the Jiang-Kelly-Xiu samples are drawn at month ends."""
    end_ms = np.asarray(end_ms, dtype=np.int64)
    if sample == "all":
        return np.ones(end_ms.shape, dtype=bool)
    if sample != "month-end":
        raise ConfigError(f"--sample must be one of {', '.join(SAMPLES)}, got {sample!r}")
    following = grid_time(interval, grid_index(interval, end_ms) + 1)
    return month_index(end_ms) != month_index(following)


def complete_windows(series: Series, window_len: int, history: int, stride: int, start_ms: int,
                     end_ms: int, sample: str = "all") -> np.ndarray:
    """Last-candle indices of the windows an image can be drawn from: in range, on the stride grid, kept
    by `sample` (on_sample), and with all their candles (history included) consecutive on the interval grid."""
    n = len(series.times)
    span = window_len - 1 + history
    if n <= span:
        return np.empty(0, dtype=np.int64)
    last = np.arange(span, n, dtype=np.int64)
    slots = grid_index(series.interval, series.times)
    t_last = series.times[last]
    keep = ((t_last >= start_ms) & (t_last < end_ms) & (slots[last] - slots[last - span] == span)
            & (slots[last] % stride == 0) & on_sample(series.interval, t_last, sample))
    return last[keep]


def purge_candles(window_len: int, history: int, horizons: tuple[int, ...]) -> int:
    """Candles purged after a boundary: everything an image draws (history included) plus the longest label."""
    return window_len + history + max(horizons)


def assign_splits(interval: str, end_ms: np.ndarray, label_end_ms: np.ndarray, splits: tuple[Split, ...],
                  purge: int) -> tuple[np.ndarray, np.ndarray]:
    """Split index of each window (-1: in no split) and whether it is purged.

    Between two consecutive splits A then B, a window of A is purged when its label's last candle
    closes after A's end; a window of B is purged when its end lies within the first `purge` grid
    slots at or after B's start. So every candle a kept B window draws comes after every candle a
    kept A window or its label uses.
    """
    which = np.full(len(end_ms), -1, dtype=np.int64)
    purged = np.zeros(len(end_ms), dtype=bool)
    slots = grid_index(interval, end_ms)
    for k, split in enumerate(splits):
        inside = np.ones(len(end_ms), dtype=bool)
        drop = np.zeros(len(end_ms), dtype=bool)
        if split.start_ms is not None:
            inside &= end_ms >= split.start_ms
            if k > 0:
                first = grid_index(interval, split.start_ms) + (0 if on_grid(interval, split.start_ms) else 1)
                drop |= slots - first < purge
        if split.end_ms is not None:
            inside &= end_ms < split.end_ms
            if k < len(splits) - 1:
                drop |= close_time_ms(interval, label_end_ms) > split.end_ms
        which[inside] = k
        purged |= inside & drop
    return which, purged


def sample_key(symbol: str, interval: str, end_ms: int) -> str:
    """Sample key (no dots, for WebDataset): SYMBOL_INTERVAL_YYYYMMDDTHHMMSS of the window's last candle."""
    return f"{symbol}_{interval}_{iso_utc(end_ms).replace('-', '').replace(':', '').rstrip('Z')}"
