"""Export and read speed per format, and the in-memory training dataset: `python -m bench.export_speed`.

Builds a sample market and renders one preset under bench/work/export/, then measures in this process
(one core): each format's export (images/s, the whole `export` call), reading every image of the
export back as pixels with that format's client, the in-memory dataset (`cache.dataset.ChartDataset`),
and the fastest plain read of the same images as PNG files. `rows()` returns the figures for
`make bench`; the machines are shared, so figures are the best of a few rounds and never asserted.
"""

from __future__ import annotations

import argparse
import glob
import io
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pandas as pd
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SPLIT = "train:..2024-05-01,validation:2024-05-01..2024-06-01,test:2024-06-01.."
PRESETS = (("mike", 224, 60), ("jkx", 224, 20))  # (style, size, window); jkx's size follows its window


def _settings(work: Path, style: str, size: int, window: int):
    from image_cache import settings as config
    return config.load(None, {"market_db_path": str(work / "market.sqlite"),
                              "image_index_db": str(work / "image_cache.sqlite"),
                              "image_root_dir": str(work / "image-cache"), "pairs": ["BTCUSDT", "ETHUSDT"],
                              "intervals": ["1h"], "style_name": style, "img_size_px": size,
                              "window_len": window, "start": "2024-03-01", "end": "2024-07-01", "jobs": 1})


def build(work: Path, days: int, style: str, size: int, window: int):
    """A sample market and a full render of the preset (reused when already there)."""
    from image_cache.cache.market import Filters
    from image_cache.cache.runner import render
    from image_cache.ingest.sample import build_sample

    work.mkdir(parents=True, exist_ok=True)
    if not (work / "market.sqlite").exists():
        build_sample(str(work / "market.sqlite"), symbols=["BTCUSDT", "ETHUSDT"], days=days, seed=3)
    settings = _settings(work, style, size, window)
    render(settings, Filters())
    return settings


def best(fn: Callable[[], int], rounds: int) -> tuple[float, int]:
    """Best wall time of `rounds` calls and the count the call returned."""
    times, count = [], 0
    for _ in range(rounds):
        began = time.perf_counter()
        count = fn()
        times.append(time.perf_counter() - began)
    return min(times), count


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def read_imagefolder(out: Path) -> int:
    n = 0
    for path in glob.glob(str(out / "*" / "*" / "*.png")):
        with Image.open(path) as image:
            np.asarray(image)
        n += 1
    return n


def read_png_bytes(out: Path) -> int:
    """The fastest plain PNG read here: the file's bytes, then Pillow's decoder."""
    n = 0
    for path in glob.glob(str(out / "*" / "*" / "*.png")):
        with open(path, "rb") as handle:
            _pixels(handle.read())
        n += 1
    return n


def read_parquet(out: Path) -> int:
    n = 0
    for path in sorted(glob.glob(str(out / "data" / "*.parquet"))):
        for cell in pd.read_parquet(path, columns=["image"]).image:
            _pixels(cell["bytes"])
            n += 1
    return n


def read_parquet_datasets(out: Path, cache: Path) -> int:
    import datasets
    datasets.disable_progress_bars()
    shutil.rmtree(cache, ignore_errors=True)
    loaded = datasets.load_dataset(str(out), cache_dir=str(cache))
    n = 0
    for split in loaded.values():
        for row in split:
            np.asarray(row["image"])
            n += 1
    return n


def read_webdataset(out: Path) -> int:
    import webdataset as wds
    shards = sorted(glob.glob(str(out / "*.tar")))
    return sum(1 for _ in wds.WebDataset(shards, shardshuffle=False).decode("l").to_tuple("png", "cls"))


def read_numpy_mmap(out: Path) -> int:
    """Every image as its own array from the memory map, as a map-style loader reads it (through a plain
    ndarray view: indexing np.memmap itself costs several times more per image)."""
    n = 0
    for path in sorted(glob.glob(str(out / "*" / "images.npy"))):
        images = np.asarray(np.load(path, mmap_mode="r"))
        for k in range(len(images)):
            np.array(images[k])
        n += len(images)
    return n


