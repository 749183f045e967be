"""Settings: defaults < TOML < flags; unknown keys and bad values name the key."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import render_cli
from image_cache import settings as config
from image_cache.settings import ConfigError, Settings


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
    path.write_text('[image_cache]\nwindow = 60\nsize = 224\nsymbols = ["ETHUSDT"]\n')
    s = config.load(str(path), {"img_size_px": "512", "style_name": None})
    assert (s.window_len, s.img_size_px, s.pairs, s.style_name) == (60, 512, ("ETHUSDT",), "mike")
    assert config.load(None, {"pairs": "BTCUSDT, XRPUSDT"}).pairs == ("BTCUSDT", "XRPUSDT")


@pytest.mark.parametrize("body, message", [
    ("colour = 1", "unknown key 'colour'"),
    ('window = "x"', "window must be an integer"),
    ("stride = 0", "stride must be at least 1"),
    ('gap_policy = "fill"', "gap_policy must be one of skip, render"),
    ('intervals = ["2w"]', "intervals: unknown interval code '2w'"),
    ('symbols = ["../x"]', "symbols: invalid symbol '../x'"),
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


def test_flag_errors_name_the_flag_and_ranges_are_checked(monkeypatch):
    with pytest.raises(ConfigError, match="--window must be an integer"):
        config.load(None, {"window_len": "ten"})
    with pytest.raises(ConfigError, match="end 2020-01-01 is not after start 2021-01-01"):
        config.load(None, {"start": "2021-01-01", "end": "2020-01-01"})
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match="needs --scheduler"):
        config.load(None, {"executor": "dask"})


def test_dask_scheduler_address_from_the_environment(monkeypatch):
    """Dask's own convention: without --scheduler, DASK_SCHEDULER_ADDRESS names the scheduler."""
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(ConfigError, match=r"needs --scheduler ADDRESS \(or DASK_SCHEDULER_ADDRESS in the environ"):
        config.load(None, {"executor": "dask"})
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
    assert config.load(None, {"executor": "dask"}).scheduler == "tcp://10.0.0.1:8786"
    assert config.load(None, {"executor": "dask", "scheduler": "tcp://h:1"}).scheduler == "tcp://h:1"  # the flag wins
    assert config.load(None, {}).scheduler is None  # a local run does not read it


def test_dask_scheduler_address_from_dasks_config(monkeypatch):
    """`scheduler-address` in Dask's config (its YAML files; test_dask_cluster uses a real one) names the
    scheduler when neither the flag nor the environment does."""
    dask_config = pytest.importorskip("dask.config")
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with dask_config.set({"scheduler-address": "tcp://10.0.0.2:8786"}):
        assert config.load(None, {"executor": "dask"}).scheduler == "tcp://10.0.0.2:8786"
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", "tcp://10.0.0.1:8786")
        assert config.load(None, {"executor": "dask"}).scheduler == "tcp://10.0.0.1:8786"


@pytest.mark.parametrize("root", ["s3://bucket/x", "gs://bucket/images", "az://container/d", "file:///tmp/x"])
def test_an_image_root_that_is_a_url_is_a_usage_error(tmp_path: Path, monkeypatch, capsys, root: str):
    """`--image-root s3://bucket/x` once created a local folder named `s3:`."""
    from image_cache.cli import cache as cli
    monkeypatch.chdir(tmp_path)
    assert cli.main(["render", "--image-root", root]) == 2
    err = capsys.readouterr().err
    scheme = root.split(":")[0]
    assert err == (f"Error: --image-root {root!r} is a URL: {scheme}:// is not supported; the image root, the index "
                   "and the market must be on a local or mounted file system (mount the bucket, e.g. with s3fs or "
                   "gcsfuse, and give that folder)\n")
    assert os.listdir(tmp_path) == []
    with pytest.raises(ConfigError, match="image_root_dir 's3://b' is a URL"):
        Settings(image_root_dir="s3://b")  # the API too
    with pytest.raises(ConfigError, match="--index-db 'gs://b/i.sqlite' is a URL"):
        config.load(None, {"image_index_db": "gs://b/i.sqlite"})


