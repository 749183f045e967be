"""`ingest ccxt` through the real CCXT client against the fake Binance on 127.0.0.1, and `--top N --quote Q`."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fake_binance import FakeBinance
from image_cache.cli.ingest import main as ingest_main
from image_cache.core.grid import INTERVAL_MS, utc_ms
from image_cache.ingest.ccxt_source import ccxt_ingest, market_name
from image_cache.ingest.rest import api
from image_cache.ingest.update import update

pytest.importorskip("ccxt")  # requirements-dev.txt pins it; an install without the extra says so in one line

NOW = utc_ms("2024-04-15T12:30:30")
USDT = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")


@pytest.fixture
def fake():
    server = FakeBinance()
    server.instruments["spot"] = [{"symbol": s, "status": "TRADING", "baseAsset": s[:-4], "quoteAsset": "USDT"}
                                  for s in USDT] + [{"symbol": "ETHBTC", "status": "TRADING", "baseAsset": "ETH",
                                                     "quoteAsset": "BTC"}]
    # ETHBTC trades most but is not quoted in USDT; SOLUSDT and XRPUSDT tie, and the name decides.
    volumes = {"BTCUSDT": "900000.5", "ETHUSDT": "120.0", "SOLUSDT": "5000.0", "XRPUSDT": "5000.0", "ETHBTC": "9e9"}
    server.tickers["spot"] = [{"symbol": s, "quoteVolume": v, "volume": "1.0", "lastPrice": "1.0"}
                              for s, v in volumes.items()]
    yield server
    server.close()


def stored(db, symbol: str, interval: str = "1h") -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("""SELECT c.open_time, c.open, c.close FROM candles c JOIN series se ON se.id = c.series_id
                               JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                               WHERE s.symbol = ? AND i.code = ? ORDER BY c.open_time""", (symbol, interval)).fetchall()


def test_ccxt_pages_through_a_429_stores_only_closed_candles_and_a_rerun_fetches_nothing(tmp_path, fake):
    first = NOW - NOW % 3_600_000 - 2_399 * 3_600_000
    rows = fake.add_series("spot", "BTCUSDT", "1h", first, 2_400)  # the last one is still open at NOW
    fake.faults = ["429"]
    waits: list[float] = []
    db = tmp_path / "market.sqlite"
    # binanceus: another exchange of the same API shape, so its series are apart from Binance's.
    result = ccxt_ingest(str(db), exchange="binanceus", symbols=["BTC/USDT", "DOGE/USDT"], intervals=["1h"],
                         start="2024-01-01", api_url=fake.url, now=NOW, backoff=0.01, sleep=waits.append)
    assert result.ok and result.unknown == ["DOGE/USDT"]
    closed = [(r[0], float(r[1]), float(r[4])) for r in rows if r[0] + INTERVAL_MS["1h"] <= NOW]
    assert stored(db, "BTCUSDT-BINANCEUS-SPOT") == closed and len(closed) == 2_399
    calls = fake.api_requests("/api/v3/klines")
    assert {q["limit"] for q in calls} == {"1000"}  # the exchange's own limit, from CCXT
    assert len(calls) == 1 + 3 and waits and result.retries == 1  # the 429, then three pages
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT source, status, rows_inserted FROM ingested_files").fetchall() == \
            [("ccxt", "ok", 2_399)]
        assert conn.execute("SELECT exchange, market FROM series_venues").fetchall() == [("binanceus", "spot")]

    again = ccxt_ingest(str(db), exchange="binanceus", symbols=["BTC/USDT"], intervals=["1h"], api_url=fake.url,
                        now=NOW + 60_000)
    assert again.ok and again.files == [] and len(fake.api_requests("/api/v3/klines")) == 4


def test_ccxt_command_line_names_an_unknown_market_and_fails_when_it_is_the_only_one(tmp_path, fake, capsys):
    common = ["--market-db", str(tmp_path / "market.sqlite"), "--exchange", "binance", "--intervals", "1h",
              "--start", "2024-01-01", "--api-url", fake.url]
    assert ingest_main(["ccxt", "--symbols", "DOGE/USDT", *common]) == 1
    out, err = capsys.readouterr()
    assert "unknown symbols (not on the venue): DOGE/USDT" in out and "Traceback" not in err
    assert ingest_main(["ccxt", "--symbols", "BTC/USDT", "--exchange", "nosuchexchange", "--intervals", "1h",
                        "--market-db", str(tmp_path / "market.sqlite")]) == 1
    assert capsys.readouterr().err.startswith("Error: unknown exchange 'nosuchexchange'")


def test_top_picks_the_highest_quote_volumes_in_a_fixed_order(tmp_path, fake, capsys):
    now = utc_ms("2024-01-02")
    for symbol in USDT:
        fake.add_series("spot", symbol, "1d", utc_ms("2024-01-01"), 1)
    db = tmp_path / "market.sqlite"
    result = api(str(db), symbols=[], intervals=["1d"], top=3, quote="USDT", start="2024-01-01", api_url=fake.url,
                 now=now)
    assert result.ok and [t["symbol"] for t in result.top] == ["BTCUSDT", "SOLUSDT", "XRPUSDT"]
    assert "top 3 by 24-hour quote volume: BTCUSDT (900,000), SOLUSDT (5,000), XRPUSDT (5,000)" in result.text()
    # Through CCXT, with the command line: the same three, printed and recorded with the run.
    assert ingest_main(["ccxt", "--market-db", str(db), "--exchange", "binanceus", "--top", "3", "--quote", "USDT",
                        "--intervals", "1d", "--start", "2024-01-01", "--api-url", fake.url, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [t["symbol"] for t in summary["top"]] == ["BTC/USDT", "SOL/USDT", "XRP/USDT"]
    with sqlite3.connect(db) as conn:
        assert [row[0] for row in conn.execute("SELECT symbols FROM symbol_selections ORDER BY id")] == \
            ["BTCUSDT,SOLUSDT,XRPUSDT", "BTC/USDT,SOL/USDT,XRP/USDT"]
    assert len(stored(db, "SOLUSDT-BINANCEUS-SPOT", "1d")) == 1
    # update takes the same rule.
    result = update(str(tmp_path / "update.sqlite"), symbols=[], intervals=["1d"], quote="USDT", top=2,
                    start="2024-01-01", api_url=fake.url, base_url=fake.url + "/", mirror=str(tmp_path / "mirror"),
                    now=now, backoff=0.01)
    assert result.ok and result.symbols == ["BTCUSDT", "SOLUSDT"] and len(result.api.top) == 2


def test_market_names_keep_settle_and_expiry_apart():
    assert market_name({"base": "BTC", "quote": "USDT", "settle": "USDT"}) == "BTCUSDT"
    assert market_name({"base": "BTC", "quote": "USD", "settle": "BTC"}) == "BTCUSD_BTC"
    assert market_name({"base": "BTC", "quote": "USD", "settle": "USDT"}) == "BTCUSD_USDT"
    assert market_name({"base": "BTC", "quote": "USD", "settle": "BTC",
                        "expiryDatetime": "2025-06-27T08:00:00.000Z"}) == "BTCUSD_BTC_250627"
    assert market_name({"base": "1000PEPE", "quote": "USDT"}) == "1000PEPEUSDT"
    # An asset a series name cannot spell is never cut down to another name (it became `USDT`: review).
    assert market_name({"base": "币安人生", "quote": "USDT"}) is None
    assert market_name({"base": "BTC", "quote": ""}) is None


def test_update_brings_another_exchanges_series_up_through_ccxt(tmp_path, fake, capsys):
    """`update --exchange ID` for a venue without archives: CCXT alone, each series resumed after its last
    stored candle, the same rows and series as `ingest ccxt`; Binance's futures markets are refused there."""
    first = utc_ms("2024-04-14")
    fake.add_series("spot", "BTCUSDT", "1h", first, 24)
    db = tmp_path / "market.sqlite"
    common = ["update", "--market-db", str(db), "--exchange", "binanceus", "--symbols", "BTC/USDT", "--intervals",
              "1h", "--api-url", fake.url, "--json"]
    assert ingest_main([*common, "--start", "2024-04-14"]) == 0
    assert json.loads(capsys.readouterr().out)["api"]["ok"]
    assert len(stored(db, "BTCUSDT-BINANCEUS-SPOT")) == 24
    fetched = len(fake.api_requests("/api/v3/klines"))
    assert ingest_main(common) == 0  # resumed after the last stored candle, no --start needed: nothing new
    assert json.loads(capsys.readouterr().out)["api"]["files"]["ok"] == 0
    asked = fake.api_requests("/api/v3/klines")[fetched:]
    assert [int(q["startTime"]) for q in asked] == [first + 24 * INTERVAL_MS["1h"]]
    assert len(stored(db, "BTCUSDT-BINANCEUS-SPOT")) == 24
    assert ingest_main([*common, "--market", "um"]) == 1
    assert capsys.readouterr().err.startswith("Error: --market um is Binance's; binanceus takes spot, swap or future")
