"""Settings: defaults < TOML < flags; unknown keys and bad values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

import config
from config import ConfigError, Settings


def test_defaults_match_the_product_brief():
    s = config.load()
    assert (s.market_db_path, s.image_index_db, s.image_root_dir) == ("market.sqlite", "image_cache.sqlite",
                                                                       "image-cache")
    assert s.pairs == ("BTCUSDT", "ETHUSDT", "DOGEUSDT", "XLMUSDT", "XRPUSDT", "LTCUSDT", "DOTUSDT",
                       "SHIBUSDT", "BNBUSDT")
    assert s.intervals == ("15m", "30m", "1h", "4h", "12h", "1d", "1w")
    assert (s.img_size_px, s.window_len, s.style_name, s.style_version) == (1280, 150, "mike", 1)
    assert (s.start, s.end, s.stride, s.gap_policy) == ("2019-01-01", None, 1, "skip")
    assert s.start_ms == 1546300800000


def test_file_overrides_defaults_and_flags_override_file(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[image_cache]\nwindow_len = 60\nimg_size_px = 224\npairs = ["ETHUSDT"]\n')
    s = config.load(str(path), {"img_size_px": "512", "style_name": None})
    assert (s.window_len, s.img_size_px, s.pairs, s.style_name) == (60, 512, ("ETHUSDT",), "mike")
    assert config.load(None, {"pairs": "BTCUSDT, XRPUSDT"}).pairs == ("BTCUSDT", "XRPUSDT")


@pytest.mark.parametrize("body, message", [
    ("colour = 1", "unknown key 'colour'"),
    ('window_len = "x"', "window_len must be an integer"),
    ("stride = 0", "stride must be at least 1"),
    ('gap_policy = "fill"', "gap_policy must be one of skip, render"),
    ('intervals = ["2w"]', "intervals: unknown interval code '2w'"),
    ('pairs = ["../x"]', "pairs: invalid symbol '../x'"),
    ('start = "yesterday"', "start: invalid date 'yesterday'"),
])
def test_bad_values_name_the_key(tmp_path: Path, body: str, message: str):
    path = tmp_path / "c.toml"
    path.write_text(f"[image_cache]\n{body}\n")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        config.load(str(path))


def test_file_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found"):
        config.load(str(tmp_path / "none.toml"))
    (tmp_path / "x.toml").write_text("[other]\n")
    with pytest.raises(ConfigError, match=r"no \[image_cache\] table"):
        config.load(str(tmp_path / "x.toml"))
    (tmp_path / "y.toml").write_text("[image_cache\n")
    with pytest.raises(ConfigError, match="invalid TOML"):
        config.load(str(tmp_path / "y.toml"))


def test_flag_errors_name_the_flag_and_ranges_are_checked():
    with pytest.raises(ConfigError, match="--window must be an integer"):
        config.load(None, {"window_len": "ten"})
    with pytest.raises(ConfigError, match="end 2020-01-01 is not after start 2021-01-01"):
        config.load(None, {"start": "2021-01-01", "end": "2020-01-01"})
    with pytest.raises(ConfigError, match="needs --scheduler"):
        config.load(None, {"executor": "dask"})


def test_every_setting_has_one_flag():
    fields = {f for f in Settings.__dataclass_fields__}
    assert {o.field for o in config.OPTIONS} == fields
    assert len({o.flag for o in config.OPTIONS}) == len(config.OPTIONS)
