"""The dataset card (README.md): YAML a dataset hub accepts (license, task, configs, features, splits),
then what the data is, how labels and splits were made, class balance, how to load it and reproduce it."""

from __future__ import annotations

import json
import os
import platform
from collections import Counter
from dataclasses import dataclass
from importlib import metadata
from typing import Any

from image_cache.cache.exports.base import Format, Job
from image_cache.cache.exports.labels import DEFAULT_FRACTIONS
from image_cache.cache.exports.select import Sample
from image_cache.core.grid import iso_utc
from image_cache.settings import Settings

PACKAGES = ("numpy", "pandas", "pillow", "pyarrow", "matplotlib", "mplfinance")


def _q(text: str) -> str:
    """A YAML scalar in double quotes (JSON strings are valid YAML)."""
    return json.dumps(text)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                        (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M")):
        if n < limit:
            return name
    return "10M<n<100M"


def _feature_yaml(name: str, dtype: str | tuple[str, ...] | list) -> list[str]:
    if isinstance(dtype, tuple):
        return [f"  - name: {name}", "    dtype:", "      class_label:", "        names:",
                *(f"          {_q(str(k))}: {_q(n)}" for k, n in enumerate(dtype))]
    if isinstance(dtype, list):
        return [f"  - name: {name}", "    struct:",
                *(f"  {line}" for column, inner in dtype for line in _feature_yaml(column, inner))]
    if dtype.startswith("image:"):
        return [f"  - name: {name}", "    dtype:", "      image:", f"        mode: {dtype[len('image:'):]}"]
    return [f"  - name: {name}", f"    dtype: {dtype}"]


def balance(samples: list[Sample], horizons: tuple[int, ...], n_classes: int) -> dict[str, list[int]]:
    """Samples per class, per horizon."""
    counts = {f"h{h}": [0] * n_classes for h in horizons}
    for sample in samples:
        for h, c in zip(horizons, sample.classes, strict=True):
            counts[f"h{h}"][c] += 1
    return counts


@dataclass
class Card:
    settings: Settings
    job: Job
    fmt: Format
    purge: int
    counts: dict[str, Any]

    def front_matter(self, split_bytes: dict[str, int]) -> list[str]:
        o, present = self.job.options, self.job.present()
        total = sum(len(self.job.per_split[s]) for s in present)
        lines = ["---", f"license: {_q(o.license)}", "task_categories:", "- image-classification",
                 "tags:", "- finance", "- candlestick-charts", "- time-series",
                 "size_categories:", f"- {_size_category(total)}",
                 f"pretty_name: {_q('Candlestick charts ' + self.settings.style_name + ' with forward-return labels')}"]
        features = [f"  {line}" for name, dtype in self.fmt.features(self.job) for line in _feature_yaml(name, dtype)]
        lines += ["configs:", "- config_name: default", "  data_files:"]
        for name in present:
            lines += [f"  - split: {name}", f"    path: {_q(self.fmt.data_files.format(split=name))}"]
        if self.fmt.config_features:  # in the config too: the folder loader reads its features only there
            lines += ["  features:", *features]
        lines += ["dataset_info:", "  config_name: default", "  features:", *features]
        lines.append("  splits:")
        for name in present:
            lines += [f"  - name: {name}", f"    num_bytes: {split_bytes.get(name, 0)}",
                      f"    num_examples: {len(self.job.per_split[name])}"]
        return lines + ["---", ""]

    def text(self, split_bytes: dict[str, int]) -> str:
        job, o, p, c = self.job, self.job.options, self.job.selection.preset, self.counts
        samples = [s for group in job.per_split.values() for s in group]
        horizons = ", ".join(str(h) for h in o.horizons)
        names = o.label.names
        lines = self.front_matter(split_bytes) + [
            "# Candlestick chart images with forward-return labels", "",
            f"Exported by image_cache (`export --format {o.format}`) from its image cache, for image "
            f"classification: each image is a window of {p['window_len']} candles, its label the sign (or bucket) "
            "of the return that follows it.", "",
            "## Source", "",
            f"- market database: `{self.settings.market_db_path}`; image index: `{self.settings.image_index_db}`; "
            f"image root: `{self.settings.image_root_dir}`"
            + (f" (absolute: `{job.image_root}`; manifest paths are relative to it)" if o.format == "manifest"
               else ""),
            f"- series: {', '.join(sorted({f'{s.symbol} {s.interval}' for s in samples}))}",
            f"- window ends from {iso_utc(min(s.end_ms for s in samples))} to "
            f"{iso_utc(max(s.end_ms for s in samples))} (UTC, open time of each window's last candle)"
            + (f", every {self.settings.stride}th window on the interval grid" if self.settings.stride > 1 else ""),
            f"- preset: style {p['style_name']}, size {p['img_size_px']} px, window {p['window_len']} candles, "
            f"style version {p['style_version']}; spec hash `{job.selection.spec_hash}`", "",
            "## Labels", "",
            f"For each horizon h in ({horizons}) candles: the forward return r = close[t+h] / close[t] - 1, where t "
            "is the window's last candle and t+h is h slots later on the interval grid, so a label uses only "
            "candles strictly after the window.",
            f"Label rule: {o.label.describe()}. Class names: {', '.join(f'`{n}`' for n in names)} (classes "
            f"0 to {len(names) - 1}, named so that sorting the names keeps the class order). `label` (WebDataset "
            f"`.cls`, the imagefolder class folder) is the class of the first horizon, h = {o.horizons[0]}; "
            "`label_hH` and `return_hH` hold every horizon; the metadata holds the class numbers.",
            "A window has no label, and is left out, when a candle between t and t+h is missing (a gap) or t+h "
            f"is not closed yet: {c['unlabeled']} windows. `label_end_open_time_ms` is the open time of t+max(h).",
            "", "## Splits", "",
            "By the window's end time (its last candle's open time), ranges [start, end) in UTC"
            + (":" if o.splits else f" (default: {', '.join(f'{n} {s}%' for n, s in DEFAULT_FRACTIONS)} "
                                    "of the time from the first to the last labelled window end):"),
            "", "| split | range | exported | purged |", "|---|---|---|---|"]
        for split in job.splits:
            lines.append(f"| {split.name} | `{split.text()}` | {len(job.per_split[split.name])} | "
                         f"{c['purged_per_split'][split.name]} |")
        lines += [
            "", f"The same splits as an option: `--split {','.join(s.text() for s in job.splits)}`.", "",
            f"Purge: {self.purge} candles (window {p['window_len']} + history {job.selection.history} + longest "
            f"horizon {max(o.horizons)}). Between consecutive splits A and B: a window of A is dropped when its "
            "label's last candle closes after A's end; a window of B is dropped when its end lies within the "
            f"first {self.purge} interval-grid slots at or after B's start. Every candle a B image draws is then "
            "later than every candle an A image or label uses.",
            f"Left out besides: {c['outside_splits']} windows outside every split, {c['stale']} images drawn from "
            f"candles that changed since, {c['not_ok']} index rows not ok (or drawn by an older spec).", ""]
        lines += self._balance_tables()
        lines += ["## Files", "", self.fmt.layout, "",
                  f"Pixels: `{job.mode}` (`--mode`; the preset draws {job.native} images).", "",
                  "`SHA256SUMS` lists every other file: check with `sha256sum -c SHA256SUMS` in this folder.", "",
                  "## Loading", ""]
        for client, code in self.fmt.snippets(job):
            lines += [f"With `{client}` (`OUT` is this folder):", "", "```python", code, "```", ""]
        lines += ["## Reproduce", "", "```", o.command or "(command not recorded)", "```", "",
                  f"Python {platform.python_version()}; "
                  + ", ".join(f"{name} {metadata.version(name)}" for name in PACKAGES) + "."]
        return "\n".join(lines) + "\n"

    def _balance_tables(self) -> list[str]:
        job, o = self.job, self.job.options
        n = o.label.n_classes
        header = " | ".join(f"class {name}" for name in o.label.names)
        lines = ["## Class balance", "", f"| split | horizon | {header} |", "|---|---|" + "---|" * n]
        for split in job.present():
            for horizon, per_class in balance(job.per_split[split], o.horizons, n).items():
                lines.append(f"| {split} | {horizon} | " + " | ".join(str(k) for k in per_class) + " |")
        lines += ["", f"`label` (h = {o.horizons[0]}) per split, symbol and interval:", "",
                  f"| split | symbol | interval | {header} |", "|---|---|---|" + "---|" * n]
        for split in job.present():
            per = Counter((s.symbol, s.interval, s.classes[0]) for s in job.per_split[split])
            for symbol, interval in sorted({(s, i) for s, i, _ in per}):
                lines.append(f"| {split} | {symbol} | {interval} | "
                             + " | ".join(str(per[(symbol, interval, k)]) for k in range(n)) + " |")
        return lines + [""]


def split_bytes(folder: str, job: Job) -> dict[str, int]:
    """Bytes on disk per split: the files whose path starts with the split's name (folder or shard prefix),
    or holds it as a parquet shard; shared files are not counted."""
    sizes: dict[str, int] = {}
    for parent, _, files in os.walk(folder):
        for name in files:
            rel = os.path.relpath(os.path.join(parent, name), folder).replace(os.sep, "/")
            head = rel.removeprefix("data/")
            for split in job.present():
                if head.startswith(split + "/") or head.startswith(split + "-"):
                    sizes[split] = sizes.get(split, 0) + os.path.getsize(os.path.join(parent, name))
    return sizes
