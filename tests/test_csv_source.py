"""Generic OHLCV CSV files into a real market.sqlite."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from image_cache.core.errors import MarketError
from image_cache.core.grid import utc_ms
from image_cache.ingest.csv_source import ingest_csv, parse_csv

REPO = Path(__file__).resolve().parents[1]
ISO = b"Date,OPEN,High,low,Close,Volume\n2024-01-01,1,2,0.5,1.5,10\n2024-01-02,1.5,2,1,1.2,11\n"


def test_iso_dates_and_any_case_header_with_missing_optional_columns() -> None:
    parsed = parse_csv("a.csv", ISO, "1d")
    c = parsed.candles
    assert parsed.time_unit == "iso"
    assert c["open_time"].tolist() == [utc_ms("2024-01-01"), utc_ms("2024-01-02")]
    assert c["close"].tolist() == [1.5, 1.2] and c["volume"].tolist() == [10.0, 11.0]
    assert c["trades"].tolist() == [0, 0] and c["quote_asset_volume"].tolist() == [0.0, 0.0]


def test_iso_with_offset_is_converted_to_utc() -> None:
    data = b"time,open,high,low,close,volume\n2024-01-01T02:00:00+02:00,1,2,0.5,1.5,10\n"
    assert parse_csv("a.csv", data, "1h").candles["open_time"].tolist() == [utc_ms("2024-01-01")]


@pytest.mark.parametrize("value, unit", [("1704067200", "s"), ("1704067200000", "ms"), ("1704067200000000", "us")])
def test_epoch_unit_is_detected(value: str, unit: str) -> None:
    data = f"timestamp,open,high,low,close,volume,trades,quote_volume\n{value},1,2,0.5,1.5,10,7,15\n".encode()
    parsed = parse_csv("a.csv", data, "1m")
    assert parsed.time_unit == unit
    assert parsed.candles[["open_time", "trades", "quote_asset_volume"]].tolist() == [(utc_ms("2024-01-01"), 7, 15.0)]


def test_explicit_time_column_and_unit() -> None:
    data = b"when,open,high,low,close,volume\n1704067200,1,2,0.5,1.5,10\n"
    parsed = parse_csv("a.csv", data, "1m", time_column="WHEN", time_unit="s")
    assert parsed.candles["open_time"].tolist() == [utc_ms("2024-01-01")]
    with pytest.raises(MarketError,
                       match=r"a.csv: line 2: time unit: when 1704067200 has 10 digits, expected 13 \(ms\)"):
        parse_csv("a.csv", data, "1m", time_column="when", time_unit="ms")


@pytest.mark.parametrize("data, message", [
    (b"date,open,high,low,close\n2024-01-01,1,2,0.5,1.5\n", "a.csv: line 1: header: no 'volume' column"),
    (b"x,open,high,low,close,volume\n1,1,2,0.5,1.5,1\n", "a.csv: line 1: header: no time column"),
    (ISO + b"2024-01-03,1,2,x,1,1\n", "a.csv: line 4: decimal number: low is 'x'"),
    (ISO + b"2024-01-3x,1,2,0.5,1,1\n", "a.csv: line 4: time: Date '2024-01-3x' is not an ISO 8601 date"),
    (ISO + b"2024-01-03,1,2,1.1,1,1\n", "a.csv: line 4: low <= min(open, close): low 1.1, open 1.0, close 1.0"),
    (ISO + b"2024-01-01,1,2,0.5,1.4,10\n",
     "a.csv: line 4: duplicate open time: open_time 2024-01-01T00:00:00Z also on line 2"),
    (b"date,open,high,low,close,volume\n", "a.csv: no rows: the file has a header and no data rows"),
])
def test_errors_name_line_and_rule(data: bytes, message: str) -> None:
    with pytest.raises(MarketError) as info:
        parse_csv("a.csv", data, "1d")
    assert str(info.value).startswith(message), str(info.value)


def test_ingest_and_skip(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(ISO)
    db = str(tmp_path / "market.sqlite")
    first = ingest_csv(db, str(path), symbol="ABCUSDT", interval="1d")
    assert first.ok and (first.files[0].status, first.files[0].rows_inserted) == ("ok", 2)
    assert ingest_csv(db, str(path), symbol="ABCUSDT", interval="1d").files[0].status == "skipped"
    # The same bytes as another series are not a repeat.
    assert ingest_csv(db, str(path), symbol="XYZUSDT", interval="1d").files[0].status == "ok"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM candles").fetchone()[0] == 4


def test_bad_symbol_is_rejected_before_anything_is_written(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_bytes(ISO)
    with pytest.raises(MarketError, match="invalid symbol '../x'"):
        ingest_csv(str(tmp_path / "m.sqlite"), str(path), symbol="../x", interval="1d")
    assert not (tmp_path / "m.sqlite").exists()


def test_cli(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    good.write_bytes(ISO)
    bad.write_bytes(ISO + b"2024-01-03,1,2,0.5,1,-1\n")
    db = str(tmp_path / "market.sqlite")

    def run(path: Path) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ingest", "csv", str(path), "--market-db", db, "--symbol",
                               "ABCUSDT", "--interval", "1d"], cwd=REPO, capture_output=True, text=True, timeout=60)

    ok = run(good)
    assert ok.returncode == 0
    assert ok.stdout.startswith("files: 1 ok, 0 skipped, 0 rejected, 0 unverified; rows: 2 inserted")
    rejected = run(bad)
    assert rejected.returncode == 1
    assert rejected.stdout.splitlines()[0] == "rejected: bad.csv: line 4: volume >= 0: volume is -1.0"
