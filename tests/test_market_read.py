"""Reading a market database we did not write: odd paths and odd values end in one line, never a
traceback, and the read-only open never creates a file."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from image_cache.cache import market
from image_cache.core.errors import MarketError

HOUR = 3_600_000
START = 1_719_792_000_000  # 2024-07-01


def foreign_market(path: Path, bad_column: str | None = None, bad_value: object = None, rows: int = 48) -> Path:
    """The four tables the renderer reads, declared loosely as another tool might (no types, no NOT NULL),
    with one series of `rows` hourly candles; candle 40 gets `bad_value` in `bad_column`."""
    with sqlite3.connect(path) as conn:
        conn.executescript("""
            CREATE TABLE symbols(id INTEGER PRIMARY KEY, symbol, base_asset, quote_asset);
            CREATE TABLE intervals(id INTEGER PRIMARY KEY, code, ms);
            CREATE TABLE series(id INTEGER PRIMARY KEY, symbol_id, interval_id);
            CREATE TABLE candles(series_id, open_time, open, high, low, close, volume);
            INSERT INTO symbols VALUES (1, 'AAAUSDT', 'AAA', 'USDT');
            INSERT INTO intervals VALUES (1, '1h', 3600000);
            INSERT INTO series VALUES (7, 1, 1);
        """)
        for i in range(rows):
            values = {"open_time": START + i * HOUR, "open": 10.0, "high": 11.0, "low": 9.0, "close": 10.5,
                      "volume": 100.0}
            if i == 40 and bad_column:
                values[bad_column] = bad_value
            conn.execute("INSERT INTO candles VALUES (7, :open_time, :open, :high, :low, :close, :volume)", values)
    return path


@pytest.mark.parametrize("column, value, shown", [
    ("open", "abc", "TEXT 'abc'"),
    ("volume", b"\x00\xff", "BLOB X'00FF'"),
    ("close", None, "NULL NULL"),
    ("high", float("inf"), "an infinite number"),
    ("open_time", "2024-07-02", "TEXT '2024-07-02'"),
])
def test_a_value_that_is_not_a_number_names_table_series_and_column(tmp_path: Path, column, value, shown):
    path = foreign_market(tmp_path / "foreign.sqlite", column, value)
    conn = market.open_market(str(path))
    with pytest.raises(MarketError) as caught:
        market.read_series(conn, "AAAUSDT", "1h", 7)
    message = str(caught.value)
    assert message.startswith(f"{path}: table candles, series AAAUSDT 1h (id 7): column {column} holds {shown}")
    assert "\n" not in message

    result = run_cli(tmp_path, "render", "--dry-run", "--market-db", str(path), "--symbols", "AAAUSDT",
                     "--intervals", "1h", "--window", "5", "--size", "64", "--start", "2024-07-01")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr == f"Error: {message}\n"


def test_numbers_stored_loosely_still_read(tmp_path: Path):
    """Text that is a number ('10.5'), and integers in price columns, read as the numbers they are."""
    path = foreign_market(tmp_path / "foreign.sqlite", "close", "12.25")
    series = market.read_series(market.open_market(str(path)), "AAAUSDT", "1h", 7)
    assert series.ohlcv[40, 3] == 12.25 and series.times[40] == START + 40 * HOUR
    assert series.ohlcv.dtype == np.float64 and len(series.times) == 48


@pytest.mark.parametrize("folder", ["data#1", "what?", "100%", "a b"])
def test_a_path_with_uri_characters_opens_that_file_and_creates_nothing(tmp_path: Path, sample_market: Path,
                                                                         folder: str):
    (tmp_path / folder).mkdir()
    path = tmp_path / folder / "market.sqlite"
    shutil.copy(sample_market, path)
    before = sorted(p.name for p in tmp_path.iterdir())
    conn = market.open_market(str(path))
    assert ("BTCUSDT", "1h") in market.list_series(conn)
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no truncated path created beside it


@pytest.mark.parametrize("column, value, rule", [
    ("high", 8.0, "high >= max(open, close) broken (high 8.0, open 10.0, close 10.5)"),  # high < low
    ("open", 12.0, "high >= max(open, close) broken (high 11.0, open 12.0, close 10.5)"),
    ("close", 8.5, "low <= min(open, close) broken (low 9.0, open 10.0, close 8.5)"),
    ("low", -1.0, "price > 0 broken (low is -1.0)"),
    ("volume", -5.0, "volume >= 0 broken (volume is -5.0)"),
])
def test_a_candle_ingest_would_refuse_makes_its_windows_undrawable(tmp_path: Path, column, value, rule):
    """A market another program wrote: its windows were drawn and indexed ok, whatever the candle said."""
    path = foreign_market(tmp_path / "foreign.sqlite", column, value)
    args = ("render", "--market-db", str(path), "--symbols", "AAAUSDT", "--intervals", "1h", "--window", "5",
            "--size", "64", "--start", "2024-07-01", "--json")
    result = run_cli(tmp_path, *args)
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(tmp_path / "image_cache.sqlite") as conn:
        rows = dict(conn.execute("SELECT (end_open_time_ms - ?) / ?, status || ' ' || coalesce(reason, '') "
                                 "FROM images", (START, HOUR)).fetchall())
    bad = f"undrawable engine: bad candle at 2024-07-02T16:00:00Z: {rule}"
    assert {i: rows[i] for i in range(40, 45)} == {i: bad for i in range(40, 45)}  # the 5 windows holding it
    assert {rows[i] for i in range(4, 40)} | {rows[i] for i in range(45, 48)} == {"ok "}

    with sqlite3.connect(path) as conn:  # corrected by its writer: drawn at the next render
        conn.execute(f"UPDATE candles SET {column} = ? WHERE open_time = ?",
                     ({"volume": 100.0, "low": 9.0, "close": 10.5, "open": 10.0}.get(column, 11.0), START + 40 * HOUR))
    assert json.loads(run_cli(tmp_path, *args).stdout)["drawn"] == 5
