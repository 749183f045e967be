"""`ingest api` and `ingest update` against a fake Binance REST server on 127.0.0.1."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive
from conftest import run_cli
from fake_binance import FakeBinance
from image_cache.cli.ingest import main as ingest_main
from image_cache.core.grid import DAY_MS, INTERVAL_MS, utc_ms
from image_cache.ingest.binance_vision import ingest_paths
from image_cache.ingest.rest import MARKETS, Client, api, fetch_klines
from image_cache.ingest.update import update

NOW = utc_ms("2024-03-02T12:30:30")


@pytest.fixture
def fake(tmp_path):
    server = FakeBinance(tmp_path / "vision")
    yield server
    server.close()


def stored(db: Path, symbol: str = "BTCUSDT", interval: str = "1m") -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("""SELECT c.open_time, c.open, c.close, c.trades FROM candles c
                               JOIN series se ON se.id = c.series_id JOIN symbols s ON s.id = se.symbol_id
                               JOIN intervals i ON i.id = se.interval_id WHERE s.symbol = ? AND i.code = ?
                               ORDER BY c.open_time""", (symbol, interval)).fetchall()


def served(rows: list[list], now: int, interval: str = "1m") -> list[tuple]:
    return [(r[0], float(r[1]), float(r[4]), r[8]) for r in rows if r[0] + INTERVAL_MS[interval] <= now]


def test_api_pages_at_the_limit_survives_429_5xx_and_a_slow_answer_and_stores_only_closed_candles(tmp_path, fake):
    # 2,500 minutes up to and including the candle open at NOW: the last one is not closed.
    first = NOW - NOW % 60_000 - 2_499 * 60_000
    rows = fake.add_series("spot", "BTCUSDT", "1m", first, 2_500)
    fake.faults = ["429", "503", "502", "500", "slow:1.5"]
    waits: list[float] = []
    db = tmp_path / "market.sqlite"
    result = api(str(db), symbols=["BTCUSDT"], intervals=["1m"], start="2024-01-01", api_url=fake.url,
                 now=NOW, timeout=0.5, backoff=0.01, sleep=waits.append)
    assert result.ok
    assert stored(db) == served(rows, NOW)
    assert len(stored(db)) == 2_499
    calls = fake.api_requests("/api/v3/klines")
    assert {q["limit"] for q in calls} == {"1000"}
    assert {q["interval"] for q in calls} == {"1m"}
    # 3 pages, plus the 429, the three 5xx and the timed-out slow answer, each retried.
    assert len(calls) == 3 + 5
    assert waits[0] == 1.0  # Retry-After
    assert waits[1:5] == [0.01, 0.02, 0.04, 0.08]  # backoff for the 5xx burst and the timeout
    assert result.max_weight == 2 * 8  # every call counts, as on the exchange
    assert result.as_dict()["requests"] == 8 and result.as_dict()["retries"] == 4
    with sqlite3.connect(db) as conn:
        entries = conn.execute("SELECT source, status, rows_inserted, period FROM ingested_files").fetchall()
    assert len(entries) == 1 and entries[0][:3] == ("rest", "ok", 2_499)

    # A re-run a moment later asks for nothing: the last closed candle is stored.
    again = api(str(db), symbols=["BTCUSDT"], intervals=["1m"], api_url=fake.url, now=NOW + 10_000)
    assert again.requests == 0 and again.files == []
    # Once the open candle has closed, only it is fetched.
    later = api(str(db), symbols=["BTCUSDT"], intervals=["1m"], api_url=fake.url, now=NOW + 60_000)
    assert later.totals()["rows_inserted"] == 1 and stored(db) == served(rows, NOW + 60_000)


def test_futures_markets_use_their_own_endpoint_and_limit(tmp_path, fake):
    first = utc_ms("2024-01-01")
    fake.add_series("um", "ETHUSDT", "1h", first, 3_100)
    fake.add_series("cm", "BTCUSD_PERP", "1mo", utc_ms("2023-01-01"), 20)
    now = first + 3_100 * 3_600_000
    db = str(tmp_path / "market.sqlite")
    assert api(db, symbols=["ETHUSDT"], intervals=["1h"], market="um", start="2024-01-01", api_url=fake.url,
               now=now).totals()["rows_inserted"] == 3_100
    assert [q["limit"] for q in fake.api_requests("/fapi/v1/klines")] == ["1500", "1500", "1500"]
    result = api(db, symbols=["BTCUSD_PERP"], intervals=["1mo"], market="cm", start="2023-01-01",
                 api_url=fake.url, now=utc_ms("2024-03-15"))
    # 2023-01 .. 2024-02 are closed, 2024-03 is not; the API spells the interval 1M.
    assert result.totals()["rows_inserted"] == 14
    assert {q["interval"] for q in fake.api_requests("/dapi/v1/klines")} == {"1M"}


def test_the_client_waits_for_the_next_minute_near_the_weight_limit(fake):
    fake.add_series("spot", "BTCUSDT", "1m", utc_ms("2024-01-01"), 3_000)
    fake.weight = 5_995
    waits: list[float] = []
    client = Client(MARKETS["spot"], fake.url, sleep=waits.append, clock=lambda: 120.0 + 45.0)
    rows = fetch_klines(client, "BTCUSDT", "1m", utc_ms("2024-01-01"), utc_ms("2024-01-02"), utc_ms("2024-02-01"))
    assert len(rows) == 1_440
    assert client.max_weight == 5_999
    assert waits == [15.5]


def test_a_symbol_the_venue_does_not_have_is_named_and_fails_only_alone(tmp_path, fake, capsys):
    """Once recorded as a rejected batch of an `HTTP 400` answer; now named, exit 1 only when nothing else exists."""
    fake.add_series("spot", "BTCUSDT", "1h", utc_ms("2024-01-01"), 24)
    db = str(tmp_path / "market.sqlite")
    common = ["--market-db", db, "--intervals", "1h", "--start", "2024-01-01", "--api-url", fake.url]
    assert ingest_main(["api", "--symbols", "NOSUCH", *common]) == 1
    out, err = capsys.readouterr()
    assert "unknown symbols (not on the venue): NOSUCH" in out and "NOSUCH: no such symbol on binance spot" in err
    assert ingest_main(["api", "--symbols", "NOSUCH,BTCUSDT", *common, "--json"]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert summary["unknown"] == ["NOSUCH"] and summary["rows_inserted"] == 24 and "NOSUCH" in err
    with sqlite3.connect(db) as conn:  # a symbol that does not exist is no rejected file
        assert conn.execute("SELECT COUNT(*) FROM ingested_files WHERE status = 'rejected'").fetchone()[0] == 0


def test_download_names_a_symbol_with_no_archive_for_any_period(tmp_path, fake, capsys):
    """A misspelt symbol once gave only "missing" archives and exit 0."""
    write_archive(tmp_path / "vision" / "data" / "spot" / "daily" / "klines" / "BTCUSDT" / "1h",
                  "BTCUSDT-1h-2024-01-01.zip", kline_csv(kline_rows("1h", "2024-01-01", 24)))
    common = ["--market-db", str(tmp_path / "market.sqlite"), "--intervals", "1h", "--start", "2024-01-01", "--end",
              "2024-01-02", "--base-url", fake.url + "/", "--mirror", str(tmp_path / "mirror")]
    assert ingest_main(["download", "--symbols", "BTCUSDTT", *common]) == 1
    out, err = capsys.readouterr()
    assert "unknown symbols (no archive for any period): BTCUSDTT" in out and "BTCUSDTT: no archive" in err
    assert ingest_main(["download", "--symbols", "BTCUSDTT,BTCUSDT", *common]) == 0
    assert "BTCUSDTT: no archive" in capsys.readouterr().err


def test_a_later_archive_supersedes_rest_rows_and_counts_revisions(tmp_path, fake):
    rows = fake.add_series("spot", "BTCUSDT", "1h", utc_ms("2024-01-05"), 48)
    db = str(tmp_path / "market.sqlite")
    api(db, symbols=["BTCUSDT"], intervals=["1h"], start="2024-01-05", api_url=fake.url, now=utc_ms("2024-01-07"))
    # The archive holds what REST served, except a corrected close at 03:00.
    archive = [[str(field) for field in row] for row in rows[:24]]
    archive[3][4] = f"{float(archive[3][4]) + 0.25:.8f}"
    archive[3][2] = f"{max(float(archive[3][2]), float(archive[3][4])):.8f}"
    path = write_archive(tmp_path / "zips", "BTCUSDT-1h-2024-01-05.zip", kline_csv(archive))
    result = ingest_paths(db, [str(path)])
    t = result.totals()
    assert t["rows_inserted"] == 0 and t["rows_revised"] == 1
    assert stored(db, interval="1h")[3][2] == float(archive[3][4])


def test_update_takes_archives_where_published_and_rest_for_the_tail(tmp_path, fake):
    vision = tmp_path / "vision" / "data" / "spot"
    # Published: February as a monthly file and March 1st as a daily file; March 2nd is not out yet.
    feb = kline_rows("1h", "2024-02-01", 29 * 24)
    write_archive(vision / "monthly" / "klines" / "BTCUSDT" / "1h", "BTCUSDT-1h-2024-02.zip", kline_csv(feb))
    mar1 = kline_rows("1h", "2024-03-01", 24)
    write_archive(vision / "daily" / "klines" / "BTCUSDT" / "1h", "BTCUSDT-1h-2024-03-01.zip", kline_csv(mar1))
    rest = fake.add_series("spot", "BTCUSDT", "1h", utc_ms("2024-02-01"), 30 * 24 + 13)
    db = str(tmp_path / "market.sqlite")
    result = update(db, symbols=["BTCUSDT"], intervals=["1h"], start="2024-02-01", api_url=fake.url,
                    base_url=fake.url + "/", mirror=str(tmp_path / "mirror"), now=NOW, backoff=0.01)
    assert result.ok, result.text()
    times = [r[0] for r in stored(db, interval="1h")]
    # Every closed hour from Feb 1st to 12:00 on March 2nd, once.
    assert times == list(range(utc_ms("2024-02-01"), utc_ms("2024-03-02T12:00"), 3_600_000))
    # REST asked only for the tail after the archives: March 2nd.
    calls = fake.api_requests("/api/v3/klines")
    assert [int(q["startTime"]) for q in calls] == [utc_ms("2024-03-02")]
    assert result.api.totals()["rows_inserted"] == 12
    assert stored(db, interval="1h")[-1][1] == float(rest[-2][1])

    again = update(db, symbols=["BTCUSDT"], intervals=["1h"], api_url=fake.url, base_url=fake.url + "/",
                   mirror=str(tmp_path / "mirror"), now=NOW + 60_000)
    assert again.ok and again.api.requests == 0 and len(fake.api_requests("/api/v3/klines")) == 1


def test_update_cli_takes_quote_assets_and_symbol_files(tmp_path, fake):
    fake.instruments["spot"] = [
        {"symbol": "BTCUSDT", "status": "TRADING", "baseAsset": "BTC", "quoteAsset": "USDT"},
        {"symbol": "ETHUSDT", "status": "TRADING", "baseAsset": "ETH", "quoteAsset": "USDT"},
        {"symbol": "OLDUSDT", "status": "BREAK", "baseAsset": "OLD", "quoteAsset": "USDT"},
        {"symbol": "ETHBTC", "status": "TRADING", "baseAsset": "ETH", "quoteAsset": "BTC"},
    ]
    day = utc_ms("2024-03-01")
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLBNB"):
        fake.add_series("spot", symbol, "1d", day - 3 * DAY_MS, 3)
    (tmp_path / "more.txt").write_text("# extra pairs\nSOLBNB\n\n")
    result = run_cli(tmp_path, "update", "--quote", "USDT", "--symbols", "@more.txt", "--intervals", "1d",
                     "--start", "2024-02-27", "--api-url", fake.url, "--base-url", fake.url + "/", "--json",
                     module="ingest")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["symbols"] == ["SOLBNB", "BTCUSDT", "ETHUSDT"]
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLBNB"):
        assert len(stored(tmp_path / "market.sqlite", symbol, "1d")) == 3


def test_a_malformed_answer_rejects_the_batch_and_writes_nothing(tmp_path, fake):
    fake.add_series("spot", "BTCUSDT", "1h", utc_ms("2024-01-01"), 24)
    fake.faults = ["malformed"]
    db = str(tmp_path / "market.sqlite")
    result = api(db, symbols=["BTCUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url,
                 now=utc_ms("2024-01-02"))
    assert not result.ok
    assert result.files[0].reason == "BTCUSDT-1h klines: response: klines are not arrays of 12 fields"
    assert stored(Path(db), interval="1h") == []
    # The next run asks again and gets the candles.
    assert api(db, symbols=["BTCUSDT"], intervals=["1h"], start="2024-01-01", api_url=fake.url,
               now=utc_ms("2024-01-02")).totals()["rows_inserted"] == 24
