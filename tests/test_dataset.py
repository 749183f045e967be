"""The in-memory training dataset: export's keys, labels and splits, and the cached files' pixels."""

from __future__ import annotations

import collections.abc
import pickle
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import CONFIG, render_cli, run_cli
from image_cache import chart
from image_cache import settings as config
from image_cache.cache.dataset import ChartDataset, ChartStream
from image_cache.cache.exports.labels import parse_splits
from image_cache.chart.png import encode_gray

SPLIT = "train:..2024-06-26,validation:2024-06-26..2024-06-28T12:00,test:2024-06-28T12:00.."


@pytest.fixture(scope="module", params=["mike", "jkx"])
def cache(request, tmp_path_factory, sample_market: Path) -> tuple[Path, pd.DataFrame]:
    """Both symbols at 1h, rendered and exported (manifest) with one preset."""
    folder = tmp_path_factory.mktemp(request.param)
    shutil.copy(sample_market, folder / "market.sqlite")
    toml = CONFIG.replace(', "4h"', "")
    if request.param == "jkx":  # grayscale, with moving-average history before each window
        toml = toml.replace("window = 30", "window = 20") + 'style = "jkx"\n'
    (folder / "image_cache.toml").write_text(toml)
    result = render_cli(folder, "--start", "2024-06-22")
    assert result.returncode == 0, result.stderr
    result = run_cli(folder, "export", "out", "--format", "manifest", "--config", "image_cache.toml", "--start",
                     "2024-06-22", "--split", SPLIT, "--horizons", "2,4")
    assert result.returncode == 0, result.stderr
    return folder, pd.read_parquet(folder / "out" / "manifest")


def settings_of(folder: Path) -> config.Settings:
    paths = {key: str(folder / value) for key, value in (("market_db_path", "market.sqlite"),
                                                         ("image_index_db", "image_cache.sqlite"),
                                                         ("image_root_dir", "image-cache"))}
    return config.load(str(folder / "image_cache.toml"), {**paths, "start": "2024-06-22"})


def pixel_hash(ds: ChartDataset, pixels: np.ndarray) -> str:
    if ds.palette is not None:
        return chart.encode_palette(pixels, ds.palette).pixel_hash
    return encode_gray(pixels).pixel_hash


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_same_keys_labels_and_pixels_as_the_export(cache, split: str):
    folder, manifest = cache
    ds = ChartDataset(settings_of(folder), split, horizons=(2, 4), splits=parse_splits(SPLIT))
    part = manifest[manifest.split == split].sort_values("key")
    assert len(ds) == len(part) > 10
    assert ds.keys == list(part.key) and ds.labels.tolist() == list(part.label)
    for k in range(len(ds)):
        pixels, label, key = ds[k]
        assert pixels.dtype == np.uint8 and pixels.shape == (part.height.iloc[k], part.width.iloc[k])
        assert (label, key) == (part.label.iloc[k], part.key.iloc[k])
        assert pixel_hash(ds, pixels) == part.pixel_hash.iloc[k]


def test_default_splits_match_the_export(cache, tmp_path: Path):
    folder, _ = cache
    result = run_cli(folder, "export", str(tmp_path / "out"), "--format", "manifest", "--config",
                     "image_cache.toml", "--start", "2024-06-22", "--horizons", "2")
    assert result.returncode == 0, result.stderr
    exported = pd.read_parquet(tmp_path / "out" / "manifest")
    for split in ("train", "validation", "test"):
        ds = ChartDataset(settings_of(folder), split, horizons=(2,))
        assert ds.keys == sorted(exported.key[exported.split == split])


def test_stream_shards_deterministically_across_workers(cache):
    folder, _ = cache
    ds = ChartDataset(settings_of(folder), "validation", horizons=(2, 4), splits=parse_splits(SPLIT))
    stream = ds.stream(seed=3)
    parts = [[key for _, _, key in stream.shard(w, 3)] for w in range(3)]
    assert all(parts) and sorted(k for p in parts for k in p) == ds.keys
    assert parts == [[key for _, _, key in ds.stream(seed=3).shard(w, 3)] for w in range(3)]
    assert [key for _, _, key in ds.stream()] == ds.keys  # no seed, no loader: every window in key order
    assert [key for _, _, key in pickle.loads(pickle.dumps(stream))] == [k for p in [stream.order()]
                                                                         for k in np.array(ds.keys)[p]]


def stand_in_torch(monkeypatch: pytest.MonkeyPatch, worker: types.SimpleNamespace) -> types.ModuleType:
    """torch is not installed here (too large): a stand-in `torch.utils.data` with torch's two names the
    stream uses, IterableDataset (an ABC, as torch's is) and get_worker_info."""
    data = types.ModuleType("torch.utils.data")
    data.IterableDataset = type("IterableDataset", (collections.abc.Iterable,), {"__iter__": lambda self: iter(())})
    data.get_worker_info = lambda: worker
    monkeypatch.setitem(sys.modules, "torch.utils.data", data)
    return data


