"""Export labels and splits: forward returns from later candles only, purge gaps, no overlap in time."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import CONFIG, render_cli, run_cli
from image_cache.cache.exports.labels import (
    Split,
    assign_splits,
    default_splits,
    forward_returns,
    parse_horizons,
    parse_label,
    parse_splits,
    purge_candles,
)
from image_cache.cache.windows import Series
from image_cache.core.grid import iso_utc, utc_ms
from image_cache.settings import ConfigError

H = 3_600_000
SPLIT = "train:..2024-06-26,validation:2024-06-26..2024-06-28T12:00,test:2024-06-28T12:00.."
HORIZONS = (2, 4)
PURGE = 30 + 0 + 4  # window + mike's history + longest horizon


@pytest.fixture(scope="module")
def cache(tmp_path_factory, sample_market: Path) -> Path:
    """A rendered cache (both symbols, 1h and 4h, windows from 2024-06-22), shared by this module's tests."""
    folder = tmp_path_factory.mktemp("cache")
    shutil.copy(sample_market, folder / "market.sqlite")
    (folder / "image_cache.toml").write_text(CONFIG)
    result = render_cli(folder, "--start", "2024-06-22")
    assert result.returncode == 0, result.stderr
    return folder


def export_parquet(folder: Path, out: Path) -> tuple[dict, pd.DataFrame]:
    result = run_cli(folder, "export", str(out), "--config", "image_cache.toml", "--start", "2024-06-22",
                     "--format", "manifest", "--split", SPLIT, "--horizons", ",".join(map(str, HORIZONS)), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout), pd.read_parquet(out / "manifest")


@pytest.fixture(scope="module")
def exported(cache: Path, tmp_path_factory) -> tuple[dict, pd.DataFrame]:
    return export_parquet(cache, tmp_path_factory.mktemp("export") / "out")


def market_closes(folder: Path) -> dict[tuple[str, str, int], float]:
    with sqlite3.connect(folder / "market.sqlite") as conn:
        rows = conn.execute("SELECT s.symbol, i.code, c.open_time, c.close FROM candles c "
                            "JOIN series se ON se.id = c.series_id JOIN symbols s ON s.id = se.symbol_id "
                            "JOIN intervals i ON i.id = se.interval_id").fetchall()
    return {(symbol, code, t): close for symbol, code, t, close in rows}


def series(times: list[int], closes: list[float]) -> Series:
    ohlcv = np.zeros((len(times), 5))
    ohlcv[:, 3] = closes
    return Series("BTCUSDT", "1h", np.array(times, dtype=np.int64), ohlcv)


def test_forward_returns_skip_gaps_and_unclosed_candles():
    # Slots 0..5 and 7..9 (slot 6 missing); the candle at slot 9 is still open at `now`.
    s = series([k * H for k in (0, 1, 2, 3, 4, 5, 7, 8, 9)], [10, 11, 12, 13, 14, 15, 17, 18, 19])
    returns, valid = forward_returns(s, np.arange(9), (1, 2), now=10 * H - 1)
    assert valid.tolist() == [True, True, True, True, False, False, False, False, False]
    assert returns[0].tolist() == [11 / 10 - 1, 12 / 10 - 1]
    returns, valid = forward_returns(s, np.arange(9), (1, 2), now=10 * H)
    assert valid.tolist() == [True, True, True, True, False, False, True, False, False]
    assert returns[6].tolist() == [18 / 17 - 1, 19 / 17 - 1]


