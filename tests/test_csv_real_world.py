"""CSV files as people have them: pandas exports, semicolons and tabs, close-labelled times, wrong intervals."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive
from image_cache.core.errors import MarketError
from image_cache.core.grid import utc_ms
from image_cache.ingest.binance_vision import ingest_paths
from image_cache.ingest.csv_source import ingest_csv, parse_csv

REPO = Path(__file__).resolve().parents[1]


def frame(index: pd.DatetimeIndex) -> pd.DataFrame:
    n = len(index)
    close = 100 + np.arange(n) % 7
    return pd.DataFrame({"open": close - 0.5, "high": close + 1, "low": close - 1.5, "close": close,
                         "volume": np.arange(n) + 1.0}, index=index)


def pandas_csv(df: pd.DataFrame, **options) -> bytes:
    buffer = io.StringIO()
    df.to_csv(buffer, **options)
    return buffer.getvalue().encode()


def test_a_pandas_date_index_is_the_time_column() -> None:
    data = pandas_csv(frame(pd.date_range("2024-01-01", periods=48, freq="h", tz="UTC")))
    assert data.startswith(b",open,high,low,close,volume\n")
    parsed = parse_csv("p.csv", data, "1h")
    assert parsed.candles["open_time"].tolist() == [utc_ms("2024-01-01") + i * 3_600_000 for i in range(48)]
    assert parsed.candles["volume"].tolist() == [float(i + 1) for i in range(48)]


@pytest.mark.parametrize("sep", [";", "\t"])
def test_the_delimiter_is_sniffed(sep: str) -> None:
    data = pandas_csv(frame(pd.date_range("2024-01-01", periods=5, freq="D")), sep=sep, index_label="Date")
    assert parse_csv("p.csv", data, "1d").candles["close"].tolist() == [100.0, 101.0, 102.0, 103.0, 104.0]


def test_hourly_data_declared_daily_is_rejected_naming_the_interval_it_looks_like(tmp_path: Path) -> None:
    path = tmp_path / "hourly.csv"
    path.write_bytes(pandas_csv(frame(pd.date_range("2024-01-01", periods=5_000, freq="h")), index_label="date"))
    result = ingest_csv(str(tmp_path / "m.sqlite"), str(path), symbol="BTCUSDT", interval="1d")
    assert not result.ok
    assert result.files[0].reason == ("hourly.csv: line 3: interval: 4791 of 5000 open times are off the 1d grid "
                                      "(first 2024-01-01T01:00:00Z); the rows look like 1h data")
    assert result.files[0].rows_inserted == 0


def test_sparse_on_grid_data_of_another_interval_is_rejected() -> None:
    data = pandas_csv(frame(pd.date_range("2024-01-01", periods=30, freq="4h")), index_label="time")
    with pytest.raises(MarketError, match=r"p.csv: line 3: interval: no two candles are one 1h apart; "
                                          r"the rows look like 4h data"):
        parse_csv("p.csv", data, "1h")


def test_a_binance_archive_named_1h_holding_1m_rows_is_rejected(tmp_path: Path) -> None:
    path = write_archive(tmp_path, "BTCUSDT-1h-2024-01-01.zip", kline_csv(kline_rows("1m", "2024-01-01", 600)))
    result = ingest_paths(str(tmp_path / "m.sqlite"), [str(path)])
    assert result.files[0].status == "rejected"
    assert result.files[0].reason.endswith("open times are off the 1h grid (first 2024-01-01T00:01:00Z); "
                                           "the rows look like 1m data")


def test_month_end_labels_are_detected_and_read_as_the_months_they_close() -> None:
    # pandas' default monthly label is the month's last day.
    data = pandas_csv(frame(pd.date_range("2023-01-31", periods=14, freq="ME")), index_label="date")
    warnings: list[str] = []
    parsed = parse_csv("m.csv", data, "1mo", warn=warnings.append)
    opens = parsed.candles["open_time"].tolist()
    assert opens[:3] == [utc_ms("2023-01-01"), utc_ms("2023-02-01"), utc_ms("2023-03-01")]
    assert opens[-1] == utc_ms("2024-02-01")
    assert warnings == ["m.csv: every time is the last day of a month: read as the candles' close "
                        "(--time-label open to override)"]


def test_close_labels_by_flag_by_23_59_59_and_by_a_close_time_column() -> None:
    days = pd.date_range("2024-01-02", periods=4, freq="D")
    explicit = parse_csv("d.csv", pandas_csv(frame(days), index_label="date"), "1d", time_label="close")
    assert explicit.candles["open_time"].tolist() == [utc_ms(f"2024-01-0{d}") for d in (1, 2, 3, 4)]
    late = pandas_csv(frame(days - pd.Timedelta(seconds=1)), index_label="date")
    assert parse_csv("d.csv", late, "1d").candles["open_time"].tolist() == explicit.candles["open_time"].tolist()
    close_ms = [utc_ms("2024-01-01") + (i + 1) * 3_600_000 - 1 for i in range(3)]
    data = ("close_time,open,high,low,close,volume\n"
            + "".join(f"{t},1,2,0.5,1.5,1\n" for t in close_ms)).encode()
    assert parse_csv("c.csv", data, "1h").candles["open_time"].tolist() == [t + 1 - 3_600_000 for t in close_ms]


def test_weekly_labels_at_the_week_end_point_to_the_flag() -> None:
    data = pandas_csv(frame(pd.date_range("2024-01-07", periods=6, freq="W")), index_label="date")
    with pytest.raises(MarketError, match=r"off the 1w grid .* use --time-label close"):
        parse_csv("w.csv", data, "1w")
    assert parse_csv("w.csv", data, "1w", time_label="close").candles["open_time"][0] == utc_ms("2024-01-01")


def test_a_trailing_comma_on_data_rows_is_named_as_such() -> None:
    data = b"date,open,high,low,close,volume\n2024-01-01,1,2,0.5,1.5,10,\n2024-01-02,1,2,0.5,1.5,10,\n"
    with pytest.raises(MarketError) as info:
        parse_csv("t.csv", data, "1d")
    assert str(info.value) == ("t.csv: line 2: field count: 7 fields, the header has 6 "
                               "(a trailing delimiter at the end of the line)")


def test_a_huge_trade_count_is_not_called_negative() -> None:
    data = b"date,open,high,low,close,volume,trades\n2024-01-01,1,2,0.5,1.5,10,1e30\n"
    with pytest.raises(MarketError) as info:
        parse_csv("t.csv", data, "1d")
    assert str(info.value) == ("t.csv: line 2: integer: trades is '1e30', too large for a count "
                               "(at most 9007199254740991)")


@pytest.mark.slow
def test_a_large_csv_is_parsed_in_bounded_memory(tmp_path: Path) -> None:
    """About 40 MB of CSV: the old whole-file parse peaked near 700 MB; streaming stays far below."""
    n = 450_000
    opens = utc_ms("2020-01-01") + np.arange(n, dtype=np.int64) * 60_000
    # 97 distinct closes, each row's text formatted once (pandas' to_csv took 4 s of CPU for the same bytes).
    rest = [f"{c:.8f},{c + 1:.8f},{c - 1:.8f},{c:.8f},1.50000000,150.25000000,42,0.75000000,75.12500000\n"
            for c in 100 + np.arange(97) * 0.01]
    path = tmp_path / "big.csv"
    path.write_text("open_time,open,high,low,close,volume,quote_volume,trades,taker_buy_volume,"
                    "taker_buy_quote_volume\n" + "".join(f"{t},{rest[i % 97]}" for i, t in enumerate(opens.tolist())))
    assert path.stat().st_size > 40e6
    code = ("from image_cache.ingest.csv_source import ingest_csv; "
            f"r = ingest_csv({str(tmp_path / 'm.sqlite')!r}, {str(path)!r}, symbol='BTCUSDT', interval='1m'); "
            "assert r.ok and r.files[0].rows_inserted == %d, r.text(); "
            # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent (pytest) across exec.
            "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))" % n)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
    assert out.returncode == 0, out.stderr
    peak_mb = int(out.stdout.strip()) / 1024
    assert peak_mb < 300, f"peak RSS {peak_mb:.0f} MB"
