"""Training without files: the windows of market.sqlite drawn in memory, with export's labels and splits.

`ChartDataset(settings, "train")` is map-style (`len`, `ds[i]` -> (pixels, target, key)) and
`ds.stream()` iterable, sharded deterministically across loader workers, a new order each epoch
(`set_epoch`). Both work with `torch.utils.data.DataLoader` as they are, whether torch was imported
before or after them; this module never imports torch (it only looks at `sys.modules`).

Windows are those an image can be drawn from under the default gap policy (all candles, history
included, consecutive on the interval grid), labelled and split exactly as `export` does, in key
order. Pixels are the engine's arrays before PNG encoding, in `mode`: by default the preset's own
(palette indices for palette presets, with `ds.palette` their colours; gray levels for jkx; RGB for
mplfinance presets), which hash to the pixel hash of the cached file; `rgb` and `gray` equal the PNG
converted by Pillow. The target is the first horizon's class, or with `targets=` a dict of every
horizon's class and return (`"all"`) or of the named ones.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeAlias

import numpy as np

from image_cache import chart
from image_cache.cache import market
from image_cache.cache.exports.labels import (
    LabelRule,
    Split,
    assign_splits,
    check_split_name,
    complete_windows,
    default_splits,
    forward_returns,
    purge_candles,
    sample_key,
)
from image_cache.cache.market import Filters, select_series
from image_cache.cache.windows import Series, window_rows
from image_cache.chart import modes
from image_cache.core.errors import ImageCacheError
from image_cache.core.grid import now_ms
from image_cache.core.hooks import Warn, no_warn
from image_cache.settings import Settings, make_spec

Target: TypeAlias = "int | dict[str, int | float]"
Item = tuple[np.ndarray, Target, str]


@dataclass(frozen=True)
class _Window:
    key: str
    series: int  # index into ChartDataset.series
    last: int  # row of the window's last candle
    classes: tuple[int, ...]  # per horizon
    returns: tuple[float, ...]  # per horizon


class ChartDataset:
    """The labelled windows of one split, drawn on access (map-style)."""

    def __init__(self, settings: Settings, split: str, horizons: tuple[int, ...] = (5, 20),
                 label: LabelRule = LabelRule("sign"), splits: tuple[Split, ...] | None = None,
                 filters: Filters | None = None, warn: Warn = no_warn, now: int | None = None,
                 mode: str | None = None, targets: str | tuple[str, ...] = "label", sample: str = "all") -> None:
        self.spec = make_spec(settings)
        try:
            self.mode = modes.check(mode or modes.native(self.spec), self.spec)
        except chart.ChartError as exc:
            raise ImageCacheError(str(exc)) from None
        own = chart.palette(self.spec)
        self.palette = own if self.mode == "palette" else None  # the colours of the indices
        self._convert = modes.Converter(self.spec, self.mode, own)
        self.horizons, self.class_names = horizons, label.names
        self.targets = self._check_targets(targets)
        now = now_ms() if now is None else now
        self.series: list[Series] = []
        labelled: list[tuple[str, int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        conn = market.open_market(settings.market_db_path)
        try:
            for symbol, interval, sid in select_series(conn, settings, filters or Filters(), warn):
                series = market.read_series(conn, symbol, interval, sid)
                last = complete_windows(series, self.spec.window_len, self.spec.history, settings.stride,
                                        settings.start_ms, settings.end_ms or 2**62, sample)
                returns, valid = forward_returns(series, last, horizons, now)
                last, returns = last[valid], returns[valid]
                label_end = series.times[last + max(horizons)] if len(last) else last
                self.series.append(series)
                labelled.append((interval, len(self.series) - 1, last, label.classes(returns), returns, label_end))
        finally:
            conn.close()
        ends = [self.series[k].times[last] for _, k, last, _, _, _ in labelled]
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
        for (interval, k, last, classes, returns, label_end), end in zip(labelled, ends, strict=True):
            which, purged = assign_splits(interval, end, label_end, self.splits, purge)
            keep = (which == names.index(split)) & ~purged
            s = self.series[k]
            windows += [_Window(sample_key(s.symbol, s.interval, int(t)), k, int(i), tuple(c.tolist()),
                                tuple(r.tolist()))
                        for t, i, c, r in zip(end[keep], last[keep], classes[keep], returns[keep], strict=True)]
        self.windows = sorted(windows, key=lambda w: w.key)

    def _check_targets(self, targets: str | tuple[str, ...]) -> tuple[str, ...] | None:
        """None for the first horizon's class; else the names of the dict's entries."""
        every = tuple(f"{kind}_h{h}" for h in self.horizons for kind in ("label", "return"))
        if targets == "label":
            return None
        if targets == "all":
            return every
        unknown = [t for t in targets if t not in every] if not isinstance(targets, str) else [targets]
        if unknown:
            raise ImageCacheError(f"targets: unknown {', '.join(map(repr, unknown))}; expected \"label\", "
                                  f"\"all\" or names among {', '.join(every)}")
        return tuple(targets)

    def target(self, index: int) -> Target:
        """What item `index` carries besides its pixels and key (`targets=`)."""
        w = self.windows[index]
        if self.targets is None:
            return w.classes[0]
        values: dict[str, int | float] = {f"label_h{h}": c for h, c in zip(self.horizons, w.classes, strict=True)}
        values.update({f"return_h{h}": r for h, r in zip(self.horizons, w.returns, strict=True)})
        return {name: values[name] for name in self.targets}

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> Item:
        w = self.windows[index]
        s = self.series[w.series]
        rows = window_rows(w.last, self.spec.window_len, self.spec.history)
        pixels, _ = chart.draw_pixels(self.spec, s.times[rows], s.ohlcv[rows])
        return self._convert(pixels), self.target(index), w.key

    @property
    def keys(self) -> list[str]:
        return [w.key for w in self.windows]

    @property
    def labels(self) -> np.ndarray:
        """The first horizon's class of every window, in order."""
        return np.array([w.classes[0] for w in self.windows], dtype=np.int64)

    @property
    def returns(self) -> np.ndarray:
        """(N, horizons) forward returns of every window, in order."""
        return np.array([w.returns for w in self.windows], dtype=np.float64).reshape(-1, len(self.horizons))

    def stream(self, seed: int | None = None) -> ChartStream:
        """An iterable over this split (shuffled with `seed`, else in key order), sharded across workers."""
        return ChartStream(self, seed)


