"""Resampling: hand-computed buckets, incomplete buckets, Monday weeks, calendar months, the CLI."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, MINUTE_MS, utc_ms
from image_cache.ingest.resample import check_pair, resample_candles
from image_cache.ingest.schema import CANDLE_DTYPE, connect_writer, series_id, upsert_candles
from image_cache.ingest.venues import BINANCE_SPOT

ROOT = str(Path(__file__).resolve().parents[1])


def make_candles(times: list[int], seed: int = 0) -> np.ndarray:
    """Candles with exactly representable values (quarters), so sums compare exactly."""
    rng = np.random.default_rng(seed)
    n = len(times)
    out = np.zeros(n, dtype=CANDLE_DTYPE)
    out["open_time"] = times
    o = 100 + rng.integers(0, 40, n) / 4
    c = 100 + rng.integers(0, 40, n) / 4
    out["open"], out["close"] = o, c
    out["high"] = np.maximum(o, c) + rng.integers(0, 8, n) / 4
    out["low"] = np.minimum(o, c) - rng.integers(0, 8, n) / 4
    out["volume"] = rng.integers(0, 100, n) / 4
    out["quote_asset_volume"] = out["volume"] * 100
    out["trades"] = rng.integers(0, 50, n)
    out["taker_buy_base_volume"] = out["volume"] / 2
    out["taker_buy_quote_volume"] = out["quote_asset_volume"] / 2
    return out


def test_hand_computed_5m_bucket():
    t0 = utc_ms("2024-03-05T10:00")
    base = np.zeros(5, dtype=CANDLE_DTYPE)
    base["open_time"] = [t0 + i * MINUTE_MS for i in range(5)]
    base["open"] = [10.0, 11.0, 12.5, 11.5, 9.0]
    base["high"] = [11.5, 13.0, 12.75, 12.0, 10.0]
    base["low"] = [9.5, 10.5, 11.0, 8.25, 8.5]
    base["close"] = [11.0, 12.5, 11.5, 9.0, 9.75]
    base["volume"] = [1.5, 2.0, 0.25, 3.0, 0.0]
    base["quote_asset_volume"] = [15.0, 24.0, 3.0, 30.0, 0.0]
    base["trades"] = [3, 4, 1, 7, 0]
    base["taker_buy_base_volume"] = [0.5, 1.0, 0.25, 1.5, 0.0]
    base["taker_buy_quote_volume"] = [5.0, 12.0, 3.0, 15.0, 0.0]

    result = resample_candles(base, "1m", "5m")

    assert result.candles.tolist() == [(t0, 10.0, 13.0, 8.25, 9.75, 6.75, 72.0, 15, 3.25, 35.0)]
    assert len(result.incomplete) == 0


def test_bucket_with_a_missing_candle_is_not_written_and_is_reported():
    t0 = utc_ms("2024-03-05T10:00")
    times = [t0 + i * MINUTE_MS for i in range(15) if i != 7]  # 10:07 missing: the 10:05 bucket
    result = resample_candles(make_candles(times), "1m", "5m")
    assert result.candles["open_time"].tolist() == [t0, t0 + 10 * MINUTE_MS]
    assert result.incomplete.tolist() == [t0 + 5 * MINUTE_MS]


def test_partial_edge_buckets_are_incomplete():
    t0 = utc_ms("2024-03-05T10:00")
    times = [t0 + i * MINUTE_MS for i in range(3, 12)]  # 10:03 .. 10:11
    result = resample_candles(make_candles(times), "1m", "5m")
    assert result.candles["open_time"].tolist() == [t0 + 5 * MINUTE_MS]
    assert result.incomplete.tolist() == [t0, t0 + 10 * MINUTE_MS]


def test_candle_off_the_source_grid_makes_its_bucket_incomplete():
    t0 = utc_ms("2024-03-05T10:00")
    times = [t0 + i * MINUTE_MS for i in range(10)]
    times[2] += 30_000  # half a minute late: a flagged early-2018 style candle
    result = resample_candles(make_candles(times), "1m", "5m")
    assert result.candles["open_time"].tolist() == [t0 + 5 * MINUTE_MS]
    assert result.incomplete.tolist() == [t0]


def test_weeks_open_on_monday():
    monday = utc_ms("2024-01-01")  # a Monday
    days = make_candles([monday - 2 * DAY_MS + i * DAY_MS for i in range(2 + 14 + 3)])  # Sat .. Wed
    result = resample_candles(days, "1d", "1w")
    assert result.candles["open_time"].tolist() == [monday, monday + 7 * DAY_MS]
    assert result.incomplete.tolist() == [monday - 7 * DAY_MS, monday + 14 * DAY_MS]
    week = days[2:9]
    assert result.candles["open"][0] == week["open"][0]
    assert result.candles["close"][0] == week["close"][-1]
    assert result.candles["high"][0] == week["high"].max()
    assert result.candles["volume"][0] == week["volume"].sum()


def test_calendar_months_of_varying_length():
    jan = utc_ms("2024-01-01")
    days = make_candles([jan + i * DAY_MS for i in range(31 + 29 + 31)])  # Jan, Feb (leap), Mar
    result = resample_candles(days, "1d", "1mo")
    assert result.candles["open_time"].tolist() == [jan, utc_ms("2024-02-01"), utc_ms("2024-03-01")]
    assert result.candles["trades"].tolist() == [days["trades"][:31].sum(), days["trades"][31:60].sum(),
                                                 days["trades"][60:].sum()]
    without_leap_day = np.delete(days, 31 + 28)
    result = resample_candles(without_leap_day, "1d", "1mo")
    assert result.candles["open_time"].tolist() == [jan, utc_ms("2024-03-01")]
    assert result.incomplete.tolist() == [utc_ms("2024-02-01")]


def test_month_from_hours():
    feb = utc_ms("2023-02-01")
    hours = make_candles([feb + i * 3_600_000 for i in range(28 * 24)])
    result = resample_candles(hours, "1h", "1mo")
    assert result.candles["open_time"].tolist() == [feb]
    assert result.candles["low"][0] == hours["low"].min()


@pytest.mark.parametrize("source,target", [("1h", "5m"), ("5m", "5m"), ("3d", "1w"), ("1w", "1mo"),
                                           ("3d", "1mo"), ("1mo", "1mo"), ("4h", "6h"), ("1m", "2x")])
def test_nonsense_pairs_are_rejected(source, target):
    with pytest.raises(MarketError):
        check_pair(source, target)


@pytest.mark.parametrize("source,target", [("1m", "1w"), ("12h", "1w"), ("1d", "1mo"), ("3m", "1h"), ("1d", "3d")])
def test_sensible_pairs_are_accepted(source, target):
    check_pair(source, target)


@settings(max_examples=40, deadline=None)
@given(st.sets(st.integers(0, 59), min_size=1), st.integers(0, 2**16))
def test_matches_a_naive_per_bucket_aggregation(present, seed):
    t0 = utc_ms("2024-05-06T00:00")
    base = make_candles(sorted(t0 + i * MINUTE_MS for i in present), seed)
    result = resample_candles(base, "1m", "15m")
    expected, incomplete = [], []
    for b in range(4):
        rows = base[(base["open_time"] >= t0 + b * 15 * MINUTE_MS)
                    & (base["open_time"] < t0 + (b + 1) * 15 * MINUTE_MS)]
        if len(rows) == 15:
            expected.append((t0 + b * 15 * MINUTE_MS, rows["open"][0], rows["high"].max(), rows["low"].min(),
                             rows["close"][-1], rows["volume"].sum(), rows["quote_asset_volume"].sum(),
                             rows["trades"].sum(), rows["taker_buy_base_volume"].sum(),
                             rows["taker_buy_quote_volume"].sum()))
        elif len(rows):
            incomplete.append(t0 + b * 15 * MINUTE_MS)
    assert result.candles.tolist() == expected
    assert result.incomplete.tolist() == incomplete


def _write(db: str, symbol: str, interval: str, candles: np.ndarray) -> None:
    conn = connect_writer(db)
    conn.execute("BEGIN")
    upsert_candles(conn, series_id(conn, symbol, interval, BINANCE_SPOT), candles)
    conn.execute("COMMIT")
    conn.close()


def _rows(db: str, symbol: str, interval: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("""SELECT open_time, open, high, low, close, volume, quote_asset_volume, trades,
                                      taker_buy_base_volume, taker_buy_quote_volume
                               FROM candles c JOIN series se ON se.id = c.series_id
                               JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                               WHERE s.symbol = ? AND i.code = ? ORDER BY open_time""", (symbol, interval)).fetchall()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli_writes_complete_buckets_and_reports_the_rest(tmp_path):
    db = str(tmp_path / "market.sqlite")
    t0 = utc_ms("2024-03-05T00:00")
    base = make_candles([t0 + i * MINUTE_MS for i in range(180) if i != 70])  # 01:10 missing
    _write(db, "AAAUSDT", "1m", base)
    _write(db, "BBBUSDT", "1m", make_candles([t0 + i * MINUTE_MS for i in range(60)]))

    run = _cli("resample", "--market-db", db, "--from", "1m", "--to", "1h,15m", "--symbols", "AAAUSDT")

    assert run.returncode == 0, run.stderr
    hours = _rows(db, "AAAUSDT", "1h")
    assert [h[0] for h in hours] == [t0, t0 + 120 * MINUTE_MS]
    assert hours[1] == resample_candles(base[-60:], "1m", "1h").candles.tolist()[0]
    assert len(_rows(db, "AAAUSDT", "15m")) == 11
    assert _rows(db, "BBBUSDT", "1h") == []  # not selected
    assert "AAAUSDT 1h: 2 candles" in run.stdout
    assert "2024-03-05T01:00:00Z … 2024-03-05T01:00:00Z (1 missing)" in run.stdout
    assert "AAAUSDT 15m: 11 candles" in run.stdout
    with sqlite3.connect(db) as conn:
        known = conn.execute("""SELECT i.code, g.start_open_time, g.end_open_time FROM known_gaps g
                                JOIN series se ON se.id = g.series_id JOIN intervals i ON i.id = se.interval_id
                                ORDER BY 1""").fetchall()
    assert known == [("15m", t0 + 60 * MINUTE_MS, t0 + 60 * MINUTE_MS),
                     ("1h", t0 + 60 * MINUTE_MS, t0 + 60 * MINUTE_MS)]

    again = _cli("resample", "--market-db", db, "--from", "1m", "--to", "1h", "--json")
    assert again.returncode == 0, again.stderr
    assert '"inserted": 0' in again.stdout and "BBBUSDT" in again.stdout
    assert len(_rows(db, "BBBUSDT", "1h")) == 1


def test_cli_rejects_a_target_finer_than_the_source(tmp_path):
    db = str(tmp_path / "market.sqlite")
    run = _cli("resample", "--market-db", db, "--from", "1h", "--to", "5m")
    assert run.returncode == 1
    assert run.stderr.startswith("Error: cannot resample 1h to 5m")
