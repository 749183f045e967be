"""Export formats, loaded with their real clients: splits, counts, labels recomputed from market.sqlite,
ClassLabel names, the torchvision folder rule, shards for multi-worker loaders, and byte-identical re-exports."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sqlite3
import subprocess
import tarfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before datasets is imported: never look for a hub

import datasets
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import webdataset as wds
import yaml
from PIL import Image

from conftest import CONFIG, index_rows, render_cli, run_cli, tree_digest
from image_cache import chart
from image_cache.core.grid import iso_utc, utc_ms

H = 3_600_000
SPLITS = ("train", "validation", "test")
SPLIT = "train:..2024-06-26,validation:2024-06-26..2024-06-28T12:00,test:2024-06-28T12:00.."
ARGS = ("--config", "image_cache.toml", "--start", "2024-06-22", "--split", SPLIT, "--horizons", "2,4")
FORMATS = ("imagefolder", "parquet", "webdataset", "numpy", "manifest")
NAMES = ("down", "up")  # --label sign

datasets.disable_progress_bars()


@pytest.fixture(scope="module")
def cache(tmp_path_factory, sample_market: Path) -> Path:
    """BTCUSDT and ETHUSDT 1h rendered from 2024-06-22, shared by this module's tests."""
    folder = tmp_path_factory.mktemp("cache")
    shutil.copy(sample_market, folder / "market.sqlite")
    (folder / "image_cache.toml").write_text(CONFIG.replace(', "4h"', ""))
    result = render_cli(folder, "--start", "2024-06-22")
    assert result.returncode == 0, result.stderr
    return folder


def export_cli(cwd: Path, out: str | Path, fmt: str, *extra: str) -> subprocess.CompletedProcess:
    return run_cli(cwd, "export", str(out), "--format", fmt, *ARGS, *extra)


@pytest.fixture(scope="module")
def exports(cache: Path, tmp_path_factory) -> dict[str, Path]:
    """One export per format (imagefolder into an existing empty folder, which is allowed)."""
    folder = tmp_path_factory.mktemp("exports")
    (folder / "imagefolder").mkdir()
    for fmt in FORMATS:
        result = export_cli(cache, folder / fmt, fmt)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("exported ") and f"({fmt})" in result.stdout
    return {fmt: folder / fmt for fmt in FORMATS}


@pytest.fixture(scope="module")
def expected(cache: Path) -> dict[str, int]:
    """key -> label (h = 2) recomputed from market.sqlite for every window, whatever the split."""
    with sqlite3.connect(cache / "market.sqlite") as conn:
        rows = conn.execute("SELECT s.symbol, i.code, c.open_time, c.close FROM candles c "
                            "JOIN series se ON se.id = c.series_id JOIN symbols s ON s.id = se.symbol_id "
                            "JOIN intervals i ON i.id = se.interval_id WHERE i.code = '1h'").fetchall()
    closes = {(symbol, t): close for symbol, _, t, close in rows}
    labels = {}
    for (symbol, t), close in closes.items():
        later = closes.get((symbol, t + 2 * H))
        if later is not None:
            stamp = pd.Timestamp(t, unit="ms").strftime("%Y%m%dT%H%M%S")
            labels[f"{symbol}_1h_{stamp}"] = int(later > close)
    return labels


@pytest.fixture(scope="module")
def keys(exports: dict[str, Path]) -> dict[str, list[str]]:
    """The keys of each split, in key order, from the manifest (the reference for the other formats)."""
    frame = pd.read_parquet(exports["manifest"] / "manifest")
    return {name: sorted(frame.key[frame.split == name]) for name in SPLITS}


def check_split_keys(got: dict[str, list[str]], keys: dict[str, list[str]]) -> None:
    assert list(got) == list(SPLITS) and all(len(keys[name]) > 10 for name in SPLITS)
    assert {name: sorted(k) for name, k in got.items()} == keys
    everything = [k for group in got.values() for k in group]
    assert len(everything) == len(set(everything))  # no key in two splits


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def key_of(path: str) -> str:
    return os.path.basename(path).removesuffix(".png")


