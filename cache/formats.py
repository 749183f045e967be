"""Writers of the export formats, SHA256SUMS and the dataset card; everything sorted, nothing time-dependent.

Each writer fills a fresh folder (the caller renames it into place). Images are checked against
their index SHA-256 as they are read, so an export never ships bytes the index does not vouch for.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import tarfile
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from cache.export import DEFAULT_FRACTIONS, ExportOptions, Sample, Selection, Split
from cache.runner import preset_label
from config import Settings
from core.errors import MarketError
from core.grid import iso_utc

PACKAGES = ("numpy", "pandas", "pillow", "pyarrow", "matplotlib", "mplfinance")


def record(sample: Sample, horizons: tuple[int, ...], preset: str, spec_hash: str) -> dict[str, Any]:
    """The metadata of one sample, shared by metadata.jsonl, KEY.json and manifest.parquet."""
    fields: dict[str, Any] = {
        "key": sample.key, "symbol": sample.symbol, "interval": sample.interval,
        "window_start_open_time_ms": sample.window_start_ms, "window_end_open_time_ms": sample.end_ms,
        "label_end_open_time_ms": sample.label_end_ms, "split": sample.split, "preset": preset,
        "spec_hash": spec_hash, "sha256": sample.sha256, "pixel_hash": sample.pixel_hash,
        "width": sample.width, "height": sample.height, "label": sample.classes[0]}
    for h, r, c in zip(horizons, sample.returns, sample.classes):
        fields[f"label_h{h}"] = c
        fields[f"return_h{h}"] = r
    return fields


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _checked_bytes(image_root: str, sample: Sample) -> bytes:
    path = os.path.join(image_root, sample.file_path)
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise MarketError(f"cannot read {path}: {exc.strerror or exc} (run verify, then repair)") from None
    if hashlib.sha256(data).hexdigest() != sample.sha256:
        raise MarketError(f"{path} differs from its index row (run verify --deep, then repair)")
    return data


def _link_or_copy(source: str, data: bytes, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another file system, or links not allowed: copy the bytes already checked
        with open(target, "wb") as handle:
            handle.write(data)


def write_imagefolder(folder: str, per_split: dict[str, list[Sample]], image_root: str, card: Card,
                      folder_size: int) -> None:
    """{split}/metadata.jsonl with file_name relative to the split folder; images in {split}/NNNNNN/."""
    for name, samples in per_split.items():
        if not samples:
            continue
        lines = []
        for position, sample in enumerate(samples):
            file_name = f"{position // folder_size:06d}/{sample.key}.png"
            target = os.path.join(folder, name, file_name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _link_or_copy(os.path.join(image_root, sample.file_path), _checked_bytes(image_root, sample), target)
            lines.append(_json({"file_name": file_name, **card.record(sample)}) + "\n")
        with open(os.path.join(folder, name, "metadata.jsonl"), "w", encoding="utf-8") as handle:
            handle.writelines(lines)


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_webdataset(folder: str, per_split: dict[str, list[Sample]], image_root: str, card: Card,
                     shard_size: int) -> None:
    """{split}-NNNNNN.tar shards; each sample's members KEY.cls, KEY.json, KEY.png are adjacent, keys sorted."""
    for name, samples in per_split.items():
        for shard, begin in enumerate(range(0, len(samples), shard_size)):
            path = os.path.join(folder, f"{name}-{shard:06d}.tar")
            with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
                for sample in samples[begin:begin + shard_size]:
                    _member(tar, f"{sample.key}.cls", str(sample.classes[0]).encode("ascii"))
                    _member(tar, f"{sample.key}.json", _json(card.record(sample)).encode("utf-8"))
                    _member(tar, f"{sample.key}.png", _checked_bytes(image_root, sample))


