"""One vocabulary for every command (issue 20): the same flag for the same thing, no abbreviations, defaults in
--help, one `Error:` line for a bad flag (nightly too), config discovery and keys named as the flags, a
version in every JSON result, -q, and progress that never breaks a terminal bar. In-process: `main(argv)`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from image_cache import __version__
from image_cache.cli import cache, console, ingest, nightly


def _run(main, argv: list[str], capsys) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def folder(workdir: Path, monkeypatch) -> Path:
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("IMAGE_CACHE_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(workdir / "xdg"))
    return workdir


@pytest.mark.parametrize("main, argv", [
    (cache.main, ["render", "--dry"]),                   # --dry-run
    (cache.main, ["verify", "--inter", "1h"]),            # --intervals
    (ingest.main, ["status", "--fail"]),                  # --failures
    (ingest.main, ["status", "--market"]),                # --market-db
    (nightly.main, ["--dee"]),                            # --deep
])
def test_flags_are_never_abbreviated(folder: Path, capsys, main, argv: list[str]):
    code, out, err = _run(main, argv, capsys)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and err.startswith("Error: ") and "unrecognized arguments" in err, err


def test_nightly_misuse_is_one_error_line(folder: Path, capsys):
    for argv, message in ((["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
                          (["--lock-wait", "nan"], "must be a finite number of seconds"),
                          (["--lock-wait", "-1"], "must be a finite number of seconds"),
                          (["--size", "many"], "--size must be an integer")):
        code, out, err = _run(nightly.main, argv, capsys)
        assert (code, out) == (2, ""), argv
        assert err.count("\n") == 1 and err.startswith("Error: ") and message in err, (argv, err)


def test_help_shows_the_defaults(capsys):
    for main, argv, shown in ((cache.main, ["render", "--help"], ["(default: 150)", "(default: mike)",
                                                                   "(default: market.sqlite)"]),
                              (ingest.main, ["update", "--help"], ["(default: 30.0)", "else market.sqlite)"]),
                              (nightly.main, ["--help"], ["(default: 30.0)", "(default: 1280)"])):
        assert main(argv) == 0
        text = " ".join(capsys.readouterr().out.split())
        for default in shown:
            assert default in text, (argv, default)


def test_the_market_database_is_market_db_everywhere_and_the_old_db_says_so(folder: Path, capsys):
    code, new, err = _run(ingest.main, ["status", "--market-db", "market.sqlite", "--json"], capsys)
    assert code == 0 and err == ""
    code, old, err = _run(ingest.main, ["status", "--db", "market.sqlite", "--json"], capsys)
    assert code == 0 and old == new
    assert err == "note: --db is deprecated and will be removed after 0.9; use --market-db\n"


def test_symbols_and_intervals_narrow_every_command_as_the_old_filters_did(folder: Path, capsys):
    assert cache.main(["render", "--config", "image_cache.toml"]) == 0
    capsys.readouterr()
    code, new, err = _run(cache.main, ["verify", "--symbols", "ETHUSDT", "--intervals", "4h", "--json"], capsys)
    assert code == 0 and err == ""
    code, old, err = _run(cache.main, ["verify", "--symbol", "ETHUSDT", "--interval", "4h", "--json"], capsys)
    assert code == 0
    assert err.splitlines() == ["note: --interval is deprecated and will be removed after 0.9; use --intervals",
                                "note: --symbol is deprecated and will be removed after 0.9; use --symbols"]
    drop = lambda text: {k: v for k, v in json.loads(text).items() if k != "seconds"}  # noqa: E731
    assert drop(new) == drop(old) and 0 < drop(new)["checked"] < drop(_run(cache.main, ["verify", "--json"],
                                                                            capsys)[1])["checked"]
    code, out, err = _run(ingest.main, ["gaps", "--symbol", "BTCUSDT", "--json"], capsys)
    assert code == 0 and "use --symbols" in err


def test_config_is_found_as_documented(folder: Path, capsys, monkeypatch):
    """--config, then $IMAGE_CACHE_CONFIG, then ./image_cache.toml, then $XDG_CONFIG_HOME/image_cache/config.toml."""
    def hours() -> int:  # the 1h windows due from the config's start date
        assert cache.main(["render", "--dry-run", "--json"] + named) == 0
        return int(json.loads(capsys.readouterr().out)["plan"]["BTCUSDT 1h"]["new"])

    def write(path: Path, start: str) -> None:
        path.write_text(text.replace('start = "2024-06-25"', f'start = "{start}"'))

    named: list[str] = []
    text = (folder / "image_cache.toml").read_text()
    here = hours()  # ./image_cache.toml
    (folder / "image_cache.toml").unlink()
    (folder / "xdg" / "image_cache").mkdir(parents=True)
    write(folder / "xdg" / "image_cache" / "config.toml", "2024-06-26")
    assert hours() == here - 24
    write(folder / "elsewhere.toml", "2024-06-27")
    monkeypatch.setenv("IMAGE_CACHE_CONFIG", "elsewhere.toml")
    assert hours() == here - 48
    write(folder / "image_cache.toml", "2024-06-25")  # the environment comes before the working folder
    assert hours() == here - 48
    write(folder / "named.toml", "2024-06-28")
    named = ["--config", "named.toml"]
    assert hours() == here - 72


def test_config_keys_are_the_flags_names_and_old_keys_say_so_once(folder: Path, capsys):
    old = ('[image_cache]\nmarket_db_path = "market.sqlite"\npairs = ["BTCUSDT"]\nintervals = ["4h"]\n'
           'img_size_px = 128\nwindow_len = 30\nstart = "2024-06-25"\n')
    (folder / "old.toml").write_text(old)
    new = old.replace("market_db_path", "market_db").replace("pairs", "symbols").replace(
        "img_size_px", "size").replace("window_len", "window")
    (folder / "new.toml").write_text(new)
    code, by_new, err = _run(cache.main, ["render", "--dry-run", "--json", "--config", "new.toml"], capsys)
    assert code == 0 and err == ""
    code, by_old, err = _run(cache.main, ["render", "--dry-run", "--json", "--config", "old.toml"], capsys)
    assert code == 0 and json.loads(by_old)["plan"] == json.loads(by_new)["plan"] == {
        "BTCUSDT 4h": json.loads(by_new)["plan"]["BTCUSDT 4h"]}
    assert err == ("note: old.toml: the keys market_db_path, pairs, img_size_px, window_len are deprecated and will "
                   "be removed after 0.9; use market_db, symbols, size, window\n")


def test_every_json_result_has_a_version(folder: Path, capsys):
    assert cache.main(["render", "-q"]) == 0
    capsys.readouterr()
    for main, argv in ((cache.main, ["status", "--json"]), (cache.main, ["verify", "--json"]),
                       (cache.main, ["render", "--dry-run", "--json"]), (ingest.main, ["status", "--json"]),
                       (ingest.main, ["gaps", "--json"])):
        code, out, err = _run(main, argv, capsys)
        assert json.loads(out)["version"] == __version__, (argv, err)


def test_quiet_leaves_only_errors(folder: Path, capsys):
    code, out, err = _run(cache.main, ["render", "-q", "--pairs", "BTCUSDT", "--jobs", "64"], capsys)
    assert code == 0 and out and err == ""  # neither the note of the old flag nor that of the capped --jobs
    code, out, err = _run(cache.main, ["render", "-q", "--style", "nope"], capsys)
    assert code == 2 and err.startswith("Error: ")


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere_never_both(monkeypatch, capsys):
    monkeypatch.setattr(console, "LOG_EVERY_S", -1.0)
    monkeypatch.setattr(console, "_quiet", False)
    assert list(console.progress(range(3), total=3, desc="render", unit="img")) == [0, 1, 2]
    assert capsys.readouterr().err.splitlines() == ["render: 1/3 img", "render: 2/3 img", "render: 3/3 img"]
    monkeypatch.setattr("sys.stderr.isatty", lambda: True)
    assert list(console.progress(range(3), total=3, desc="render", unit="img")) == [0, 1, 2]
    assert "render: 1/3 img\n" not in capsys.readouterr().err  # the bar, not log lines


def test_status_is_narrowed_by_symbols_and_intervals_as_the_readme_says(folder: Path, capsys):
    """`status --symbols ETHUSDT --intervals 4h` listed every series (the flags were taken and ignored: review)."""
    assert cache.main(["render", "-q"]) == 0
    capsys.readouterr()
    code, everything, _ = _run(cache.main, ["status", "--json"], capsys)
    code, narrowed, _ = _run(cache.main, ["status", "--json", "--symbols", "ETHUSDT", "--intervals", "4h"], capsys)
    assert code == 0
    every, some = json.loads(everything), json.loads(narrowed)
    assert {(s["symbol"], s["interval"]) for s in some["series"]} == {("ETHUSDT", "4h")}
    assert len(every["series"]) == 4 and 0 < some["bytes_on_disk"] < every["bytes_on_disk"]
    assert some["newest"].startswith("ETHUSDT/4h/")


@pytest.mark.parametrize("argv, message", [
    (["update", "--top", "5", "--intervals", "1h", "--start", "2024-01-01"], "--top needs --quote"),
    (["api", "--top", "5", "--intervals", "1h"], "--top needs --quote"),
    (["api", "--quote", "USDT", "--intervals", "1h", "--symbols", "BTCUSDT"], "--quote goes with --top"),
    (["ccxt", "--exchange", "okx", "--intervals", "1h"], "ccxt needs --symbols or --top"),
])
def test_flags_that_only_go_together_are_usage_errors_before_any_work(tmp_path: Path, capsys, argv, message):
    """They were failures (exit 1), ccxt's only after loading the exchange's markets over the network (review)."""
    code, out, err = _run(ingest.main, [*argv, "--market-db", str(tmp_path / "m.sqlite"),
                                        "--api-url", "http://127.0.0.1:9"], capsys)
    assert (code, out) == (2, "") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "m.sqlite").exists()


def test_the_library_refuses_the_same_combinations_before_any_work(tmp_path: Path):
    """The checks live in the library (one place, also for callers of the API), raise ConfigError before a
    file is opened or a host asked, and the console maps a ConfigError to exit 2 wherever it is raised."""
    from image_cache.core.errors import ConfigError
    from image_cache.ingest.ccxt_source import ccxt_ingest
    from image_cache.ingest.rest import api
    from image_cache.ingest.update import update

    db, nowhere = str(tmp_path / "m.sqlite"), "http://127.0.0.1:9"
    calls = [
        (lambda: api(db, symbols=[], intervals=["1h"], top=5, api_url=nowhere), "--top needs --quote"),
        (lambda: api(db, symbols=["BTCUSDT"], intervals=["1h"], quote="USDT", api_url=nowhere), "goes with --top"),
        (lambda: ccxt_ingest(db, exchange="okx", symbols=[], intervals=["1h"], api_url=nowhere),
         "ccxt needs --symbols or --top N --quote Q"),
        (lambda: update(db, symbols=[], intervals=["1h"], api_url=nowhere), "update needs --symbols or --top"),
    ]
    for call, message in calls:
        with pytest.raises(ConfigError, match=message) as info:
            call()
        assert console.exit_code(info.value) == console.EXIT_USAGE
    assert not (tmp_path / "m.sqlite").exists()


def test_ingest_writes_the_market_the_config_file_names(folder: Path, capsys, monkeypatch):
    """One config file for both halves: `ingest` finds it as the renderer does and takes its market_db (it
    wrote ./market.sqlite whatever the file said, so render then read another market)."""
    (folder / "data").mkdir()
    text = (folder / "image_cache.toml").read_text().replace('market_db = "market.sqlite"',
                                                             'market_db = "data/m.sqlite"')
    (folder / "image_cache.toml").write_text(text)
    sample = ["sample", "--symbols", "BTCUSDT", "--days", "2", "--seed", "7", "--json"]
    code, out, err = _run(ingest.main, sample, capsys)
    assert code == 0, err
    assert (folder / "data" / "m.sqlite").exists()
    code, out, _ = _run(cache.main, ["render", "--dry-run", "--json", "--symbols", "BTCUSDT"], capsys)
    assert code == 0 and json.loads(out)["plan"]["BTCUSDT 1h"]["new"] > 0  # the renderer reads that market
    (folder / "other.toml").write_text('[image_cache]\nmarket_db = "data/other.sqlite"\n')
    monkeypatch.setenv("IMAGE_CACHE_CONFIG", str(folder / "other.toml"))
    assert _run(ingest.main, sample, capsys)[0] == 0 and (folder / "data" / "other.sqlite").exists()
    assert _run(ingest.main, [*sample, "--config", "image_cache.toml", "--market-db", "flag.sqlite"], capsys)[0] == 0
    assert (folder / "flag.sqlite").exists()  # the flag wins
    (folder / "bad.toml").write_text("[image_cache]\nmarket_db = 5\n")
    code, _, err = _run(ingest.main, ["status", "--config", "bad.toml"], capsys)
    assert code == 2 and err.startswith("Error: ") and err.count("\n") == 1, err