def test_imagefolder_first_level_folders_are_the_classes(exports: dict[str, Path], expected: dict[str, int]):
    out = exports["imagefolder"]
    for name in SPLITS:
        classes = sorted(p.name for p in (out / name).iterdir())
        assert classes == list(NAMES)  # torchvision's ImageFolder(OUT/split) takes exactly these as classes
        for cls in classes:
            entries = list((out / name / cls).iterdir())
            assert entries and all(p.is_file() and p.suffix == ".png" for p in entries)
            assert all(expected[key_of(p.name)] == NAMES.index(cls) for p in entries)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [".image_cache-export.json", "README.md", "SHA256SUMS", "samples.jsonl", *SPLITS])


@pytest.mark.parametrize("how", ["card", "data_dir"])
def test_imagefolder_loads_with_datasets(exports: dict[str, Path], keys, expected, tmp_path: Path, how: str):
    out = str(exports["imagefolder"])
    loaded = (datasets.load_dataset(out, cache_dir=str(tmp_path)) if how == "card" else
              datasets.load_dataset("imagefolder", data_dir=out, cache_dir=str(tmp_path)))
    got = {}
    for name, split in loaded.items():
        assert split.features["label"] == datasets.ClassLabel(names=list(NAMES))
        paths = split.cast_column("image", datasets.Image(decode=False))["image"]
        got[name] = [key_of(p["path"]) for p in paths]
        assert list(split["label"]) == [expected[k] for k in got[name]]
    check_split_keys(got, keys)
    first = loaded["train"][0]["image"]
    assert first.size == (128, 128)


def test_imagefolder_metadata_lists_every_image(exports: dict[str, Path], cache: Path):
    out = exports["imagefolder"]
    records = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert [r["key"] for r in records] == sorted(r["key"] for r in records if r["split"] == "train") + sorted(
        r["key"] for r in records if r["split"] == "validation") + sorted(
        r["key"] for r in records if r["split"] == "test")
    for record in records:
        image = out / record["file_name"]
        assert record["file_name"] == f"{record['split']}/{NAMES[record['label']]}/{record['key']}.png"
        assert sha256(image) == record["sha256"] and {"return_h2", "return_h4", "label_h4"} <= set(record)


def test_exported_images_share_no_inode_and_editing_them_leaves_the_cache_clean(cache: Path, tmp_path: Path):
    out = tmp_path / "out"
    result = export_cli(cache, out, "imagefolder")
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
    exported = out / record["file_name"]
    cached = cache / "image-cache" / index_rows(cache / "image_cache.sqlite",
                                                f"WHERE sha256 = '{record['sha256']}'")[0][3]
    assert not os.path.samefile(exported, cached) and os.stat(exported).st_nlink == 1
    with Image.open(exported) as image:
        image.resize((64, 64)).save(exported)  # a user editing the export in place
    assert sha256(cached) == record["sha256"]
    result = run_cli(cache, "verify", "--config", "image_cache.toml", "--deep")
    assert result.returncode == 0, result.stdout + result.stderr


def test_parquet_is_self_contained_and_loads_with_datasets(exports: dict[str, Path], keys, expected,
                                                           tmp_path: Path):
    out = exports["parquet"]
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path))
    got = {}
    for name, split in loaded.items():
        assert split.features["label"] == split.features["label_h4"] == datasets.ClassLabel(names=list(NAMES))
        assert isinstance(split.features["image"], datasets.Image)
        got[name] = list(split["key"])
        assert list(split["label"]) == [expected[k] for k in got[name]] and set(split["split"]) == {name}
    check_split_keys(got, keys)
    row = loaded["test"].cast_column("image", datasets.Image(decode=False))[0]
    assert hashlib.sha256(row["image"]["bytes"]).hexdigest() == row["sha256"]
    # pandas alone, without the cache: the bytes are in the file.
    frame = pd.read_parquet(out / "data" / "validation-00000-of-00001.parquet")
    with Image.open(io.BytesIO(frame.image[0]["bytes"])) as image:
        assert image.size == (128, 128)