def test_assign_splits_purges_both_sides_of_each_boundary():
    splits = (Split("train", None, 100 * H), Split("val", 100 * H, 200 * H), Split("test", 200 * H, None))
    ends = np.arange(0, 260, dtype=np.int64) * H
    which, purged = assign_splits("1h", ends, ends + 4 * H, splits, purge=10)
    kept = {name: ends[(which == k) & ~purged] // H for k, name in enumerate(("train", "val", "test"))}
    # train keeps windows whose label candle (end + 4) closes by 100; val starts 10 slots after 100.
    assert kept["train"].min() == 0 and kept["train"].max() == 95
    assert kept["val"].min() == 110 and kept["val"].max() == 195
    assert kept["test"].min() == 210 and kept["test"].max() == 259
    assert purged.sum() == 4 + 10 + 4 + 10


def test_parse_splits_sorts_and_rejects_bad_ranges():
    parsed = parse_splits("test:2024-01-01..,train:..2023-01-01")
    assert [(s.name, s.text()) for s in parsed] == [("train", "train:..2023-01-01T00:00:00Z"),
                                                    ("test", "test:2024-01-01T00:00:00Z..")]
    for text, message in (("train:..2023-06-01,holdout:2023-01-01..", "train and holdout overlap"),
                          ("train:..2023-06-01,train:2024-01-01..", "split names must be distinct"),
                          ("Train:..2023-01-01", "split names are lower-case letters"),
                          ("holdout:2023-02-01..2023-01-01", "end is not after start"),
                          ("holdout:2023-13-01..", "invalid date '2023-13-01'")):
        with pytest.raises(ConfigError, match=message):
            parse_splits(text)


@pytest.mark.parametrize("name, message", [
    ("val", "read a split named 'val' as 'validation': name it validation"),
    ("valid", "name it validation"), ("dev", "name it validation"), ("training", "name it train"),
    ("eval", "name it test"), ("testing", "name it test"),
    ("all", "'all' is reserved by the datasets library"),
])
def test_split_names_a_loader_renames_or_reserves_are_refused(name: str, message: str):
    with pytest.raises(ConfigError, match=message):
        parse_splits(f"train:..2023-01-01,{name}:2023-01-01..")


def test_label_rules_and_purge_length():
    rule = parse_label("bucket:-0.01,0.01")
    assert rule.classes(np.array([-0.02, -0.01, 0.0, 0.01, 0.5])).tolist() == [0, 1, 1, 2, 2]
    assert parse_label("sign").classes(np.array([-0.1, 0.0, 1e-12])).tolist() == [0, 0, 1]
    for text, message in (("bucket:0.01,-0.01", "strictly increasing"), ("bucket:0.01,x", "must be numbers"),
                          ("median", "expected sign or bucket")):
        with pytest.raises(ConfigError, match=message):
            parse_label(text)
    assert parse_horizons("20,5") == (20, 5)
    with pytest.raises(ConfigError, match="distinct integer"):
        parse_horizons("5,5")
    assert purge_candles(20, 19, (5, 20)) == 59  # jkx: its moving-average history counts too


def test_no_label_uses_a_candle_at_or_before_the_window_end(cache: Path, exported):
    report, rows = exported
    closes = market_closes(cache)
    assert len(rows) == report["counts"]["exported"] > 100
    for row in rows.itertuples():
        iv = {"1h": H, "4h": 4 * H}[row.interval]
        end_close = closes[(row.symbol, row.interval, row.window_end_open_time_ms)]
        for h in HORIZONS:
            later = closes[(row.symbol, row.interval, row.window_end_open_time_ms + h * iv)]
            assert getattr(row, f"return_h{h}") == later / end_close - 1
            assert getattr(row, f"label_h{h}") == int(later > end_close)
        assert row.label == row.label_h2
        assert row.label_end_open_time_ms == row.window_end_open_time_ms + max(HORIZONS) * iv
        # Every candle from the window end to the label end exists: no label crosses a gap.
        assert all((row.symbol, row.interval, row.window_end_open_time_ms + k * iv) in closes
                   for k in range(max(HORIZONS) + 1))


def test_nothing_in_a_purge_gap_is_exported_and_splits_do_not_overlap(exported):
    report, rows = exported
    bounds = {"train": (None, "2024-06-26"), "validation": ("2024-06-26", "2024-06-28T12:00"),
              "test": ("2024-06-28T12:00", None)}
    iv = rows.interval.map({"1h": H, "4h": 4 * H})
    for name, (start, end) in bounds.items():
        part, part_iv = rows[rows.split == name], iv[rows.split == name]
        assert len(part) > 10, name
        if start:
            assert (part.window_end_open_time_ms >= pd.Timestamp(start, tz="UTC").value // 10**6
                    + PURGE * part_iv).all()
        if end:
            assert (part.label_end_open_time_ms + part_iv <= pd.Timestamp(end, tz="UTC").value // 10**6).all()
    spans = {name: (group.window_start_open_time_ms.min(), (group.label_end_open_time_ms + iv[group.index]).max())
             for name, group in rows.groupby("split")}
    assert spans["train"][1] <= spans["validation"][0] and spans["validation"][1] <= spans["test"][0]
    counts = report["counts"]
    assert counts["purged"] == sum(counts["purged_per_split"].values()) > 0
    assert counts["selected"] == (counts["exported"] + counts["purged"] + counts["unlabeled"]
                                  + counts["outside_splits"] + counts["stale"])


def test_windows_whose_candles_changed_are_left_out(cache: Path, exported, tmp_path: Path):
    folder = tmp_path / "changed"
    shutil.copytree(cache, folder)
    changed = 1719482400000  # 2024-06-27T10:00 UTC
    with sqlite3.connect(folder / "market.sqlite") as conn:
        conn.execute("UPDATE candles SET close = close * 1.01 WHERE open_time = ? AND series_id = "
                     "(SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id JOIN intervals i "
                     "ON i.id = se.interval_id WHERE s.symbol = 'BTCUSDT' AND i.code = '1h')", (changed,))
    report, rows = export_parquet(folder, tmp_path / "out")
    _, before = exported
    assert report["counts"]["stale"] == 30  # the 30 windows of 30 candles that hold the changed candle
    btc, btc_before = (r[(r.symbol == "BTCUSDT") & (r.interval == "1h")] for r in (rows, before))
    drawn_from_changed = (btc.window_start_open_time_ms <= changed) & (btc.window_end_open_time_ms >= changed)
    assert not drawn_from_changed.any()
    assert ((btc_before.window_start_open_time_ms <= changed)
            & (btc_before.window_end_open_time_ms >= changed)).sum() > 0


def test_default_splits_are_70_15_15_of_the_time_range():
    first, last = utc_ms("2024-01-01"), utc_ms("2024-01-11")
    train, val, test = default_splits(first, last)
    assert (train.start_ms, train.end_ms) == (None, utc_ms("2024-01-08"))
    assert (val.start_ms, val.end_ms) == (utc_ms("2024-01-08"), utc_ms("2024-01-09T12:00"))
    assert (test.start_ms, test.end_ms) == (utc_ms("2024-01-09T12:00"), None)


def test_default_splits_are_recorded_in_the_card(cache: Path, tmp_path: Path):
    result = run_cli(cache, "export", str(tmp_path / "out"), "--config", "image_cache.toml", "--start",
                     "2024-06-22", "--format", "manifest", "--horizons", "1", "--json")
    assert result.returncode == 0, result.stderr
    splits = json.loads(result.stdout)["splits"]
    assert [s["name"] for s in splits] == ["train", "validation", "test"]
    assert splits[0]["start"] is None and splits[2]["end"] is None
    assert splits[0]["end"] == splits[1]["start"] < splits[1]["end"] == splits[2]["start"]
    card = (tmp_path / "out" / "README.md").read_text()
    assert "train 70%, validation 15%, test 15%" in card
    assert f"`validation:{iso_utc(splits[1]['start'])}..{iso_utc(splits[1]['end'])}`" in card


def test_class_names_sort_in_class_order():
    # Folder loaders (torchvision, Hugging Face) number classes by sorted folder name.
    assert parse_label("sign").names == ("down", "up")
    assert parse_label("bucket:-0.01,0.01").names == ("0_lt_-0.01", "1_-0.01_to_0.01", "2_ge_0.01")
    names = parse_label("bucket:" + ",".join(str(k / 100) for k in range(10))).names
    assert len(names) == 11 and list(names) == sorted(names) and names[10] == "10_ge_0.09"
    assert names[2] == "02_0.01_to_0.02"
