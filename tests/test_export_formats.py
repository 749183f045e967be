"""Export formats: each loads by its ecosystem's rules, re-exports are byte-identical, SHA256SUMS checks."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

import config
from cache.export import ExportOptions, export, parse_splits
from cache.runner import Filters
from conftest import CONFIG, index_rows, render_cli, run_cli, tree_digest

SPLIT = "train:..2024-06-26,val:2024-06-26..2024-06-28T12:00,test:2024-06-28T12:00.."
ARGS = ("--config", "image_cache.toml", "--start", "2024-06-22", "--split", SPLIT, "--horizons", "2,4")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, sample_market: Path) -> Path:
    """BTCUSDT 1h rendered from 2024-06-22: about 200 images, shared by this module's tests."""
    folder = tmp_path_factory.mktemp("cache")
    shutil.copy(sample_market, folder / "market.sqlite")
    (folder / "image_cache.toml").write_text(CONFIG.replace('"ETHUSDT", ', "").replace(', "4h"', ""))
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
    for fmt, extra in (("imagefolder", ()), ("webdataset", ("--shard-size", "40")), ("parquet", ())):
        result = export_cli(cache, folder / fmt, fmt, *extra)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("exported ") and f"({fmt})" in result.stdout
    return {fmt: folder / fmt for fmt in ("imagefolder", "webdataset", "parquet")}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_imagefolder_follows_the_loader_rules(cache: Path, exports: dict[str, Path]):
    out = exports["imagefolder"]
    card = out / "README.md"
    splits = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert splits == ["test", "train", "val"]
    front = card.read_text().split("---\n")[1]
    for name in splits:
        assert f"  - split: {name}\n    path: \"{name}/**\"\n" in front
        records = [json.loads(line) for line in (out / name / "metadata.jsonl").read_text().splitlines()]
        assert records and [r["key"] for r in records] == sorted(r["key"] for r in records)
        for record in records:
            image = out / name / record["file_name"]
            assert not os.path.isabs(record["file_name"]) and record["split"] == name
            assert sha256(image) == record["sha256"]
            with Image.open(image) as decoded:
                assert decoded.size == (record["width"], record["height"]) == (128, 128)
        folders = {p.parent for p in (out / name).rglob("*.png")}
        assert all(len(os.listdir(f)) <= 10_000 for f in folders)
        for h in ("h2", "h4"):
            ones = sum(r[f"label_{h}"] for r in records)
            assert f"| {name} | {h} | {len(records) - ones} | {ones} |" in card.read_text()
    # Hard links into the cache: the same file, no copy.
    record = json.loads((out / "train" / "metadata.jsonl").read_text().splitlines()[0])
    cached = index_rows(cache / "image_cache.sqlite", f"WHERE sha256 = '{record['sha256']}'")[0][3]
    assert os.path.samefile(out / "train" / record["file_name"], cache / "image-cache" / cached)


