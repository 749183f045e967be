"""The samples an export writes: index rows with status ok and the current spec, labelled from market.sqlite.

Reads the index (read-only, one snapshot) and each series once; the labelling itself is labels.py's.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from dataclasses import dataclass
from typing import Any

import numpy as np

from image_cache.cache import index, market
from image_cache.cache.exports.labels import (
    LabelRule,
    Split,
    assign_splits,
    forward_returns,
    on_sample,
    on_stride,
    sample_key,
)
from image_cache.cache.index import preset_of
from image_cache.cache.market import Filters, read_margin_ms, select_series
from image_cache.cache.windows import Series, fingerprint, window_rows
from image_cache.core.db import connect_readonly
from image_cache.core.errors import ImageCacheError
from image_cache.core.grid import now_ms
from image_cache.core.hooks import Warn, no_warn
from image_cache.settings import Settings, make_spec

INDEX_COLUMNS = ("symbol", "interval", "end_open_time_ms", "status", "spec_hash", "style_name", "img_size_px",
                 "window_len", "style_version", "file_path", "sha256", "pixel_hash", "width_px", "height_px",
                 "input_fingerprint")


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


def open_index(path: str) -> sqlite3.Connection:
    """The image index, read-only (never created), after its schema says it is one."""
    kind = index.identify(path)
    if kind == "absent":
        raise ImageCacheError(f"image index not found: {path} (run render first)")
    if kind in index.PLACE_CAUSES:
        raise index.IndexFileError(f"cannot open image index {path}: {index.PLACE_CAUSES[kind]}")
    if kind != "index":
        raise ImageCacheError(f"{path} is not an image index ({kind.replace('-', ' ')})")
    try:
        conn = connect_readonly(path)
        conn.row_factory = sqlite3.Row
        conn.execute("BEGIN")  # one snapshot for the whole selection
        columns = {row[1] for row in conn.execute("PRAGMA table_info(images)")}
    except sqlite3.DatabaseError as exc:
        raise index.failure(path, exc) from None
    missing = [c for c in INDEX_COLUMNS if c not in columns]
    if missing:
        conn.close()
        raise ImageCacheError(f"{path} is not an image index: no images table with column(s) {', '.join(missing)}")
    return conn


def _index_rows(conn: sqlite3.Connection, preset: dict[str, Any], spec_hash: str, symbol: str, interval: str,
                settings: Settings, sample: str) -> tuple[list[sqlite3.Row], int]:
    """The ok rows drawn with the current spec in the date range, on the stride grid and kept by `sample`
    (on_sample), and how many others."""
    rows = conn.execute(
        "SELECT end_open_time_ms, status = 'ok' AND spec_hash = ? AS current, file_path, sha256, pixel_hash, "
        "width_px, height_px, input_fingerprint FROM images WHERE symbol = ? AND interval = ? AND style_name = ? "
        "AND img_size_px = ? AND window_len = ? AND style_version = ? AND end_open_time_ms >= ? "
        "AND end_open_time_ms < ? ORDER BY end_open_time_ms",
        (spec_hash, symbol, interval, preset["style_name"], preset["img_size_px"], preset["window_len"],
         preset["style_version"], settings.start_ms, settings.end_ms or 2**62)).fetchall()
    if settings.stride > 1 and rows:
        keep = on_stride(interval, np.array([r["end_open_time_ms"] for r in rows]), settings.stride)
        rows = [r for r, k in zip(rows, keep, strict=True) if k]
    if sample != "all" and rows:
        keep = on_sample(interval, np.array([r["end_open_time_ms"] for r in rows]), sample)
        rows = [r for r, k in zip(rows, keep, strict=True) if k]
    ok = [r for r in rows if r["current"]]
    return ok, len(rows) - len(ok)


def read_from(conn: sqlite3.Connection, symbol: str, interval: str, sid: int, first_end_ms: int,
              needed: int) -> Series:
    """A series from `needed` candles before `first_end_ms` on (the whole series when gaps make that unclear)."""
    series = market.read_series(conn, symbol, interval, sid, first_end_ms - read_margin_ms(interval, needed))
    position = int(np.searchsorted(series.times, first_end_ms))
    if position < needed - 1:
        series = market.read_series(conn, symbol, interval, sid)
    return series


def select(settings: Settings, filters: Filters, horizons: tuple[int, ...], label: LabelRule,
           warn: Warn = no_warn, now: int | None = None, sample: str = "all") -> Selection:
    """Labelled samples of the configured preset: index rows with status ok and the current spec.

    Rows whose candles changed since drawing (input fingerprint) or whose label is not available
    yet (or crosses a gap) are left out and counted.
    """
    spec = make_spec(settings)
    preset = preset_of(spec)
    now = now_ms() if now is None else now
    counts = dict(selected=0, not_ok=0, stale=0, unlabeled=0)
    samples: list[Sample] = []
    index_conn = open_index(settings.image_index_db)
    market_conn = market.open_market(settings.market_db_path)
    try:
        with index.guarded(index_conn, settings.image_index_db):
            for symbol, interval, sid in select_series(market_conn, settings, filters, warn):
                rows, others = _index_rows(index_conn, preset, spec.spec_hash, symbol, interval, settings,
                                           sample)
                counts["not_ok"] += others
                counts["selected"] += len(rows)
                if rows:
                    series = read_from(market_conn, symbol, interval, sid, rows[0]["end_open_time_ms"],
                                       spec.window_len + spec.history)
                    samples.extend(_label_series(series, rows, spec, horizons, label, now, counts))
    finally:
        market_conn.close()
        index_conn.close()
    if counts["stale"]:
        warn(f"{counts['stale']} images were drawn from candles that changed since: run render first")
    return Selection(samples, counts, spec.spec_hash, preset, spec.history)


def _label_series(series: Series, rows: list[sqlite3.Row], spec, horizons: tuple[int, ...], label: LabelRule,
                  now: int, counts: dict[str, int]) -> list[Sample]:
    if not len(series.times):  # the candles were deleted since drawing
        counts["stale"] += len(rows)
        return []
    ends = np.array([r["end_open_time_ms"] for r in rows], dtype=np.int64)
    last = np.searchsorted(series.times, ends)
    found = (last < len(series.times)) & (series.times[np.minimum(last, len(series.times) - 1)] == ends)
    current = np.array([bool(f) and fingerprint(series, window_rows(int(i), spec.window_len, spec.history))
                        == r["input_fingerprint"] for f, i, r in zip(found, last, rows, strict=True)], dtype=bool)
    counts["stale"] += int((~current).sum())
    returns, valid = forward_returns(series, np.where(current, last, 0), horizons, now)
    valid &= current
    counts["unlabeled"] += int((current & ~valid).sum())
    classes = label.classes(returns)
    out = []
    for k in np.flatnonzero(valid):
        i, row = int(last[k]), rows[k]
        end_ms = row["end_open_time_ms"]
        out.append(Sample(
            key=sample_key(series.symbol, series.interval, end_ms), symbol=series.symbol,
            interval=series.interval, window_start_ms=int(series.times[max(i - spec.window_len + 1, 0)]),
            end_ms=end_ms, label_end_ms=int(series.times[i + max(horizons)]),
            returns=tuple(float(r) for r in returns[k]), classes=tuple(int(c) for c in classes[k]),
            file_path=row["file_path"], sha256=row["sha256"], pixel_hash=row["pixel_hash"],
            width=row["width_px"], height=row["height_px"]))
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
        for sample, k, gone in zip(group, which, purged, strict=True):
            if k < 0:
                counts["outside_splits"] += 1
            elif gone:
                purged_per[splits[k].name] += 1
            else:
                result[splits[k].name].append(dataclasses.replace(sample, split=splits[k].name))
    counts["purged"] = sum(purged_per.values())
    counts["purged_per_split"] = purged_per
    return {name: sorted(group, key=lambda s: s.key) for name, group in result.items()}