def test_manifest_points_into_the_cache(cache: Path, exports: dict[str, Path], keys):
    got = {}
    for name in SPLITS:
        path = exports["manifest"] / "manifest" / f"{name}.parquet"
        frame = pd.read_parquet(path)
        assert pq.read_schema(path).names[:3] == ["path", "image", "key"] and set(frame.split) == {name}
        got[name] = list(frame.key)
        for row in frame.itertuples():
            assert sha256(cache / "image-cache" / row.path) == row.sha256
            assert row.image == {"bytes": None, "path": str(cache / "image-cache" / row.path)}
    check_split_keys(got, keys)
    assert sorted(os.listdir(exports["manifest"])) == [".image_cache-export.json", "README.md", "SHA256SUMS",
                                                      "manifest"]


def test_webdataset_is_shuffled_into_equal_shards(exports: dict[str, Path], keys, expected):
    out = exports["webdataset"]
    got = {}
    for name in SPLITS:
        shards = sorted(out.glob(f"{name}-*.tar"))
        assert [p.name for p in shards] == [f"{name}-{k:06d}.tar" for k in range(8)]  # --min-shards 8
        sizes, order = [], []
        for shard in shards:
            with tarfile.open(shard) as tar:
                members = tar.getmembers()
                assert all(m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" and m.mode == 0o644
                           for m in members)
                names = [m.name for m in members]
                shard_keys = [n.split(".", 1)[0] for n in names[::3]]
                assert names == [f"{k}.{ext}" for k in shard_keys for ext in ("cls", "json", "png")]
                sizes.append(len(shard_keys))
                order += shard_keys
        assert max(sizes) - min(sizes) <= 1
        assert order != sorted(order)  # shuffled before sharding
        samples = list(wds.WebDataset([str(s) for s in shards], shardshuffle=False).decode("pil")
                       .to_tuple("__key__", "png", "cls", "json"))
        got[name] = [key for key, _, _, _ in samples]
        assert got[name] == order
        for key, image, cls, record in samples:
            assert cls == expected[key] == record["label"] and record["split"] == name and image.size == (128, 128)
    check_split_keys(got, keys)


def test_webdataset_feeds_more_workers_than_one_shard(exports: dict[str, Path], keys,
                                                      monkeypatch: pytest.MonkeyPatch):
    # webdataset splits shards by worker from WORKER/NUM_WORKERS (or torch's worker info): 4 workers over
    # the validation split, which the old export wrote as one shard ("No samples found" in 3 of 4 workers).
    shards = [str(p) for p in sorted(exports["webdataset"].glob("validation-*.tar"))]
    seen = []
    for worker in range(4):
        monkeypatch.setenv("WORKER", str(worker))
        monkeypatch.setenv("NUM_WORKERS", "4")
        part = [s["__key__"] for s in wds.WebDataset(shards, shardshuffle=False)]
        assert part
        seen += part
    assert sorted(seen) == keys["validation"]


def test_webdataset_loads_with_datasets(exports: dict[str, Path], keys, expected, tmp_path: Path):
    loaded = datasets.load_dataset(str(exports["webdataset"]), cache_dir=str(tmp_path))
    got = {name: list(split["__key__"]) for name, split in loaded.items()}
    check_split_keys(got, keys)
    assert list(loaded["train"]["cls"]) == [expected[k] for k in got["train"]]
    assert loaded["train"].features["cls"] == datasets.ClassLabel(names=list(NAMES))
    row = loaded["validation"][0]
    assert row["json"]["key"] == row["__key__"] and row["json"]["label"] == row["cls"]
    assert row["png"].mode == "RGB" and row["png"].size == (128, 128)