@pytest.mark.parametrize("torch_first", [True, False])
def test_stream_follows_the_loader_worker_it_runs_in(cache, monkeypatch: pytest.MonkeyPatch, torch_first: bool):
    # The stream must be an IterableDataset to DataLoader (else it takes it as map-style: "object of type
    # 'ChartStream' has no len()"), also when torch is imported after it, and read its worker.
    folder, _ = cache
    ds = ChartDataset(settings_of(folder), "test", horizons=(2, 4), splits=parse_splits(SPLIT))
    worker = types.SimpleNamespace(id=1, num_workers=2)
    if torch_first:
        data = stand_in_torch(monkeypatch, worker)
        stream = ds.stream()
    else:
        stream = ds.stream()
        data = stand_in_torch(monkeypatch, worker)
    assert isinstance(stream, data.IterableDataset) and isinstance(stream, ChartStream)
    assert [key for _, _, key in stream] == ds.keys[1::2]
    assert isinstance(pickle.loads(pickle.dumps(stream)), data.IterableDataset)


def test_set_epoch_gives_each_epoch_a_new_order_the_same_in_every_worker(cache, monkeypatch: pytest.MonkeyPatch):
    folder, _ = cache
    ds = ChartDataset(settings_of(folder), "validation", horizons=(2, 4), splits=parse_splits(SPLIT))
    worker = types.SimpleNamespace(id=0, num_workers=2)
    stand_in_torch(monkeypatch, worker)
    stream = ds.stream(seed=7)
    orders = []
    for epoch in (0, 1):
        stream.set_epoch(epoch)  # in the main process, before the loader copies the stream into its workers
        parts = []
        for w in (0, 1):
            worker.id = w
            parts.append([key for _, _, key in pickle.loads(pickle.dumps(stream))])
        assert sorted(parts[0] + parts[1]) == ds.keys  # every key exactly once across the 2 workers
        # strict=False: with an odd number of keys one worker has one more; both orders drop it alike
        orders.append([k for pair in zip(parts[0], parts[1], strict=False) for k in pair])
    assert orders[0] != orders[1]
    # Persistent workers keep their copy: each iteration is the next epoch, as set_epoch would have it.
    copies = [pickle.loads(pickle.dumps(ds.stream(seed=7))) for _ in (0, 1)]
    for epoch in (0, 1):
        parts = []
        for w, copy in enumerate(copies):
            worker.id = w
            parts.append([key for _, _, key in copy])
        assert [k for pair in zip(*parts, strict=False) for k in pair] == orders[epoch]


def test_items_carry_every_horizon_and_the_palette_is_known_at_once(cache):
    folder, manifest = cache
    part = manifest[manifest.split == "test"].sort_values("key")
    ds = ChartDataset(settings_of(folder), "test", horizons=(2, 4), splits=parse_splits(SPLIT), targets="all")
    assert (ds.palette is not None) == (ds.spec.engine == "raster")  # before any drawing
    _, target, key = ds[0]
    assert key == part.key.iloc[0] and target == {name: part[name].iloc[0] for name in
                                                  ("label_h2", "return_h2", "label_h4", "return_h4")}
    assert (ds.returns[:, 1] == part.return_h4.to_numpy()).all()
    ds = ChartDataset(settings_of(folder), "test", horizons=(2, 4), splits=parse_splits(SPLIT),
                      targets=("return_h4",))
    assert ds[0][1] == {"return_h4": part.return_h4.iloc[0]}
    with pytest.raises(Exception, match="targets: unknown 'label_h5'"):
        ChartDataset(settings_of(folder), "test", horizons=(2, 4), splits=parse_splits(SPLIT), targets=("label_h5",))


@pytest.mark.parametrize("mode", ["rgb", "gray"])
def test_mode_gives_the_png_converted_by_pillow(cache, mode: str):
    folder, manifest = cache
    part = manifest[manifest.split == "validation"].sort_values("key")
    ds = ChartDataset(settings_of(folder), "validation", horizons=(2, 4), splits=parse_splits(SPLIT), mode=mode)
    assert ds.palette is None
    for k in (0, len(ds) - 1):
        pixels, _, _ = ds[k]
        with Image.open(folder / "image-cache" / part.path.iloc[k]) as png:
            assert (pixels == np.asarray(png.convert({"rgb": "RGB", "gray": "L"}[mode]))).all()


def test_unknown_split_is_an_error(cache):
    folder, _ = cache
    with pytest.raises(Exception, match="no split 'holdout': the splits are train, validation, test"):
        ChartDataset(settings_of(folder), "holdout", horizons=(2,))
    with pytest.raises(Exception, match="a split named 'val' as 'validation': name it validation"):
        ChartDataset(settings_of(folder), "val", horizons=(2,))
