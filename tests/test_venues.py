"""Series identity is exchange + market + symbol + interval: venues never share a series, an image or an export."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from binance_fixtures import kline_csv, write_archive
from fake_binance import FakeBinance
from image_cache.cli.ingest import main as ingest_main
from image_cache.cli.main import main as image_cache_main
from image_cache.cli.nightly import main as nightly_main
from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, iso_utc, now_ms
from image_cache.ingest.rest import api
from image_cache.ingest.sample import build_sample
from image_cache.ingest.schema import connect_writer, series_id
from image_cache.ingest.status import status
from image_cache.ingest.venues import (
    BINANCE_SPOT,
    SAMPLE,
    Venue,
    series_name,
    venue_of_name,
)


@pytest.fixture
def fake(tmp_path):
    server = FakeBinance(tmp_path / "vision")
    yield server
    server.close()


def venues(db: Path) -> dict[str, tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return {f"{s} {i}": (e, m) for s, i, e, m in conn.execute(
            """SELECT s.symbol, i.code, v.exchange, v.market FROM series_venues v JOIN series se ON se.id = v.series_id
               JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id""")}


def closes(db: Path, symbol: str, interval: str = "1h") -> list[float]:
    with sqlite3.connect(db) as conn:
        return [row[0] for row in conn.execute(
            """SELECT c.close FROM candles c JOIN series se ON se.id = c.series_id JOIN symbols s ON s.id = se.symbol_id
               JOIN intervals i ON i.id = se.interval_id WHERE s.symbol = ? AND i.code = ? ORDER BY c.open_time""",
            (symbol, interval))]


def test_names_carry_the_venue_and_stay_path_safe():
    assert series_name("BTCUSDT", BINANCE_SPOT) == "BTCUSDT"
    assert series_name("BTCUSDT", Venue("binance", "um")) == "BTCUSDT-BINANCE-UM"
    assert series_name("BTCUSD_PERP", Venue("binance", "cm")) == "BTCUSD_PERP-BINANCE-CM"
    assert series_name("BTCUSDT", SAMPLE) == "BTCUSDT"
    for name in ("BTCUSDT-BINANCE-UM", "BTCUSDT-OKX-SWAP", "BTCUSDT"):
        assert series_name(name.split("-")[0], venue_of_name(name)) == name
    with pytest.raises(MarketError, match="does not match"):
        series_name("A" * 30, Venue("binanceusdm", "future"))


def test_spot_and_futures_of_one_symbol_are_two_series_and_two_image_folders(tmp_path, fake, capsys):
    """`update --market um` once wrote futures rows into the spot series; now each market has its own."""
    now = now_ms()
    day = first = now - now % DAY_MS - 2 * DAY_MS
    fake.add_series("spot", "BTCUSDT", "1h", first, 72)
    um_rows = fake.add_series("um", "BTCUSDT", "1h", first, 72)
    for row in um_rows:  # futures trade at a premium: a mixed series would show it
        row[1:5] = [f"{float(v) * 1.01:.8f}" for v in row[1:5]]
    # The first futures day is published as an archive in the USDⓈ-M layout, the rest comes over REST.
    um_day = [[str(v) for v in row] for row in um_rows[:24]]
    iso_day = iso_utc(day)[:10]
    write_archive(tmp_path / "vision" / "data" / "futures" / "um" / "daily" / "klines" / "BTCUSDT" / "1h",
                  f"BTCUSDT-1h-{iso_day}.zip", kline_csv(um_day))
    db = tmp_path / "market.sqlite"
    common = ["--market-db", str(db), "--symbols", "BTCUSDT", "--intervals", "1h", "--start", iso_day,
              "--api-url", fake.url, "--base-url", fake.url + "/", "--mirror", str(tmp_path / "mirror")]
    assert ingest_main(["update", *common]) == 0
    assert ingest_main(["update", *common, "--market", "um"]) == 0
    capsys.readouterr()

    assert venues(db) == {"BTCUSDT 1h": ("binance", "spot"), "BTCUSDT-BINANCE-UM 1h": ("binance", "um")}
    spot, um = closes(db, "BTCUSDT"), closes(db, "BTCUSDT-BINANCE-UM")
    assert len(spot) == len(um) >= 48 and all(u > s for s, u in zip(spot, um, strict=True))
    with sqlite3.connect(db) as conn:
        archived = conn.execute("SELECT symbol, source FROM ingested_files WHERE source = 'binance-vision'").fetchall()
    assert archived == [("BTCUSDT-BINANCE-UM", "binance-vision")]

    root = tmp_path / "image-cache"
    assert image_cache_main(["render", "--market-db", str(db), "--index-db", str(tmp_path / "index.sqlite"),
                             "--image-root", str(root), "--symbols", "BTCUSDT,BTCUSDT-BINANCE-UM", "--intervals", "1h",
                             "--start", iso_day, "--style", "jkx", "--window", "5", "--jobs", "1"]) == 0
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["BTCUSDT", "BTCUSDT-BINANCE-UM"]
    assert any((root / "BTCUSDT-BINANCE-UM" / "1h").rglob("BTCUSDT-BINANCE-UM_1h_*.png"))
    assert image_cache_main(["status", "--market-db", str(db), "--index-db", str(tmp_path / "index.sqlite"),
                             "--image-root", str(root)]) == 0
    assert "BTCUSDT-BINANCE-UM" in capsys.readouterr().out


def test_rows_of_another_venue_are_refused(tmp_path):
    db = str(tmp_path / "market.sqlite")
    conn = connect_writer(db)
    try:
        conn.execute("BEGIN")
        series_id(conn, "BTCUSDT", "1h", BINANCE_SPOT)
        with pytest.raises(MarketError, match="BTCUSDT: its series hold binance spot candles; refusing okx spot rows"):
            series_id(conn, "BTCUSDT", "1d", Venue("okx", "spot"))
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def test_sample_data_never_meets_real_data(tmp_path, fake, capsys):
    real = tmp_path / "real.sqlite"
    fake.add_series("spot", "BTCUSDT", "1h", 1_704_067_200_000, 24)
    api(str(real), symbols=["BTCUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url,
        now=1_704_067_200_000 + DAY_MS)
    before = real.read_bytes()
    assert ingest_main(["sample", "--market-db", str(real), "--symbols", "BTCUSDT", "--days", "2"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [(f"Error: {real} holds real series (1 symbols: BTCUSDT (binance spot)); the sample market is "
                    "synthetic and goes into a database of its own: give another --market-db")]
    assert real.read_bytes() == before

    synthetic = tmp_path / "sample.sqlite"
    assert ingest_main(["sample", "--market-db", str(synthetic), "--symbols", "BTCUSDT", "--days", "2"]) == 0
    assert "recorded as venue sample" in capsys.readouterr().out
    assert set(venues(synthetic).values()) == {("sample", "synthetic")}
    # Real rows into the synthetic series are refused the same way.
    result = api(str(synthetic), symbols=["BTCUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url,
                 now=1_704_067_200_000 + DAY_MS)
    assert not result.ok and "refusing binance spot rows" in result.files[0].reason
    # And real rows of a symbol the sample does not have: refused too, the database stays synthetic only
    # (they went in beside the synthetic series: found by review).
    fake.add_series("spot", "XRPUSDT", "1h", 1_704_067_200_000, 24)
    result = api(str(synthetic), symbols=["XRPUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url,
                 now=1_704_067_200_000 + DAY_MS)
    assert not result.ok and "holds sample (synthetic) series" in result.files[0].reason
    assert set(venues(synthetic).values()) == {("sample", "synthetic")}


def test_a_market_written_before_venues_migrates_in_place(tmp_path, fake):
    """Series written before this change are Binance spot; those only `ingest sample` wrote are sample data."""
    fake.add_series("spot", "ETHUSDT", "1h", 1_704_067_200_000, 24)
    real, synthetic = tmp_path / "real.sqlite", tmp_path / "sample.sqlite"
    api(str(real), symbols=["ETHUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url,
        now=1_704_067_200_000 + DAY_MS)
    build_sample(str(synthetic), symbols=["BTCUSDT"], days=2)
    for db in (real, synthetic):
        with sqlite3.connect(db) as conn:  # as the previous schema (2) left it
            conn.executescript("DROP TABLE series_venues; PRAGMA user_version = 2;")
        connect_writer(str(db)).close()
    assert venues(real) == {"ETHUSDT 1h": ("binance", "spot")}
    assert set(venues(synthetic).values()) == {("sample", "synthetic")} and "BTCUSDT 1h" in venues(synthetic)
    with sqlite3.connect(real) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3


def test_futures_series_of_a_market_written_before_venues_keep_their_market(tmp_path, fake):
    """Before venues, `--market um` wrote futures rows into the plain series; the registry's paths say so
    (the /fapi/ endpoint, or a mirror's futures/um layout): migrated as USDⓈ-M, and spot rows are refused
    from them, never appended (found by review: they were labelled spot and mixed)."""
    first = 1_704_067_200_000
    fake.add_series("spot", "ETHUSDT", "1h", first, 48)
    db = tmp_path / "old.sqlite"
    api(str(db), symbols=["ETHUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url, now=first + DAY_MS)
    with sqlite3.connect(db) as conn:  # as the old code recorded a futures fetch into the plain series
        conn.execute("UPDATE ingested_files SET path = replace(path, '/api/v3/klines', '/fapi/v1/klines')")
        assert conn.execute("SELECT count(*) FROM ingested_files WHERE path LIKE '%/fapi/%'").fetchone()[0] == 1
        conn.executescript("DROP TABLE series_venues; PRAGMA user_version = 2;")
    connect_writer(str(db)).close()
    assert venues(db) == {"ETHUSDT 1h": ("binance", "um")}
    before = venues(db)
    result = api(str(db), symbols=["ETHUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url,
                 now=first + 2 * DAY_MS)
    assert not result.ok and "refusing binance spot rows" in result.text()
    assert venues(db) == before


def test_status_summary_tells_each_venue_series_span_size_and_freshness(tmp_path, fake, capsys):
    first = 1_704_067_200_000  # 2024-01-01
    fake.add_series("spot", "BTCUSDT", "1h", first, 48)
    fake.add_series("um", "BTCUSDT", "1h", first, 48)
    db = tmp_path / "market.sqlite"
    api(str(db), symbols=["BTCUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url, now=first + DAY_MS)
    api(str(db), symbols=["BTCUSDT"], intervals=["1h"], market="um", start="2024-01-01", api_url=fake.url,
        now=first + 2 * DAY_MS)
    result = status(str(db), summary=True, now=first + 2 * DAY_MS)
    rows = [(s.venue, s.symbol, s.candles, s.behind) for s in result.series]
    # Spot stopped a day ago: 24 closed candles since; the futures series is up to date.
    assert rows == [("binance spot", "BTCUSDT", 24, 24), ("binance um", "BTCUSDT-BINANCE-UM", 48, 0)]
    assert all(s.bytes and s.bytes > 24 * 40 for s in result.series)
    assert ingest_main(["status", "--market-db", str(db), "--summary"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == "  binance spot:" and out[3] == "  binance um:"
    assert out[2].startswith("    BTCUSDT 1h: 2024-01-01T00:00:00Z .. 2024-01-01T23:00:00Z, 24 rows, 0 gaps, ")
    assert out[2].endswith("candles behind the last closed one")


def test_nightly_on_futures_renders_the_futures_series(tmp_path, fake, capsys):
    """nightly --market um once updated futures into the spot series and rendered that."""
    now = now_ms()
    first = now - now % DAY_MS - 2 * DAY_MS
    fake.add_series("um", "BTCUSDT", "1h", first, (now - first) // 3_600_000 + 1)
    (tmp_path / "image_cache.toml").write_text(
        f'[image_cache]\nmarket_db = "{tmp_path}/market.sqlite"\nindex_db = "{tmp_path}/index.sqlite"\n'
        f'image_root = "{tmp_path}/image-cache"\nsymbols = ["BTCUSDT"]\nintervals = ["1h"]\nsize = 64\n'
        f'window = 10\nstart = "{iso_utc(first)[:10]}"\njobs = 1\n')
    assert nightly_main(["--config", str(tmp_path / "image_cache.toml"), "--market", "um", "--api-url", fake.url,
                         "--base-url", (tmp_path / "none").as_uri() + "/", "--mirror", str(tmp_path / "mirror")]) == 0
    capsys.readouterr()
    assert [p.name for p in (tmp_path / "image-cache").iterdir() if p.is_dir()] == ["BTCUSDT-BINANCE-UM"]


def test_an_archive_reached_through_a_link_keeps_the_market_of_its_layout(tmp_path):
    """A USDⓈ-M archive named through a link to its folder was taken as spot (its link's path has no
    futures/um), and its rows revised the spot series' (found by review)."""
    from image_cache.ingest.binance_vision import archive_venue
    folder = tmp_path / "mirror" / "data" / "futures" / "um" / "daily" / "klines" / "BTCUSDT" / "1h"
    folder.mkdir(parents=True)
    (folder / "BTCUSDT-1h-2024-01-01.zip").write_bytes(b"")
    (tmp_path / "um-link").symlink_to(folder)
    assert archive_venue(str(folder / "BTCUSDT-1h-2024-01-01.zip")) == Venue("binance", "um")
    assert archive_venue(str(tmp_path / "um-link" / "BTCUSDT-1h-2024-01-01.zip")) == Venue("binance", "um")