def _worker() -> tuple[int, int]:
    """(worker id, number of workers) of the torch DataLoader worker we run in, if torch is loaded at all."""
    data = sys.modules.get("torch.utils.data")
    info = data.get_worker_info() if data is not None else None
    return (0, 1) if info is None else (info.id, info.num_workers)


class ChartStream:
    """Iterable over a ChartDataset: worker w of n yields positions w, w+n, w+2n, ... of one order per
    epoch, so that n workers together yield each window exactly once.

    The order is the seed's permutation for the epoch (key order without a seed). `set_epoch(n)` sets
    the epoch, and each iteration moves to the next: so loader workers made anew each epoch get it from
    `set_epoch`, persistent ones count it themselves, and all agree.

    Where torch is loaded, a stream is also a torch IterableDataset to `isinstance` (its `__class__`
    says so), so that DataLoader iterates it instead of indexing it; torch is never imported here, and
    may be imported after the stream is made.
    """

    _torch_classes: dict[type, type] = {}  # noqa: RUF012 (one marker class per torch IterableDataset)

    def __init__(self, dataset: ChartDataset, seed: int | None = None, epoch: int = 0) -> None:
        self.dataset, self.seed, self.epoch = dataset, seed, epoch

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        data = sys.modules.get("torch.utils.data")
        if data is None:
            return ChartStream
        return ChartStream._torch_classes.setdefault(
            data.IterableDataset, type("ChartStream", (ChartStream, data.IterableDataset), {}))

    def __reduce__(self):
        return ChartStream, (self.dataset, self.seed, self.epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self, epoch: int | None = None) -> np.ndarray:
        n = len(self.dataset)
        if self.seed is None:
            return np.arange(n)
        return np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).permutation(n)

    def shard(self, worker: int, workers: int, epoch: int | None = None) -> Iterator[Item]:
        for index in self.order(epoch)[worker::workers]:
            yield self.dataset[int(index)]

    def __iter__(self) -> Iterator[Item]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.shard(*_worker(), epoch)