def test_every_setting_has_one_flag():
    fields = {f for f in Settings.__dataclass_fields__}
    assert {o.field for o in config.OPTIONS} == fields
    assert len({o.flag for o in config.OPTIONS}) == len(config.OPTIONS)


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "blob.toml").write_bytes(bytes(range(256))) and d / "blob.toml", "not a TOML file: byte 128"),
    (lambda d: d, "is not a regular file"),
    (lambda d: (d / "big.toml").write_bytes(b"#" * (config.MAX_CONFIG_BYTES + 1)) and d / "big.toml",
     "not a config file"),
])
def test_a_config_that_is_not_a_toml_file_is_a_config_error(tmp_path: Path, make, message: str):
    with pytest.raises(ConfigError, match=message):
        config.load(str(make(tmp_path)))


@pytest.mark.parametrize("flags, message", [
    ({"style_name": "nope"}, "unknown style 'nope'"),
    ({"img_size_px": "1"}, "image size 1 px is too small"),
    ({"window_len": "100000"}, "window length must be an integer in 1..5461"),
    ({"img_size_px": "256", "window_len": "150"}, "too small for a 150-candle window"),
    ({"jobs": "-1"}, "--jobs must be at least 0, got -1"),
    ({"market_db_path": "a\0b"}, "--market-db must not contain a NUL character"),
])
def test_settings_that_make_no_chart_or_run_are_config_errors(flags: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        config.load(None, flags)


def test_jobs_zero_means_one_worker_per_core():
    assert config.load(None, {"jobs": "0"}).workers == config.cores_present()
    assert config.cores_present() == len(os.sched_getaffinity(0))


def test_jobs_is_capped_at_the_cores_present_unless_allowed(tmp_path: Path):
    cores = config.cores_present()
    capped = config.load(None, {"jobs": str(cores + 46)})
    assert capped.workers == cores
    assert capped.jobs_note() == (f"--jobs {cores + 46}: {cores} worker processes, one per core present "
                                  "(--jobs-over-cores allows more)")
    assert config.load(None, {"jobs": str(cores)}).jobs_note() is None
    assert config.load(None, {"jobs": str(cores + 46), "jobs_over_cores": True}).workers == cores + 46
    toml = tmp_path / "c.toml"
    toml.write_text(f"[image_cache]\njobs = {cores + 1}\njobs_over_cores = true\n")
    assert config.load(str(toml)).workers == cores + 1
    toml.write_text("[image_cache]\njobs_over_cores = 1\n")
    with pytest.raises(ConfigError, match="jobs_over_cores must be true or false, got 1"):
        config.load(str(toml))


def test_symbol_and_interval_filters_are_checked_like_settings():
    config.check_filters(["BTCUSDT"], ["1h"])
    with pytest.raises(ConfigError, match="--symbol: invalid symbol 'btcusdt'"):
        config.check_filters(["btcusdt"], None)
    with pytest.raises(ConfigError, match="--interval: unknown interval code '2d'"):
        config.check_filters(None, ["1h", "2d"])


def test_render_says_when_jobs_is_capped(workdir: Path):
    cores = config.cores_present()
    result = render_cli(workdir, "--jobs", str(cores + 46))
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"--jobs {cores + 46}: {cores} worker processes, one per core present "
                                          "(--jobs-over-cores allows more)"]


def test_the_api_takes_the_flags_names_and_refuses_unknown_ones():
    """`load(flags=...)` names options as the command line and the config file do; a misspelt name used to be
    dropped without a word (a render of every default symbol)."""
    settings = config.load(None, {"symbols": ["ETHUSDT"], "market_db": "m.sqlite", "size": 256, "window": 20})
    assert (settings.pairs, settings.market_db_path, settings.img_size_px, settings.window_len) == (
        ("ETHUSDT",), "m.sqlite", 256, 20)
    assert config.load(None, {"pairs": ["ETHUSDT"]}).pairs == ("ETHUSDT",)  # the field names still work
    with pytest.raises(ConfigError, match=r"unknown option 'symbol' \(known: market_db, index_db, "):
        config.load(None, {"symbol": ["ETHUSDT"]})