def write_parquet(folder: str, per_split: dict[str, list[Sample]], image_root: str, card: Card) -> None:
    """manifest.parquet: one row per image, `path` relative to the image root (images stay in place)."""
    horizons = card.options.horizons
    columns: list[tuple[str, pa.DataType]] = [
        ("key", pa.string()), ("path", pa.string()), ("sha256", pa.string()), ("pixel_hash", pa.string()),
        ("symbol", pa.string()), ("interval", pa.string()), ("window_start_open_time_ms", pa.int64()),
        ("window_end_open_time_ms", pa.int64()), ("preset", pa.string()), ("spec_hash", pa.string()),
        ("width", pa.int64()), ("height", pa.int64()), ("split", pa.string()), ("label", pa.int64())]
    for h in horizons:
        columns += [(f"label_h{h}", pa.int64()), (f"return_h{h}", pa.float64())]
    columns.append(("label_end_open_time_ms", pa.int64()))
    rows = []
    for samples in per_split.values():
        for sample in samples:
            _checked_bytes(image_root, sample)
            rows.append({**card.record(sample), "path": sample.file_path})
    schema = pa.schema(columns)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, os.path.join(folder, "manifest.parquet"), compression="zstd", compression_level=3,
                   version="2.6", use_dictionary=True, write_statistics=True)


def write_sha256sums(folder: str) -> int:
    """SHA256SUMS of every other file, sorted by path, in `sha256sum -c` format; returns the file count."""
    entries = []
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            path = os.path.join(parent, name)
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            entries.append((os.path.relpath(path, folder).replace(os.sep, "/"), digest.hexdigest()))
    entries.sort()
    with open(os.path.join(folder, "SHA256SUMS"), "w", encoding="ascii") as handle:
        handle.writelines(f"{digest}  {path}\n" for path, digest in entries)
    return len(entries) + 1


def write(folder: str, options: ExportOptions, per_split: dict[str, list[Sample]], image_root: str,
          card: Card) -> int:
    """Fill `folder` with the format, the dataset card and SHA256SUMS; returns the number of files."""
    if options.format == "imagefolder":
        write_imagefolder(folder, per_split, image_root, card, options.folder_size)
    elif options.format == "webdataset":
        write_webdataset(folder, per_split, image_root, card, options.shard_size)
    else:
        write_parquet(folder, per_split, image_root, card)
    with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as handle:
        handle.write(card.text(image_root))
    return write_sha256sums(folder)


# ------------------------------------------------------------------------------------------ card