def test_imagefolder_splits_folders_past_the_folder_size(cache: Path, tmp_path: Path):
    paths = {key: str(cache / value) for key, value in (("market_db_path", "market.sqlite"),
                                                         ("image_index_db", "image_cache.sqlite"),
                                                         ("image_root_dir", "image-cache"))}
    settings = config.load(str(cache / "image_cache.toml"), {**paths, "start": "2024-06-22"})
    options = ExportOptions(format="imagefolder", horizons=(2, 4), splits=parse_splits(SPLIT), folder_size=25)
    result = export(settings, Filters(), str(tmp_path / "out"), options)
    train = tmp_path / "out" / "train"
    folders = sorted(p for p in train.iterdir() if p.is_dir())
    sizes = [len(os.listdir(f)) for f in folders]
    exported = next(s["exported"] for s in result.splits if s["name"] == "train")
    assert [f.name for f in folders] == [f"{k:06d}" for k in range(len(folders))]
    assert sizes == [25] * (exported // 25) + ([exported % 25] if exported % 25 else [])
    assert "at most 25 files per folder" in (tmp_path / "out" / "README.md").read_text()


def test_webdataset_shards_follow_the_key_rule(exports: dict[str, Path]):
    out = exports["webdataset"]
    shards = sorted(p.name for p in out.glob("*.tar"))
    assert "train-000000.tar" in shards and "val-000000.tar" in shards and "test-000000.tar" in shards
    for shard in shards:
        with tarfile.open(out / shard) as tar:
            members = tar.getmembers()
            names = [m.name for m in members]
            assert all(m.mtime == 0 and m.uid == m.gid == 0 and m.uname == m.gname == "" and m.mode == 0o644
                       for m in members)
            keys = [name.split(".", 1)[0] for name in names[::3]]
            assert len(keys) <= 40 and keys == sorted(keys) and all("." not in key for key in keys)
            assert names == [f"{key}.{ext}" for key in keys for ext in ("cls", "json", "png")]
            for key in keys:
                record = json.loads(tar.extractfile(f"{key}.json").read())
                png = tar.extractfile(f"{key}.png").read()
                assert hashlib.sha256(png).hexdigest() == record["sha256"] and png[:4] == b"\x89PNG"
                assert int(tar.extractfile(f"{key}.cls").read()) == record["label"] == record["label_h2"]
                assert shard.startswith(record["split"] + "-")


def test_parquet_manifest_loads_and_points_at_the_images(cache: Path, exports: dict[str, Path]):
    path = exports["parquet"] / "manifest.parquet"
    frame = pd.read_parquet(path)
    schema = pq.read_schema(path)
    assert schema.names[:4] == ["key", "path", "sha256", "pixel_hash"]
    assert schema.names[-1] == "label_end_open_time_ms" and {"label_h2", "return_h4"} <= set(schema.names)
    assert set(frame.split) == {"train", "val", "test"} and frame.key.is_unique
    for row in frame.itertuples():
        assert sha256(cache / "image-cache" / row.path) == row.sha256
    assert sorted(os.listdir(exports["parquet"])) == ["README.md", "SHA256SUMS", "manifest.parquet"]


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset", "parquet"])
def test_reexport_is_byte_identical(cache: Path, tmp_path: Path, fmt: str):
    # Two working folders, same absolute paths: the recorded command line is the same too.
    toml = CONFIG.replace('"ETHUSDT", ', "").replace(', "4h"', "")
    for name in ("market.sqlite", "image_cache.sqlite", "image-cache"):
        toml = toml.replace(f'"{name}"', f'"{cache / name}"')
    digests = []
    for run in ("first", "second"):
        (tmp_path / run).mkdir()
        (tmp_path / run / "image_cache.toml").write_text(toml)
        result = export_cli(tmp_path / run, "out", fmt, "--shard-size", "40")
        assert result.returncode == 0, result.stderr
        digests.append(tree_digest(tmp_path / run / "out"))
    assert digests[0] == digests[1] and len(digests[0]) > 2


@pytest.mark.parametrize("fmt", ["imagefolder", "webdataset", "parquet"])
def test_sha256sums_check_passes_and_catches_a_change(exports: dict[str, Path], tmp_path: Path, fmt: str):
    out = exports[fmt]
    listed = [line.split("  ", 1)[1] for line in (out / "SHA256SUMS").read_text().splitlines()]
    assert listed == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
                            and p.name != "SHA256SUMS")
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=out, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)  # copies: the hard-linked images in the cache stay untouched
    with open(copy / listed[-1], "ab") as handle:
        handle.write(b"\0")
    check = subprocess.run(["sha256sum", "-c", "--quiet", "SHA256SUMS"], cwd=copy, capture_output=True, text=True)
    assert check.returncode == 1 and f"{listed[-1]}: FAILED" in check.stdout


@pytest.mark.parametrize("extra, code, message", [
    (("--split", "train:2024-06-26"), 2, "--split 'train:2024-06-26': expected NAME:START..END"),
    (("--label", "median"), 2, "--label 'median': expected sign or bucket:EDGES"),
    (("--horizons", "5,0"), 2, "each horizon must be a distinct integer"),
])
def test_bad_arguments_are_usage_errors(cache: Path, tmp_path: Path, extra, code, message):
    result = run_cli(cache, "export", str(tmp_path / "out"), "--format", "parquet", "--config",
                     "image_cache.toml", *extra)
    assert result.returncode == code and result.stderr.startswith("Error: ") and message in result.stderr
    assert not (tmp_path / "out").exists()


def test_non_empty_or_file_out_is_refused(cache: Path, tmp_path: Path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for out in ("busy", "file"):
        result = export_cli(cache, tmp_path / out, "parquet")
        assert result.returncode == 1
        assert result.stderr == f"Error: {tmp_path / out} exists and is not an empty folder: choose a new OUT\n"
    assert os.listdir(tmp_path / "busy") == ["keep.txt"] and (tmp_path / "file").read_text() == "mine"


def test_failed_export_leaves_nothing(cache: Path, tmp_path: Path):
    broken = tmp_path / "cache"
    shutil.copytree(cache, broken)
    victim = sorted((broken / "image-cache").rglob("*.png"))[100]
    victim.unlink()
    result = export_cli(broken, tmp_path / "out", "webdataset")
    assert result.returncode == 1
    assert f"cannot read {victim}" in result.stderr and "run verify, then repair" in result.stderr
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # neither OUT nor its temp folder
