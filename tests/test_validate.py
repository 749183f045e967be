"""Every validation rule, on tiny kline CSVs: the error names the file, the line and the rule."""

from __future__ import annotations

import numpy as np
import pytest

from binance_fixtures import kline_csv, kline_rows
from image_cache.core.errors import MarketError
from image_cache.core.grid import utc_ms
from image_cache.ingest.binance_vision import parse_klines
from image_cache.ingest.validate import split_lines, validate

NAME = "BTCUSDT-1m-2024-01.zip"
JANUARY = (utc_ms("2024-01-01"), utc_ms("2024-02-01"))


def parse(data: bytes, interval: str = "1m"):
    return parse_klines(NAME, data, interval, JANUARY)


def rows3() -> list[list[str]]:
    return kline_rows("1m", "2024-01-01", 3)


def rejected(rows: list[list[str]], header: bool = False) -> str:
    with pytest.raises(MarketError) as info:
        parse(kline_csv(rows, header=header))
    return str(info.value)


@pytest.mark.parametrize("field, value, rule", [
    (0, "1704067260000.5", "integer time"),
    (6, "x", "integer time"),
    (8, "1.5", "integer trades"),
    (1, "abc", "decimal number"),
    (2, "inf", "finite decimal"),
    (4, "nan", "finite decimal"),
    (3, "", "decimal number"),
    (3, "0", "price > 0"),
    (1, "-1", "price > 0"),
    (5, "-0.1", "volume >= 0"),
    (7, "-2", "quote_asset_volume >= 0"),
    (10, "-2", "taker_buy_quote_volume >= 0"),
    (8, "-3", "trades >= 0"),
])
def test_field_rules_name_line_and_rule(field: int, value: str, rule: str) -> None:
    rows = rows3()
    rows[1][field] = value
    message = rejected(rows)
    assert message.startswith(f"{NAME}: line 2: {rule}: "), message


def test_low_above_open_or_close() -> None:
    rows = rows3()
    rows[2][3] = rows[2][2]  # low = high > min(open, close)
    assert rejected(rows) == f"{NAME}: line 3: low <= min(open, close): low 103.5, open 102.0, close 102.5"


def test_high_below_open_or_close() -> None:
    rows = rows3()
    rows[0][2] = rows[0][3]  # high = low < max(open, close)
    assert rejected(rows).startswith(f"{NAME}: line 1: high >= max(open, close): ")


def test_field_count() -> None:
    rows = rows3()
    rows[2] = rows[2][:11]
    assert rejected(rows) == f"{NAME}: line 3: field count: 11 fields, expected 12"


def test_line_numbers_count_the_header() -> None:
    rows = rows3()
    rows[1][8] = "-3"
    assert rejected(rows, header=True).startswith(f"{NAME}: line 3: trades >= 0")


def test_open_time_outside_the_period() -> None:
    rows = kline_rows("1m", "2024-01-31T23:58", 3)  # the third opens on 2024-02-01
    assert rejected(rows).startswith(f"{NAME}: line 3: period: open_time 2024-02-01T00:00:00Z")


def test_one_time_unit_per_file() -> None:
    rows = rows3()
    rows[2] = kline_rows("1m", "2024-01-01T00:02", 1, unit="us")[0]
    assert rejected(rows).startswith(f"{NAME}: line 3: time unit: open_time is in us but line 1 is in ms")


def test_time_with_neither_13_nor_16_digits() -> None:
    rows = rows3()
    rows[0][0] = rows[0][0][:-1]
    assert rejected(rows).startswith(f"{NAME}: line 1: time unit: open_time 170406720000 has 12 digits")


def test_close_time_in_another_unit_than_open_time() -> None:
    rows = rows3()
    for row in rows:
        row[6] = row[6] + "999"
    assert "time unit: open_time is in ms but close_time in us" in rejected(rows)


def test_same_open_time_with_other_values_rejects_the_file() -> None:
    rows = rows3()
    clash = list(rows[0])
    clash[4] = "100.25000000"
    message = rejected(rows + [clash])
    assert message == (f"{NAME}: line 4: duplicate open time: open_time 2024-01-01T00:00:00Z also on line 1 "
                       "with other values")


