"""preview: a contact sheet of evenly spread, labelled images, through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from conftest import run_cli
from image_cache.cache.preview import CELL, LINE_PX, MARGIN, TEXT_ROWS, pick


def test_pick_spreads_evenly_and_includes_both_ends():
    assert pick(100, 5) == [0, 25, 50, 74, 99]
    assert pick(3, 16) == [0, 1, 2]
    assert pick(7, 1) == [0]


def test_preview_writes_a_grid_of_labelled_thumbnails(rendered: Path):
    result = run_cli(rendered, "preview", "sheet.png", "--config", "image_cache.toml", "--symbols", "BTCUSDT",
                     "--intervals", "1h", "--n", "5", "--horizons", "1,3", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    keys = report["keys"]
    assert len(keys) == 5 and keys == sorted(keys) and all(k.startswith("BTCUSDT_1h_2024") for k in keys)
    # Every window has a label up to 3 candles before the newest closed one: the last key is that window.
    assert keys[-1] == "BTCUSDT_1h_20240630T200000" and report["available"] > 5
    with Image.open(rendered / "sheet.png") as sheet:
        cell_w, cell_h = CELL + 2 * MARGIN, CELL + 2 * MARGIN + TEXT_ROWS * LINE_PX
        assert sheet.size == (3 * cell_w, 2 * cell_h)
        assert sheet.getpixel((MARGIN + 2, MARGIN + 2)) != (255, 255, 255)  # a thumbnail, not background
        assert sheet.getpixel((2 * cell_w + MARGIN + 2, cell_h + MARGIN + 2)) == (255, 255, 255)  # sixth cell: empty
    assert not [p for p in rendered.iterdir() if p.name.endswith(".tmp")]


def test_preview_without_images_is_an_error(workdir: Path):
    result = run_cli(workdir, "preview", "sheet.png", "--config", "image_cache.toml")
    assert result.returncode == 1
    assert result.stderr == "Error: image index not found: image_cache.sqlite (run render first)\n"
    assert not (workdir / "sheet.png").exists()


def test_preview_rejects_a_bad_count(rendered: Path):
    result = run_cli(rendered, "preview", "sheet.png", "--config", "image_cache.toml", "--n", "0")
    assert result.returncode == 2 and result.stderr == "Error: --n must be at least 1, got 0\n"