def test_numpy_images_open_memory_mapped_in_label_order(exports: dict[str, Path], keys, expected):
    out = exports["numpy"]
    palette = np.load(out / "palette.npy")
    assert palette.dtype == np.uint8 and palette.shape[1] == 3
    colours = [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in palette]
    got = {}
    for name in SPLITS:
        images = np.load(out / name / "images.npy", mmap_mode="r")
        labels = pd.read_parquet(out / name / "labels.parquet")
        assert isinstance(images, np.memmap) and images.dtype == np.uint8
        assert images.shape == (len(labels), 128, 128)
        got[name] = list(labels.key)
        assert list(labels.label) == [expected[k] for k in got[name]]
        for k in (0, len(labels) - 1):  # pixels equal the cached file's (same pixel hash)
            assert chart.encode_palette(np.asarray(images[k]), colours).pixel_hash == labels.pixel_hash[k]
    check_split_keys(got, keys)


@pytest.mark.parametrize("fmt", FORMATS)
def test_card_is_hub_metadata_with_a_snippet_per_client(exports: dict[str, Path], fmt: str):
    card = (exports[fmt] / "README.md").read_text()
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["license"] == "other" and meta["task_categories"] == ["image-classification"]
    info = meta["dataset_info"]
    assert [s["name"] for s in info["splits"]] == list(SPLITS) and all(s["num_examples"] > 10
                                                                       for s in info["splits"])
    label = next(f for f in info["features"] if f["name"] in ("label", "cls"))
    assert label["dtype"]["class_label"]["names"] == {"0": "down", "1": "up"}
    assert [c["split"] for c in meta["configs"][0]["data_files"]] == list(SPLITS)
    clients = {"imagefolder": ("datasets", "torchvision", "pandas"), "parquet": ("datasets", "pandas"),
               "webdataset": ("webdataset", "datasets"), "numpy": ("numpy", "datasets"),
               "manifest": ("datasets", "pandas")}[fmt]
    for client in clients:
        assert f"With `{client}`" in body
    assert "| validation | ETHUSDT | 1h |" in body and "| train | h4 |" in body
    assert f"python image_cache.py export {exports[fmt]} --format {fmt}" in body


def test_stride_samples_windows_on_the_grid(cache: Path, tmp_path: Path, keys):
    result = export_cli(cache, tmp_path / "out", "manifest", "--stride", "3")
    assert result.returncode == 0, result.stderr
    frame = pd.read_parquet(tmp_path / "out" / "manifest")
    assert len(frame) > 10 and ((frame.window_end_open_time_ms // H) % 3 == 0).all()
    every = [k for name in SPLITS for k in keys[name]]
    assert set(frame.key) < set(every) and len(frame) < len(every) / 2


@pytest.mark.parametrize("fmt", FORMATS)
def test_reexport_is_byte_identical(cache: Path, tmp_path: Path, fmt: str):
    # Two working folders, same absolute paths: the recorded command line is the same too.
    toml = CONFIG.replace(', "4h"', "")
    for name in ("market.sqlite", "image_cache.sqlite", "image-cache"):
        toml = toml.replace(f'"{name}"', f'"{cache / name}"')
    digests = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "image_cache.toml").write_text(toml)
        result = export_cli(tmp_path / run, "out", fmt)
        assert result.returncode == 0, result.stderr
        digests.append(tree_digest(tmp_path / run / "out"))
    assert digests[0] == digests[1] and len(digests[0]) > 3


@pytest.mark.parametrize("fmt", FORMATS)
def test_sha256sums_check_passes_and_catches_a_change(exports: dict[str, Path], tmp_path: Path, fmt: str):
    out = exports[fmt]
    listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert listed == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                            and p.name != "SHA256SUMS")
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    with open(copy / listed[-1], "ab") as handle:
        handle.write(b"\0")
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=copy, capture_output=True, text=True)
    assert check.returncode == 1 and f"{listed[-1]}: FAILED" in check.stdout