def read_numpy_whole(out: Path) -> int:
    return sum(len(np.load(path)) for path in sorted(glob.glob(str(out / "*" / "images.npy"))))


def read_dataset(settings, horizons) -> int:
    from image_cache.cache.dataset import ChartDataset
    from image_cache.cache.exports.labels import parse_splits
    n = 0
    for split in ("train", "validation", "test"):
        ds = ChartDataset(settings, split, horizons=horizons, splits=parse_splits(SPLIT))
        for k in range(len(ds)):
            ds[k]
        n += len(ds)
    return n


def rows(work: Path | None = None, days: int = 120, rounds: int = 3,
         presets: tuple[tuple[str, int, int], ...] = PRESETS) -> list[dict]:
    """The figures, one dict per case and preset: preset, case, images, seconds (best of `rounds`),
    rate (images/s), note."""
    work = work or REPO / "bench" / "work" / "export"
    figures = []
    for style, size, window in presets:
        figures += _preset_rows(work, days, rounds, style, size, window)
    return figures


def _preset_rows(work: Path, days: int, rounds: int, style: str, size: int, window: int) -> list[dict]:
    from image_cache.cache.export import ExportOptions, export
    from image_cache.cache.exports.labels import parse_splits
    from image_cache.cache.market import Filters

    settings = build(work, days, style, size, window)
    preset = f"{style} w{window}" + ("" if style == "jkx" else f" {size} px")
    horizons = (5, 20)
    out = work / f"out-{style}-{window}"
    figures = []

    def add(case: str, seconds: float, count: int, note: str = "") -> None:
        figures.append({"preset": preset, "case": case, "images": count, "seconds": round(seconds, 3),
                        "rate": round(count / seconds, 1) if seconds else None, "note": note})

    for fmt in ("imagefolder", "parquet", "webdataset", "numpy", "manifest"):
        options = ExportOptions(format=fmt, horizons=horizons, splits=parse_splits(SPLIT), force=True)
        seconds, count = best(lambda fmt=fmt, options=options:  # bound now: the loop moves on
                              export(settings, Filters(), str(out / fmt), options).counts["exported"], rounds)
        add(f"export {fmt}", seconds, count)
    png = [best(lambda: read_imagefolder(out / "imagefolder"), rounds),
           best(lambda: read_png_bytes(out / "imagefolder"), rounds),
           best(lambda: read_parquet(out / "parquet"), rounds),
           best(lambda: read_parquet_datasets(out / "parquet", work / "hf-cache"), rounds),
           best(lambda: read_webdataset(out / "webdataset"), rounds)]
    for case, figure in zip(("read imagefolder: Pillow open + numpy", "read PNG files: bytes + Pillow decode",
                             "read parquet: pandas + Pillow decode",
                             "read parquet: datasets.load_dataset + iterate (Arrow cache built each round)",
                             "read webdataset: WebDataset.decode"), png, strict=True):
        add(case, *figure)
    add("read numpy: one image at a time from the memory map", *best(lambda: read_numpy_mmap(out / "numpy"), rounds))
    add("read numpy: np.load of each split whole", *best(lambda: read_numpy_whole(out / "numpy"), rounds))
    fastest = max(count / seconds for seconds, count in png)
    memory = best(lambda: read_dataset(settings, horizons), rounds)
    add("in-memory ChartDataset: build + draw every window (no files)", *memory,
        note=f"{memory[1] / memory[0] / fastest:.2f}x the fastest PNG read above (target: >= 1x)")
    return figures


def table(figures: list[dict]) -> str:
    lines = ["| preset | case | images | best s | images/s | note |", "|---|---|---:|---:|---:|---|"]
    for f in figures:
        lines.append(f"| {f['preset']} | {f['case']} | {f['images']:,} | {f['seconds']:.3f} | {f['rate']:,.0f} "
                     f"| {f['note']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=120, help="days of sample market (default 120)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    figures = rows(days=args.days, rounds=args.rounds)
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; one process; "
          f"best of {args.rounds} rounds; {args.days} days of 1h candles, 2 symbols; shared machine: noisy.\n")
    print(table(figures))


if __name__ == "__main__":
    main()
