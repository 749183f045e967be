"""Training without files: the windows of market.sqlite drawn in memory, with export's labels and splits.

`ChartDataset(settings, "train")` is map-style (`len`, `ds[i]` -> (pixels, label, key)) and
`ds.stream()` iterable, sharded deterministically across loader workers. Both work with
`torch.utils.data.DataLoader` as they are; this module never imports torch (it only looks at
`sys.modules` for the worker a loader runs it in).

Windows are those an image can be drawn from under the default gap policy (all candles, history
included, consecutive on the interval grid), labelled and split exactly as `export` does, in key
order. Pixels are the engine's arrays before PNG encoding: palette indices for palette presets
(`ds.palette` holds the colours), gray levels for jkx, RGB for mplfinance presets; they hash to the
pixel hash of the cached file.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from image_cache import chart
from image_cache.chart import jkx, raster
from image_cache.cache import market
from image_cache.cache.exports.labels import (LabelRule, Split, assign_splits, check_split_name, complete_windows,
                                             default_splits, forward_returns, purge_candles, sample_key)
from image_cache.cache.runner import Filters, make_spec, select_series
from image_cache.cache.windows import Series, window_rows
from image_cache.settings import Settings
from image_cache.core.errors import ImageCacheError
from image_cache.core.grid import now_ms
from image_cache.core.hooks import Warn, no_warn

Item = tuple[np.ndarray, int, str]


@dataclass(frozen=True)
class _Window:
    key: str
    series: int  # index into ChartDataset.series
    last: int  # row of the window's last candle
    label: int


def draw_pixels(spec: chart.Spec, times: np.ndarray, ohlcv: np.ndarray) -> tuple[np.ndarray, list[str] | None]:
    """The pixels chart.render would encode for these candles, without encoding them, and the palette."""
    values = chart._check_input(spec, times, ohlcv)  # the same refusals as render (ChartError)
    if spec.engine == "raster":
        return raster.draw(spec, values)
    if spec.engine == "jkx":
        return jkx.draw(spec, values), None
    return np.asarray(chart.decode(chart.render(spec, times, values).png)), None


class ChartDataset:
    """The labelled windows of one split, drawn on access (map-style)."""

    def __init__(self, settings: Settings, split: str, horizons: tuple[int, ...] = (5, 20),
                 label: LabelRule = LabelRule("sign"), splits: tuple[Split, ...] | None = None,
                 filters: Filters | None = None, warn: Warn = no_warn, now: int | None = None) -> None:
        self.spec = make_spec(settings)
        self.palette: list[str] | None = None  # palette presets: the colours of the indices, once drawn
        now = now_ms() if now is None else now
        self.series: list[Series] = []
        labelled: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray]] = []
        conn = market.open_market(settings.market_db_path)
        try:
            for symbol, interval, sid in select_series(conn, settings, filters or Filters(), warn):
                series = market.read_series(conn, symbol, interval, sid)
                last = complete_windows(series, self.spec.window_len, self.spec.history, settings.stride,
                                        settings.start_ms, settings.end_ms or 2**62)
                returns, valid = forward_returns(series, last, horizons, now)
                last, classes = last[valid], label.classes(returns[valid])[:, 0]
                label_end = series.times[last + max(horizons)] if len(last) else last
                self.series.append(series)
                labelled.append((interval, len(self.series) - 1, last, classes, label_end))
        finally:
            conn.close()
        ends = [self.series[k].times[last] for _, k, last, _, _ in labelled]
        if not any(len(e) for e in ends):
            raise ImageCacheError("no labelled windows in range: nothing to train on")
        self.splits = splits or default_splits(int(min(e.min() for e in ends if len(e))),
                                               int(max(e.max() for e in ends if len(e))))
        names = [s.name for s in self.splits]
        for name in (split, *names):
            check_split_name(name, "split")
        if split not in names:
            raise ImageCacheError(f"no split {split!r}: the splits are {', '.join(names)}")
        purge = purge_candles(self.spec.window_len, self.spec.history, horizons)
        windows = []
        for (interval, k, last, classes, label_end), end in zip(labelled, ends):
            which, purged = assign_splits(interval, end, label_end, self.splits, purge)
            keep = (which == names.index(split)) & ~purged
            s = self.series[k]
            windows += [_Window(sample_key(s.symbol, s.interval, int(t)), k, int(i), int(c))
                        for t, i, c in zip(end[keep], last[keep], classes[keep])]
        self.windows = sorted(windows, key=lambda w: w.key)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Item:
        w = self.windows[index]
        s = self.series[w.series]
        rows = window_rows(w.last, self.spec.window_len, self.spec.history)
        pixels, self.palette = draw_pixels(self.spec, s.times[rows], s.ohlcv[rows])
        return pixels, w.label, w.key

    @property
    def keys(self) -> list[str]:
        return [w.key for w in self.windows]

    @property
    def labels(self) -> np.ndarray:
        return np.array([w.label for w in self.windows], dtype=np.int64)

    def stream(self, seed: int | None = None) -> ChartStream:
        """An iterable over this split (shuffled with `seed`, else in key order), sharded across workers."""
        return ChartStream(self, seed)


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the torch DataLoader worker we run in, if torch is loaded at all."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return (0, 1) if info is None else (info.id, info.num_workers)


class ChartStream:
    """Iterable over a ChartDataset: worker w of n yields positions w, w+n, w+2n, ... of one fixed order,
    so that n workers together yield each window exactly once.

    Where torch is loaded, instances are also torch IterableDatasets, so that DataLoader iterates them
    instead of indexing them (the class is chosen when the stream is made; torch is never imported here).
    """

    _torch_classes: dict[tuple[type, type], type] = {}

    def __new__(cls, *args, **kwargs):
        data = sys.modules.get("torch.utils.data")
        if data is not None and not issubclass(cls, data.IterableDataset):
            key = (cls, data.IterableDataset)
            cls = cls._torch_classes.setdefault(key, type(cls.__name__, key, {}))
        return object.__new__(cls)

    def __init__(self, dataset: ChartDataset, seed: int | None = None) -> None:
        self.dataset, self.seed = dataset, seed

    def __reduce__(self):
        # Rebuilt through __new__ in a spawned worker, where the class is chosen again.
        return ChartStream, (self.dataset, self.seed)

    def order(self) -> np.ndarray:
        n = len(self.dataset)
        return np.arange(n) if self.seed is None else np.random.default_rng(self.seed).permutation(n)

    def shard(self, worker: int, workers: int) -> Iterator[Item]:
        for index in self.order()[worker::workers]:
            yield self.dataset[int(index)]

    def __iter__(self) -> Iterator[Item]:
        return self.shard(*_worker())