@pytest.mark.parametrize("extra, message", [
    (("--split", "train:2024-06-26"), "--split 'train:2024-06-26': expected NAME:START..END"),
    (("--label", "median"), "--label 'median': expected sign or bucket:EDGES"),
    (("--horizons", "5,0"), "each horizon must be a distinct integer"),
    (("--min-shards", "0"), "--min-shards must be at least 1, got 0"),
    (("--stride", "0"), "--stride"),
    (("--split", "train:..2024-06-26,val:2024-06-26.."), "as 'validation': name it validation"),
    (("--split", "all:.."), "'all' is reserved by the datasets library"),
    (("--array-file", "dat"), "--array-file dat: one of npy, dat, numpy format only"),
])
def test_bad_arguments_are_usage_errors(cache: Path, tmp_path: Path, extra, message):
    result = run_cli(cache, "export", str(tmp_path / "out"), "--format", "parquet", "--config",
                     "image_cache.toml", *extra)
    assert result.returncode == 2 and result.stderr.startswith("Error: ") and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_failed_export_leaves_nothing(cache: Path, tmp_path: Path):
    broken = tmp_path / "cache"
    shutil.copytree(cache, broken)
    victim = sorted((broken / "image-cache").rglob("*.png"))[100]
    victim.unlink()
    result = export_cli(broken, tmp_path / "out", "webdataset")
    assert result.returncode == 1
    assert f"cannot read {victim}" in result.stderr and "run verify, then repair" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # neither OUT nor its temp folder


def test_numpy_palette_maps_every_image_onto_one_palette():
    from image_cache.cache.exports.npy import Palette
    palette = Palette()
    first = Image.fromarray(np.array([[0, 1], [2, 1]], np.uint8), "P")
    first.putpalette(b"\x00\x00\x00" b"\xff\x00\x00" b"\x00\xff\x00")
    second = Image.fromarray(np.array([[0, 1], [1, 0]], np.uint8), "P")
    second.putpalette(b"\x00\xff\x00" b"\x00\x00\xff")  # one shared colour, one new, in another order
    assert palette.indices(first).tolist() == [[0, 1], [2, 1]]
    assert palette.indices(second).tolist() == [[2, 3], [3, 2]]
    assert palette.array().tolist() == [[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]]


@pytest.mark.parametrize("fmt", FORMATS)
def test_load_dataset_reads_every_format_from_its_card(exports: dict[str, Path], keys, expected, tmp_path: Path,
                                                       fmt: str):
    # The card's configs and features alone: splits, the ClassLabel, and the images decoded as colours.
    loaded = datasets.load_dataset(str(exports[fmt]), cache_dir=str(tmp_path))
    label, image = {"webdataset": ("cls", "png")}.get(fmt, ("label", "image"))
    assert list(loaded) == list(SPLITS)
    got = {}
    for name, split in loaded.items():
        got[name] = ([key_of(p["path"]) for p in split.cast_column(image, datasets.Image(decode=False))[image]]
                     if fmt == "imagefolder" else list(split["__key__" if fmt == "webdataset" else "key"]))
        assert split.features[label] == datasets.ClassLabel(names=list(NAMES))
        assert list(split[label]) == [expected[k] for k in got[name]]
    check_split_keys(got, keys)
    if fmt == "numpy":  # the label tables only: the images are for np.load (the card says so)
        assert image not in loaded["train"].features
        return
    assert loaded["train"].features[image] == datasets.Image(mode="RGB")
    pixels = loaded["test"].with_format("numpy")[0][image]
    assert pixels.shape == (128, 128, 3) and pixels.dtype == np.uint8


@pytest.mark.parametrize("fmt, mode, shape", [("parquet", "rgb", (128, 128, 3)), ("imagefolder", "gray", (128, 128)),
                                              ("webdataset", "palette", (128, 128))])
