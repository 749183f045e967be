"""What every format writer gets (a Job) and what each format declares (a Format)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from image_cache.cache.exports.labels import LabelRule, Split
from image_cache.cache.exports.select import Sample, Selection
from image_cache.cache.index import preset_label
from image_cache.chart.modes import PIL_MODES
from image_cache.core.hooks import Warn, no_warn


@dataclass(frozen=True)
class ExportOptions:
    format: str
    horizons: tuple[int, ...] = (5, 20)
    label: LabelRule = LabelRule("sign")
    splits: tuple[Split, ...] | None = None  # None: DEFAULT_FRACTIONS of the labelled range
    shard_size: int = 10_000  # webdataset: at most this many samples per shard
    min_shards: int = 8  # webdataset: at least this many shards per split (multi-worker loaders need them)
    seed: int = 0  # webdataset: the shuffle before sharding
    mode: str | None = None  # rgb, palette or gray; None: what the format's clients expect (Format.mode)
    sample: str = "all"  # all, or month-end: the last window of each calendar month only
    array_file: str = "npy"  # numpy: images.npy, or dat: a headerless images.dat (shape and dtype in images.json)
    license: str = "other"
    force: bool = False  # replace an existing export we wrote (its marker file says so)
    command: str = ""  # the exact command line, recorded in the dataset card


@dataclass
class Job:
    """The split samples and where their images are: everything a writer needs."""

    options: ExportOptions
    selection: Selection
    splits: tuple[Split, ...]
    per_split: dict[str, list[Sample]]
    image_root: str
    mode: str  # the pixel mode images reach the clients in
    native: str  # the mode the preset draws in
    warn: Warn = no_warn

    def present(self) -> list[str]:
        """Split names that hold samples, in time order."""
        return [s.name for s in self.splits if self.per_split[s.name]]

    def record(self, sample: Sample) -> dict[str, Any]:
        """The metadata of one sample, the same in every format."""
        fields: dict[str, Any] = {
            "key": sample.key, "symbol": sample.symbol, "interval": sample.interval,
            "window_start_open_time_ms": sample.window_start_ms, "window_end_open_time_ms": sample.end_ms,
            "label_end_open_time_ms": sample.label_end_ms, "split": sample.split,
            "preset": preset_label(self.selection.preset), "spec_hash": self.selection.spec_hash,
            "sha256": sample.sha256, "pixel_hash": sample.pixel_hash, "width": sample.width,
            "height": sample.height, "label": sample.classes[0]}
        for h, r, c in zip(self.options.horizons, sample.returns, sample.classes, strict=True):
            fields[f"label_h{h}"] = c
            fields[f"return_h{h}"] = r
        return fields


# (column, type): a Hugging Face dtype, `image:MODE` (an Image decoded in Pillow mode MODE), the names of a
# ClassLabel (a tuple), or the columns of a struct (a list).
Feature = tuple[str, "str | tuple[str, ...] | list"]


SHAPES = {"rgb": "(H, W, 3)", "gray": "(H, W)", "palette": "(H, W) palette indices"}


def image_feature(job: Job, name: str = "image") -> Feature:
    """The image column, decoded by the Hugging Face loaders in the export's mode."""
    return (name, f"image:{PIL_MODES[job.mode]}")


def record_features(job: Job) -> list[Feature]:
    """The columns of `Job.record`, typed as the Hugging Face loaders read them; labels are ClassLabels."""
    names = job.options.label.names
    columns: list[Feature] = [
        ("key", "string"), ("symbol", "string"), ("interval", "string"), ("window_start_open_time_ms", "int64"),
        ("window_end_open_time_ms", "int64"), ("label_end_open_time_ms", "int64"), ("split", "string"),
        ("preset", "string"), ("spec_hash", "string"), ("sha256", "string"), ("pixel_hash", "string"),
        ("width", "int64"), ("height", "int64"), ("label", names)]
    for h in job.options.horizons:
        columns += [(f"label_h{h}", names), (f"return_h{h}", "float64")]
    return columns


@dataclass(frozen=True)
class Format:
    """One export format: its writer and what the dataset card says about it.

    `data_files` is the card's `configs` pattern per split (`{split}` filled in); `features` the columns
    the Hugging Face loader yields, as (name, YAML dtype); `snippets` code that loads the export, per
    client; `palette_mode` the default mode of palette presets (the others default to their own: gray,
    rgb): rgb where clients decode PNGs, palette for arrays of indices; `config_features` whether the
    card's config carries the features too (the loader's config takes them; the webdataset one does not).
    """

    name: str
    help: str
    write: Callable[[str, Job], None]
    layout: str
    data_files: str
    features: Callable[[Job], list[Feature]]
    snippets: Callable[[Job], list[tuple[str, str]]]
    palette_mode: str = "rgb"
    config_features: bool = True
