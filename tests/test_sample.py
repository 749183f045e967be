"""The synthetic market: determinism, invariants, structure, and the `sample` command."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from image_cache.core.grid import DAY_MS, MINUTE_MS, utc_ms
from image_cache.ingest.resample import resample_candles
from image_cache.ingest.sample import base_price, generate_symbol, maintenance_spans

ROOT = str(Path(__file__).resolve().parents[1])
END = utc_ms("2024-07-01")


def test_same_arguments_same_bytes_and_each_input_matters():
    a = generate_symbol("BTCUSDT", days=2, seed=7, end_ms=END)
    assert a.tobytes() == generate_symbol("BTCUSDT", days=2, seed=7, end_ms=END).tobytes()
    assert a["close"].tolist() != generate_symbol("BTCUSDT", days=2, seed=8, end_ms=END)["close"].tolist()
    eth = generate_symbol("ETHUSDT", days=2, seed=7, end_ms=END)
    assert not np.array_equal(a["volume"], eth["volume"])


def test_validation_invariants_hold_and_prices_have_8_decimals():
    for symbol in ("BTCUSDT", "ETHUSDT", "PEPEUSDT", "XRPBTC"):
        c = generate_symbol(symbol, days=5, seed=3, end_ms=END)
        assert np.all(c["low"] > 0)
        assert np.all(c["low"] <= np.minimum(c["open"], c["close"]))
        assert np.all(c["high"] >= np.maximum(c["open"], c["close"]))
        for name in ("volume", "quote_asset_volume", "taker_buy_base_volume", "taker_buy_quote_volume"):
            assert np.all(c[name] >= 0)
        assert np.all(c["taker_buy_base_volume"] <= c["volume"])
        assert np.all(c["trades"] >= 1)
        for name in ("open", "high", "low", "close", "volume", "quote_asset_volume"):
            assert np.array_equal(np.round(c[name], 8), c[name]), (symbol, name)
        # A continuous market: each open is the previous close.
        assert np.array_equal(c["open"][1:], c["close"][:-1])


def test_prices_are_realistic_per_symbol():
    assert generate_symbol("BTCUSDT", days=1, seed=1, end_ms=END)["open"][0] == 60_000.0
    assert generate_symbol("ETHUSDT", days=1, seed=1, end_ms=END)["open"][0] == 3_000.0
    others = {s: base_price(s) for s in ("SOLUSDT", "DOGEUSDT", "ADAUSDT", "LINKUSDT")}
    assert all(0.1 <= p < 1000 for p in others.values())
    assert len(set(others.values())) > 1
    assert base_price("SOLUSDT") == base_price("SOLBTC")  # a function of the base asset name


def test_maintenance_gaps_are_shared_spans_of_minutes_to_hours():
    spans = maintenance_spans(1, 30 * 1440)
    assert 1 <= len(spans) <= 2
    assert all(10 <= stop - start <= 120 for start, stop in spans)
    a = generate_symbol("BTCUSDT", days=30, seed=1, end_ms=END, gaps=spans)
    b = generate_symbol("ETHUSDT", days=30, seed=1, end_ms=END, gaps=spans)
    assert np.array_equal(a["open_time"], b["open_time"])
    missing = 30 * 1440 - len(a)
    assert missing == sum(stop - start for start, stop in spans)
    assert a["open_time"][0] == END - 30 * DAY_MS and a["open_time"][-1] == END - MINUTE_MS


def test_volatility_clusters_and_volume_follows_it():
    c = generate_symbol("BTCUSDT", days=20, seed=2, end_ms=END)
    hourly = resample_candles(c, "1m", "1h").candles
    ranges = (hourly["high"] - hourly["low"]) / hourly["open"]
    # Clustering: a volatile hour tends to follow a volatile hour.
    assert np.corrcoef(ranges[1:], ranges[:-1])[0, 1] > 0.3
    assert np.corrcoef(ranges, hourly["volume"])[0, 1] > 0.3
    # Trends: daily closes wander well away from the start over 20 days.
    assert abs(hourly["close"][-1] / hourly["open"][0] - 1) > 0.005


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def _dump(db: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("""SELECT s.symbol, i.code, c.* FROM candles c JOIN series se ON se.id = c.series_id
                               JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                               ORDER BY 1, 2, c.open_time""").fetchall()


def test_cli_builds_identical_databases_and_registers_each_symbol(tmp_path):
    args = ["sample", "--symbols", "BTCUSDT,SOLUSDT", "--days", "3", "--seed", "5", "--end", "2024-01-10"]
    first = _cli(*args, "--market-db", str(tmp_path / "a.sqlite"))
    second = _cli(*args, "--market-db", str(tmp_path / "b.sqlite"), "--json")
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    rows = _dump(str(tmp_path / "a.sqlite"))
    assert rows == _dump(str(tmp_path / "b.sqlite"))

    intervals = {(r[0], r[1]) for r in rows}
    # Three days hold no complete Monday week: no 1w candle.
    assert intervals == {(s, iv) for s in ("BTCUSDT", "SOLUSDT")
                         for iv in ("1m", "5m", "15m", "30m", "1h", "4h", "12h", "1d")}
    minutes = [r for r in rows if r[:2] == ("BTCUSDT", "1m")]
    assert minutes[0][3] == utc_ms("2024-01-07") and minutes[-1][3] == utc_ms("2024-01-10") - MINUTE_MS
    report = json.loads(second.stdout)
    assert [s["status"] for s in report["symbols"]] == ["ok", "ok"]
    assert report["rows"] == len(rows)
    assert "BTCUSDT [ok]: 1m=" in first.stdout and "maintenance gap:" in first.stdout
    spans = [(g["first_missing_ms"], g["last_missing_ms"]) for g in report["symbols"][0]["gaps"]]
    assert spans
    with sqlite3.connect(tmp_path / "b.sqlite") as conn:
        known = conn.execute("""SELECT start_open_time, end_open_time FROM known_gaps g
                                JOIN series se ON se.id = g.series_id JOIN symbols s ON s.id = se.symbol_id
                                JOIN intervals i ON i.id = se.interval_id
                                WHERE s.symbol = 'BTCUSDT' AND i.code = '1m' ORDER BY 1""").fetchall()
    assert known == spans

    again = _cli(*args, "--market-db", str(tmp_path / "a.sqlite"))
    assert again.returncode == 0, again.stderr
    assert "BTCUSDT [skipped]" in again.stdout
    assert _dump(str(tmp_path / "a.sqlite")) == rows
    with sqlite3.connect(tmp_path / "a.sqlite") as conn:
        registry = conn.execute("SELECT symbol, source, status, rows_read FROM ingested_files ORDER BY id").fetchall()
    assert registry[:2] == [("BTCUSDT", "sample", "ok", len(minutes)), ("SOLUSDT", "sample", "ok", len(minutes))]
    assert [r[2] for r in registry[2:]] == ["skipped", "skipped"]


def test_cli_rejects_bad_arguments(tmp_path):
    db = str(tmp_path / "m.sqlite")
    run = _cli("sample", "--market-db", db, "--days", "0")
    assert run.returncode == 2 and run.stderr.startswith("Error: python -m ingest sample: argument --days: "
                                                         "must be between 1")  # usage errors exit 2
    run = _cli("sample", "--market-db", db, "--symbols", "btc/usdt")
    assert run.returncode == 2 and "argument --symbols: invalid symbol 'btc/usdt'" in run.stderr