def test_mode_reaches_with_format_numpy_as_the_png_decoded_in_that_mode(cache: Path, tmp_path: Path, fmt: str,
                                                                         mode: str, shape: tuple):
    out = tmp_path / "out"
    result = export_cli(cache, out, fmt, "--mode", mode)
    assert result.returncode == 0, result.stderr
    loaded = datasets.load_dataset(str(out), cache_dir=str(tmp_path / "hf"))["validation"]
    column = "png" if fmt == "webdataset" else "image"
    row = loaded.cast_column(column, datasets.Image(decode=False))[3][column]
    with Image.open(io.BytesIO(row["bytes"]) if row["bytes"] else row["path"]) as png:
        assert png.mode == "P"  # the cached file itself, unchanged
        want = np.asarray(png.convert({"rgb": "RGB", "gray": "L", "palette": "P"}[mode]))
    got = loaded.with_format("numpy")[3][column]
    assert got.shape == shape and (got == want).all()
    if mode == "palette":
        assert got.max() < 8  # indices, as asked


def test_mode_palette_is_refused_for_gray_presets(cache: Path, tmp_path: Path):
    result = export_cli(cache, tmp_path / "out", "numpy", "--mode", "palette", "--style", "jkx", "--window", "20")
    assert result.returncode == 2 and "--mode palette: jkx images are gray" in result.stderr


def test_numpy_rgb_and_the_headerless_dat_memmap_of_the_jkx_code(cache: Path, exports: dict[str, Path],
                                                                 tmp_path: Path):
    out = tmp_path / "out"
    result = export_cli(cache, out, "numpy", "--mode", "rgb", "--array-file", "dat")
    assert result.returncode == 0, result.stderr
    assert "numpy: " in result.stderr and "MB of arrays" in result.stderr  # the size, said before writing
    palette = np.load(exports["numpy"] / "palette.npy")
    for name in SPLITS:
        sidecar = json.loads((out / name / "images.json").read_text())
        assert sidecar["dtype"] == "uint8" and sidecar["shape"][1:] == [128, 128, 3]
        images = np.memmap(out / name / "images.dat", dtype=np.uint8, mode="r").reshape(-1, 128, 128, 3)
        labels = pd.read_parquet(out / name / "labels.parquet")
        assert len(images) == len(labels) == sidecar["shape"][0]
        indices = np.load(exports["numpy"] / name / "images.npy", mmap_mode="r")
        assert (images == palette[indices]).all()  # equal to the PNGs' colours
    assert not (out / "palette.npy").exists()


def test_sample_month_end_keeps_the_last_window_of_each_month(cache: Path, tmp_path: Path):
    # The sample market ends with June: its last hour is the one month end, for both symbols, and unlabelled.
    result = export_cli(cache, tmp_path / "out", "manifest", "--sample", "month-end", "--split", "train:..")
    assert result.returncode == 1 and "(2 ok rows selected" in result.stderr
    from image_cache.cache.exports.labels import on_sample
    hours = np.arange(utc_ms("2024-01-31T20:00"), utc_ms("2024-03-01T02:00"), H)
    assert [iso_utc(int(t)) for t in hours[on_sample("1h", hours, "month-end")]] == [
        "2024-01-31T23:00:00Z", "2024-02-29T23:00:00Z"]
    days = np.arange(utc_ms("2023-12-01"), utc_ms("2024-03-05"), 24 * H)
    assert [iso_utc(int(t))[:10] for t in days[on_sample("1d", days, "month-end")]] == [
        "2023-12-31", "2024-01-31", "2024-02-29"]
    weeks = np.arange(utc_ms("2024-01-01"), utc_ms("2024-03-01"), 7 * 24 * H)  # Mondays
    assert [iso_utc(int(t))[:10] for t in weeks[on_sample("1w", weeks, "month-end")]] == ["2024-01-29",
                                                                                        "2024-02-26"]
