"""ML dataset export: forward-return labels, leak-free time splits, and one export folder per run.

Labels and splits are pure functions over a series' arrays; `select` reads the index and the market
(one snapshot each), and `export` writes the chosen format (cache/formats.py) into a temp folder next
to OUT that is renamed into place only when complete, so a failed export leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cache import index, market
from cache.runner import Filters, make_spec, preset_label, preset_of, read_margin_ms, run_lock, select_series
from cache.windows import Series, fingerprint, window_rows
from config import ConfigError, Settings
from core.hooks import Warn, no_warn
from core.errors import MarketError
from core.grid import close_time_ms, grid_index, iso_utc, now_ms, on_grid, utc_ms

FORMATS = ("imagefolder", "webdataset", "parquet")
DEFAULT_FRACTIONS = (("train", 70), ("val", 15), ("test", 15))
SPLIT_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
MAX_HORIZON = 100_000


# ------------------------------------------------------------------------------------------ options

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

    def describe(self) -> str:
        if self.kind == "sign":
            return "sign: 1 if the forward return is > 0, else 0 (as Jiang, Kelly and Xiu)"
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
        if not all(math.isfinite(e) for e in edges) or any(b <= a for a, b in zip(edges, edges[1:])):
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
    """`train:2019-01-01..2023-01-01,val:2023-01-01..2024-01-01,test:2024-01-01..`, sorted by time."""
    splits = []
    for part in text.split(","):
        name, colon, span = part.strip().partition(":")
        start, dots, end = span.partition("..")
        if not colon or not dots:
            raise ConfigError(f"--split {part!r}: expected NAME:START..END (either date may be empty)")
        if not SPLIT_NAME_RE.match(name):
            raise ConfigError(f"--split {part!r}: split names are lower-case letters, digits and _, "
                              "starting with a letter")
        try:
            split = Split(name, utc_ms(start) if start else None, utc_ms(end) if end else None)
        except MarketError as exc:
            raise ConfigError(f"--split {part!r}: {exc}") from None
        if split.start_ms is not None and split.end_ms is not None and split.end_ms <= split.start_ms:
            raise ConfigError(f"--split {part!r}: end is not after start")
        splits.append(split)
    names = [s.name for s in splits]
    if len(set(names)) != len(names):
        raise ConfigError(f"--split {text!r}: split names must be distinct")
    splits.sort(key=lambda s: -math.inf if s.start_ms is None else s.start_ms)
    for before, after in zip(splits, splits[1:]):
        if before.end_ms is None or after.start_ms is None or after.start_ms < before.end_ms:
            raise ConfigError(f"--split: {before.name} and {after.name} overlap")
    return tuple(splits)


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


@dataclass(frozen=True)
class ExportOptions:
    format: str
    horizons: tuple[int, ...] = (5, 20)
    label: LabelRule = LabelRule("sign")
    splits: tuple[Split, ...] | None = None  # None: DEFAULT_FRACTIONS of the labelled range
    shard_size: int = 10_000
    command: str = ""  # the exact command line, recorded in the dataset card
    folder_size: int = 10_000  # imagefolder: files per folder


# ------------------------------------------------------------------------------------------ pure core

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
    """WebDataset key (no dots): SYMBOL_INTERVAL_YYYYMMDDTHHMMSS of the window's last candle."""
    return f"{symbol}_{interval}_{iso_utc(end_ms).replace('-', '').replace(':', '').rstrip('Z')}"


# ------------------------------------------------------------------------------------------ selection

@dataclass(frozen=True)
class Sample:
    """One labelled image, as every format writes it."""

    key: str
    symbol: str
    interval: str
    window_start_ms: int
    end_ms: int
    label_end_ms: int
    returns: tuple[float, ...]
    classes: tuple[int, ...]
    file_path: str
    sha256: str
    pixel_hash: str
    width: int
    height: int
    split: str = ""


@dataclass
class Selection:
    samples: list[Sample]
    counts: dict[str, int]
    spec_hash: str
    preset: dict[str, Any]
    history: int