@dataclass
class Card:
    """The dataset card: what the data is, how labels and splits were made, and how to reproduce it."""

    settings: Settings
    selection: Selection
    options: ExportOptions
    splits: tuple[Split, ...]
    purge: int
    per_split: dict[str, list[Sample]]
    counts: dict[str, Any]

    def record(self, sample: Sample) -> dict[str, Any]:
        return record(sample, self.options.horizons, preset_label(self.selection.preset),
                      self.selection.spec_hash)

    def balance(self, samples: list[Sample]) -> dict[str, list[int]]:
        """Samples per class, per horizon."""
        counts = {f"h{h}": [0] * self.options.label.n_classes for h in self.options.horizons}
        for sample in samples:
            for h, c in zip(self.options.horizons, sample.classes):
                counts[f"h{h}"][c] += 1
        return counts

    def _front_matter(self) -> list[str]:
        present = [s.name for s in self.splits if self.per_split[s.name]]
        if self.options.format == "parquet":
            return []
        pattern = "{}/**" if self.options.format == "imagefolder" else "{}-*.tar"
        lines = ["---", "configs:", "- config_name: default", "  data_files:"]
        for name in present:
            lines += [f"  - split: {name}", f"    path: \"{pattern.format(name)}\""]
        return lines + ["---", ""]

    def text(self, image_root: str) -> str:
        o, p, c = self.options, self.selection.preset, self.counts
        samples = [s for group in self.per_split.values() for s in group]
        horizons = ", ".join(str(h) for h in o.horizons)
        lines = self._front_matter() + [
            "# Candlestick chart images with forward-return labels", "",
            f"Exported by image_cache (`export --format {o.format}`) from its image cache.", "",
            "## Source", "",
            f"- market database: `{self.settings.market_db_path}`; image index: `{self.settings.image_index_db}`; "
            f"image root: `{self.settings.image_root_dir}`"
            + (f" (absolute: `{image_root}`; manifest paths are relative to it)" if o.format == "parquet" else ""),
            f"- series: {', '.join(sorted({f'{s.symbol} {s.interval}' for s in samples}))}",
            f"- window ends from {iso_utc(min(s.end_ms for s in samples))} to {iso_utc(max(s.end_ms for s in samples))} "
            f"(UTC, open time of each window's last candle)",
            f"- preset: style {p['style_name']}, size {p['img_size_px']} px, window {p['window_len']} candles, "
            f"style version {p['style_version']}; spec hash `{self.selection.spec_hash}`", "",
            "## Labels", "",
            f"For each horizon h in ({horizons}) candles: the forward return r = close[t+h] / close[t] - 1, where t "
            "is the window's last candle and t+h is h slots later on the interval grid, so a label uses only "
            "candles strictly after the window.",
            f"Label rule: {o.label.describe()}. `label` (and WebDataset's `.cls`) is the class of the first "
            f"horizon, h = {o.horizons[0]}; `label_hH` and `return_hH` hold every horizon.",
            "A window has no label, and is left out, when a candle between t and t+h is missing (a gap) or t+h "
            f"is not closed yet: {c['unlabeled']} windows. `label_end_open_time_ms` is the open time of t+max(h).",
            "", "## Splits", "",
            "By the window's end time (its last candle's open time), ranges [start, end) in UTC"
            + (":" if self.options.splits else f" (default: {', '.join(f'{n} {s}%' for n, s in DEFAULT_FRACTIONS)} "
                                                 "of the time from the first to the last labelled window end):"),
            "", "| split | range | exported | purged |", "|---|---|---|---|"]
        for split in self.splits:
            lines.append(f"| {split.name} | `{split.text()}` | {len(self.per_split[split.name])} | "
                         f"{c['purged_per_split'][split.name]} |")
        lines += [
            "", f"The same splits as an option: `--split {','.join(s.text() for s in self.splits)}`.", "",
            f"Purge: {self.purge} candles (window {p['window_len']} + history {self.selection.history} + longest "
            f"horizon {max(o.horizons)}). Between consecutive splits A and B: a window of A is dropped when its "
            "label's last candle closes after A's end; a window of B is dropped when its end lies within the "
            f"first {self.purge} interval-grid slots at or after B's start. Every candle a B image draws is then "
            "later than every candle an A image or label uses.",
            f"Left out besides: {c['outside_splits']} windows outside every split, {c['stale']} images drawn from "
            f"candles that changed since, {c['not_ok']} index rows not ok (or drawn by an older spec).",
            "", "## Class balance", "", "| split | horizon | " + " | ".join(
                f"class {k}" for k in range(o.label.n_classes)) + " |",
            "|---|---|" + "---|" * o.label.n_classes]
        for split in self.splits:
            for horizon, per_class in self.balance(self.per_split[split.name]).items():
                lines.append(f"| {split.name} | {horizon} | " + " | ".join(str(n) for n in per_class) + " |")
        lines += ["", "## Files", "", LAYOUT[o.format].format(folder_size=o.folder_size), "",
                  "`SHA256SUMS` lists every other file: check with `sha256sum -c SHA256SUMS` in this folder.", "",
                  "## Reproduce", "", "```", o.command or "(command not recorded)", "```", "",
                  f"Python {platform.python_version()}; "
                  + ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES) + "."]
        return "\n".join(lines) + "\n"


LAYOUT = {
    "imagefolder": "`SPLIT/metadata.jsonl` (one JSON object per image, `file_name` relative to the split "
                   "folder) and `SPLIT/NNNNNN/KEY.png` (at most {folder_size:,} files per folder): "
                   "`datasets.load_dataset(\"imagefolder\", data_dir=...)` or this folder's `configs`.",
    "webdataset": "`SPLIT-NNNNNN.tar` shards: members `KEY.png`, `KEY.json` (metadata), `KEY.cls` (`label`), "
                  "keys without dots, sorted; fixed mtime, owner and mode.",
    "parquet": "`manifest.parquet`: one row per image (`path` relative to the image root; the images stay in "
               "the cache).",
}