def test_exact_duplicates_are_dropped_and_counted() -> None:
    rows = rows3()
    parsed = parse(kline_csv(rows + [rows[1], rows[0]]))
    assert (parsed.rows_read, parsed.dropped, len(parsed.candles)) == (5, 2, 3)
    assert parsed.candles["open_time"].tolist() == [int(r[0]) for r in rows]


def test_rows_out_of_order_are_sorted() -> None:
    rows = rows3()
    parsed = parse(kline_csv(rows[::-1]))
    assert parsed.candles["open_time"].tolist() == [int(r[0]) for r in rows]
    assert parsed.candles["trades"].tolist() == [10, 11, 12]


def test_off_grid_and_odd_close_time_are_kept_and_flagged() -> None:
    rows = kline_rows("1m", "2024-01-01", 4)
    rows[1][0] = str(int(rows[1][0]) + 1000)  # off the 1m grid (its close time stays on it)
    rows[2][6] = str(int(rows[2][6]) - 30_000)  # a partial candle
    parsed = parse(kline_csv(rows))
    assert (len(parsed.candles), parsed.flagged) == (4, 2)


def test_microseconds_are_floored_to_milliseconds() -> None:
    ms = parse(kline_csv(kline_rows("1h", "2024-01-02", 24)), "1h")
    us = parse(kline_csv(kline_rows("1h", "2024-01-02", 24, unit="us")), "1h")
    assert (ms.time_unit, us.time_unit, us.flagged) == ("ms", "us", 0)
    assert np.array_equal(ms.candles, us.candles)


def test_header_is_detected_per_file() -> None:
    rows = rows3()
    plain = parse(kline_csv(rows))
    headed = parse(kline_csv(rows, header=True))
    assert np.array_equal(plain.candles, headed.candles)
    assert plain.candles["close"].tolist() == [100.5, 100.5, 102.5]


def test_bom_and_crlf_are_accepted() -> None:
    rows = rows3()
    parsed = parse(b"\xef\xbb\xbf" + kline_csv(rows, header=True, line_end="\r\n"))
    assert np.array_equal(parsed.candles, parse(kline_csv(rows)).candles)


@pytest.mark.parametrize("data, message", [
    (b"", f"{NAME}: empty file: no data"),
    (b"\n\n", f"{NAME}: empty file: no data"),
    (kline_csv([], header=True), f"{NAME}: no rows: the file has a header and no data rows"),
    (kline_csv(kline_rows("1m", "2024-01-01", 2)).replace(b"\n", b"\r", 1),
     f"{NAME}: line 1: line ends: carriage return without line feed"),
    (kline_csv(kline_rows("1m", "2024-01-01", 2)) + b"\n" + kline_csv(kline_rows("1m", "2024-01-02", 1)),
     f"{NAME}: line 3: blank line: no fields"),
    (kline_csv(kline_rows("1m", "2024-01-01", 2)) + b"17040\xff\n",
     f"{NAME}: line 3: encoding: byte 0xff is not UTF-8"),
    (b"1" * (10 * 2**20), f"{NAME}: line 1: line length: 10485760 bytes, the limit is 4096"),
])
def test_text_layer_errors(data: bytes, message: str) -> None:
    with pytest.raises(MarketError) as info:
        parse(data)
    assert str(info.value) == message


def test_validate_rejects_unknown_interval_and_no_rows() -> None:
    empty = {c: np.empty(0) for c in ("open_time", "open", "high", "low", "close", "volume", "quote_asset_volume",
                                      "trades", "taker_buy_base_volume", "taker_buy_quote_volume")}
    with pytest.raises(MarketError, match="unknown interval code '7m'"):
        validate("f.csv", "7m", empty, first_line=2, time_unit="ms")
    with pytest.raises(MarketError, match="f.csv: no rows"):
        validate("f.csv", "1m", empty, first_line=2, time_unit="ms")


def test_split_lines_without_final_newline() -> None:
    lines = split_lines("f", b"a,b\nc", max_line_bytes=10)
    assert [lines.line(i) for i in range(len(lines))] == [b"a,b", b"c"]