def _index_rows(conn, preset: dict[str, Any], spec_hash: str, symbol: str, interval: str,
                settings: Settings) -> tuple[list[tuple], int]:
    """The ok rows drawn with the current spec in the date range, and how many others there are."""
    rows = conn.execute(
        "SELECT end_open_time_ms, status = 'ok' AND spec_hash = ?, file_path, sha256, pixel_hash, width_px, "
        "height_px, input_fingerprint FROM images WHERE symbol = ? AND interval = ? AND style_name = ? "
        "AND img_size_px = ? AND window_len = ? AND style_version = ? AND end_open_time_ms >= ? "
        "AND end_open_time_ms < ? ORDER BY end_open_time_ms",
        (spec_hash, symbol, interval, preset["style_name"], preset["img_size_px"], preset["window_len"],
         preset["style_version"], settings.start_ms, settings.end_ms or 2**62)).fetchall()
    ok = [r for r in rows if r[1]]
    return ok, len(rows) - len(ok)


def _read(conn, symbol: str, interval: str, sid: int, first_end_ms: int, needed: int) -> Series:
    series = market.read_series(conn, symbol, interval, sid, first_end_ms - read_margin_ms(interval, needed))
    position = int(np.searchsorted(series.times, first_end_ms))
    if position < needed - 1:  # gaps before the first window: read the whole series
        series = market.read_series(conn, symbol, interval, sid)
    return series


def select(settings: Settings, filters: Filters, horizons: tuple[int, ...], label: LabelRule,
           warn: Warn = no_warn, now: int | None = None) -> Selection:
    """Labelled samples of the configured preset: index rows with status ok and the current spec.

    Rows whose candles changed since drawing (input fingerprint) or whose label is not available
    yet (or crosses a gap) are left out and counted.
    """
    spec = make_spec(settings)
    preset = preset_of(spec)
    now = now_ms() if now is None else now
    counts = dict(selected=0, not_ok=0, stale=0, unlabeled=0)
    samples: list[Sample] = []
    index_conn = index.connect(settings.image_index_db, create=False)
    market_conn = market.open_market(settings.market_db_path)
    try:
        for symbol, interval, sid in select_series(market_conn, settings, filters, warn):
            rows, others = _index_rows(index_conn, preset, spec.spec_hash, symbol, interval, settings)
            counts["not_ok"] += others
            counts["selected"] += len(rows)
            if not rows:
                continue
            series = _read(market_conn, symbol, interval, sid, rows[0][0], spec.window_len + spec.history)
            samples.extend(_label_series(series, rows, spec, horizons, label, now, counts))
    finally:
        market_conn.close()
        index_conn.close()
    if counts["stale"]:
        warn(f"{counts['stale']} images were drawn from candles that changed since: run render first")
    return Selection(samples, counts, spec.spec_hash, preset, spec.history)


def _label_series(series: Series, rows: list[tuple], spec, horizons: tuple[int, ...], label: LabelRule,
                  now: int, counts: dict[str, int]) -> list[Sample]:
    if not len(series.times):  # the candles were deleted since drawing
        counts["stale"] += len(rows)
        return []
    ends = np.array([r[0] for r in rows], dtype=np.int64)
    last = np.searchsorted(series.times, ends)
    found = (last < len(series.times)) & (series.times[np.minimum(last, len(series.times) - 1)] == ends)
    current = np.array([bool(f) and fingerprint(series, window_rows(int(i), spec.window_len, spec.history)) == r[7]
                        for f, i, r in zip(found, last, rows)], dtype=bool)
    counts["stale"] += int((~current).sum())
    returns, valid = forward_returns(series, np.where(current, last, 0), horizons, now)
    valid &= current
    counts["unlabeled"] += int((current & ~valid).sum())
    classes = label.classes(returns)
    out = []
    for k in np.flatnonzero(valid):
        i = int(last[k])
        end_ms, _, file_path, sha256, pixel_hash, width, height, _ = rows[k]
        out.append(Sample(
            key=sample_key(series.symbol, series.interval, end_ms), symbol=series.symbol,
            interval=series.interval, window_start_ms=int(series.times[max(i - spec.window_len + 1, 0)]),
            end_ms=end_ms, label_end_ms=int(series.times[i + max(horizons)]),
            returns=tuple(float(r) for r in returns[k]), classes=tuple(int(c) for c in classes[k]),
            file_path=file_path, sha256=sha256, pixel_hash=pixel_hash, width=width, height=height))
    return out


def split_samples(samples: list[Sample], splits: tuple[Split, ...], purge: int,
                  counts: dict[str, Any]) -> dict[str, list[Sample]]:
    """Samples per split (sorted by key), leaving out those outside every split or purged (counted)."""
    result: dict[str, list[Sample]] = {s.name: [] for s in splits}
    purged_per = {s.name: 0 for s in splits}
    by_interval: dict[str, list[Sample]] = {}
    for sample in samples:
        by_interval.setdefault(sample.interval, []).append(sample)
    for interval, group in by_interval.items():
        which, purged = assign_splits(interval, np.array([s.end_ms for s in group], dtype=np.int64),
                                      np.array([s.label_end_ms for s in group], dtype=np.int64), splits, purge)
        for sample, k, gone in zip(group, which, purged):
            if k < 0:
                counts["outside_splits"] += 1
            elif gone:
                purged_per[splits[k].name] += 1
            else:
                result[splits[k].name].append(dataclasses.replace(sample, split=splits[k].name))
    counts["purged"] = sum(purged_per.values())
    counts["purged_per_split"] = purged_per
    return {name: sorted(group, key=lambda s: s.key) for name, group in result.items()}


# ------------------------------------------------------------------------------------------ export

@dataclass
class ExportResult:
    out: str
    format: str
    counts: dict[str, Any] = field(default_factory=dict)
    splits: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "format": self.format, "counts": self.counts, "splits": self.splits,
                "files": self.files}

    def text(self) -> str:
        c = self.counts
        per = ", ".join(f"{s['name']} {s['exported']}" for s in self.splits)
        return (f"exported {c['exported']} images to {self.out} ({self.format}): {per}\n"
                f"left out: {c['unlabeled']} without a label, {c['purged']} in purge gaps, "
                f"{c['outside_splits']} outside the splits, {c['stale']} stale, {c['not_ok']} not ok in the index")


def check_out(out: str) -> None:
    if os.path.lexists(out) and (not os.path.isdir(out) or os.listdir(out)):
        raise MarketError(f"{out} exists and is not an empty folder: choose a new OUT")


def export(settings: Settings, filters: Filters, out: str, options: ExportOptions,
           warn: Warn = no_warn, now: int | None = None) -> ExportResult:
    """Write the labelled, split samples to OUT in the chosen format, with SHA256SUMS and a dataset card."""
    from cache import formats  # here: formats imports this module

    if options.format not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {options.format!r}")
    check_out(out)
    target = os.path.abspath(out)
    with run_lock(settings, "export"):
        selection = select(settings, filters, options.horizons, options.label, warn, now)
        if not selection.samples:
            raise MarketError(f"nothing to export: no labelled images of preset {preset_label(selection.preset)} "
                              f"in range ({selection.counts['selected']} ok rows selected; run render first?)")
        splits = options.splits or default_splits(min(s.end_ms for s in selection.samples),
                                                  max(s.end_ms for s in selection.samples))
        counts: dict[str, Any] = {**selection.counts, "outside_splits": 0}
        purge = purge_candles(selection.preset["window_len"], selection.history, options.horizons)
        per_split = split_samples(selection.samples, splits, purge, counts)
        counts["exported"] = sum(len(group) for group in per_split.values())
        for name, group in per_split.items():
            if not group:
                warn(f"split {name} is empty (shorter than the purge of {purge} candles, or no data in it)")
        if not counts["exported"]:
            raise MarketError("nothing to export: every labelled image is outside the splits or in a purge gap")
        temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.tmp")
        shutil.rmtree(temp, ignore_errors=True)
        try:
            os.makedirs(temp)
            card = formats.Card(settings, selection, options, splits, purge, per_split, counts)
            files = formats.write(temp, options, per_split, os.path.abspath(settings.image_root_dir), card)
            os.rename(temp, target)  # replaces an empty folder; fails if OUT was filled meanwhile
        except BaseException as exc:
            shutil.rmtree(temp, ignore_errors=True)
            if isinstance(exc, OSError):
                raise MarketError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
            raise
    summary = [{"name": s.name, "start": s.start_ms, "end": s.end_ms, "exported": len(per_split[s.name]),
                "purged": counts["purged_per_split"][s.name], "balance": card.balance(per_split[s.name])}
               for s in splits]
    return ExportResult(out, options.format, counts, summary, files)
