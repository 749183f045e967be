"""A kline member streamed chunk by chunk gives what the same member parsed whole gives.

Members larger than WHOLE_MEMBER_BYTES (a monthly 1s file) are decompressed, validated and written
a chunk at a time. Here `whole_member_bytes=0` streams even tiny members and `chunk_bytes=1` makes
every line a chunk of its own, so that every rule spanning rows (order, duplicates, period, grid,
close times, one time unit per file) and the withdrawal of rows a re-issue lacks cross a boundary.
"""

from __future__ import annotations

import sqlite3
import zipfile
from pathlib import Path

import numpy as np
import pytest

from binance_fixtures import checksum_text, kline_csv, kline_rows, write_archive
from image_cache.core.grid import utc_ms
from image_cache.ingest.binance_vision import WHOLE_MEMBER_BYTES, ingest_paths, parse_klines

STREAMED = [dict(whole_member_bytes=0, chunk_bytes=size) for size in (1, 300, 2**20)]
DAY = "2024-01-15"
NAME = f"BTCUSDT-1h-{DAY}.zip"


def market(db: Path) -> tuple[list, list, list]:
    """Candles, known gaps and the registry (what became of each file), as stored."""
    with sqlite3.connect(db) as conn:
        return (conn.execute("SELECT * FROM candles ORDER BY series_id, open_time").fetchall(),
                conn.execute("SELECT * FROM known_gaps ORDER BY series_id, start_open_time").fetchall(),
                conn.execute("SELECT file_name, status, reason, rows_read, rows_inserted, rows_revised, rows_dropped, "
                             "rows_flagged, rows_withdrawn FROM ingested_files ORDER BY id").fetchall())


def ingest(tmp_path: Path, versions: list[bytes], name: str = NAME, **sizes: int) -> tuple[list, list, list]:
    """Ingest each version of `name` in turn into a fresh market; what the market then holds."""
    db = tmp_path / f"market-{sizes.get('chunk_bytes', 'whole')}.sqlite"
    db.unlink(missing_ok=True)
    for i, data in enumerate(versions):
        folder = tmp_path / f"v{i}"
        folder.mkdir(exist_ok=True)
        write_archive(folder, name, data)
        ingest_paths(str(db), [str(folder / name)], **sizes)
    return market(db)


def day(edit=None, *, unit: str = "ms", header: bool = False) -> bytes:
    rows = kline_rows("1h", DAY, 24, unit=unit)
    if edit is not None:
        edit(rows)
    return kline_csv(rows, header=header)


def put(row: int, col: int, value: str):
    return lambda rows: rows[row].__setitem__(col, value)


FILES = {
    "valid": day(),
    "futures header, microseconds": day(unit="us", header=True),
    "exact duplicate rows": day(lambda r: r.insert(5, list(r[4]))),
    "out of order": day(lambda r: r.reverse()),
    "a close time off the interval, flagged": day(put(7, 6, str(utc_ms(DAY) + 7 * 3_600_000 + 5))),
    "one open time off the grid, flagged": day(lambda r: r.insert(3, [str(utc_ms(DAY) + 2 * 3_600_000 + 60_000),
                                                                      *r[2][1:6], str(utc_ms(DAY) + 3 * 3_600_000 - 1),
                                                                      *r[2][7:]])),
    # Errors: each names the line and rule it names when the member is parsed whole.
    "row error at the last line": day(put(23, 5, "-1")),
    "duplicate with other values, across a boundary": day(lambda r: r.insert(11, [*r[10][:5], "999", *r[10][6:]])),
    "duplicate differing in its close time only": day(lambda r: r.insert(11, [*r[10][:6], str(int(r[10][6]) - 5),
                                                                              *r[10][7:]])),
    "outside the period": day(lambda r: r.append([str(utc_ms("2024-01-16")), *r[0][1:6],
                                                  str(utc_ms("2024-01-16") + 3_599_999), *r[0][7:]])),
    "time unit changes after a chunk": day(lambda r: r.__setitem__(12, [r[12][0] + "000", *r[12][1:6],
                                                                        r[12][6] + "000", *r[12][7:]])),
    "field count": day(lambda r: r[9].pop()),
    "not a number": day(put(16, 2, "abc")),
    # Out of order: the rows are sorted through a staging table, the row and period rules run in file order.
    "out of order, a close time off the interval, flagged": day(lambda r: (r.reverse(), put(7, 6, str(
        utc_ms(DAY) + 16 * 3_600_000 + 5))(r))),
    "out of order, then a row error": day(lambda r: (r.reverse(), put(20, 5, "-1")(r))),
    "out of order, then a row outside the period": day(lambda r: (r.reverse(), r.append(
        [str(utc_ms("2024-01-16")), *r[0][1:6], str(utc_ms("2024-01-16") + 3_599_999), *r[0][7:]]))),
    "out of order, duplicate with other values": day(lambda r: (r.reverse(), r.insert(
        11, [*r[10][:5], "999", *r[10][6:]]))),
    "another interval's data": kline_csv(kline_rows("1m", DAY, 90)),
    "another interval's data, out of order": kline_csv(kline_rows("1m", DAY, 90)[::-1]),
    "header only": kline_csv([], header=True),
    "empty member": b"",
}


@pytest.mark.parametrize("case", list(FILES))
def test_a_streamed_member_gives_what_the_whole_member_gives(tmp_path: Path, case: str) -> None:
    whole = ingest(tmp_path, [FILES[case]])
    for sizes in STREAMED:
        assert ingest(tmp_path, [FILES[case]], **sizes) == whole, sizes


@pytest.mark.parametrize("case, reason", [
    ("row error at the last line", f"{NAME}: line 24: volume >= 0: volume is -1.0"),
    ("duplicate with other values, across a boundary",
     f"{NAME}: line 12: duplicate open time: open_time 2024-01-15T10:00:00Z also on line 11 with other values"),
    ("duplicate differing in its close time only",
     f"{NAME}: line 12: duplicate open time: open_time 2024-01-15T10:00:00Z also on line 11 with other values"),
    ("outside the period", f"{NAME}: line 25: period: open_time 2024-01-16T00:00:00Z is outside the file's period "
                           "2024-01-15T00:00:00Z .. 2024-01-16T00:00:00Z"),
    ("time unit changes after a chunk",
     f"{NAME}: line 13: time unit: open_time is in us but line 1 is in ms; one unit per file"),
    ("out of order, then a row error", f"{NAME}: line 21: volume >= 0: volume is -1.0"),
    ("out of order, then a row outside the period",
     f"{NAME}: line 25: period: open_time 2024-01-16T00:00:00Z is outside the file's period "
     "2024-01-15T00:00:00Z .. 2024-01-16T00:00:00Z"),
    ("out of order, duplicate with other values",
     f"{NAME}: line 12: duplicate open time: open_time 2024-01-15T13:00:00Z also on line 11 with other values"),
    ("another interval's data", f"{NAME}: line 2: interval: 88 of 90 open times are off the 1h grid "
                                "(first 2024-01-15T00:01:00Z); the rows look like 1m data"),
    ("another interval's data, out of order", f"{NAME}: line 89: interval: 88 of 90 open times are off the 1h grid "
                                              "(first 2024-01-15T00:01:00Z); the rows look like 1m data"),
    ("field count", f"{NAME}: line 10: field count: 11 fields, expected 12"),
    ("not a number", f"{NAME}: line 17: decimal number: high is 'abc'"),
])
def test_errors_across_a_chunk_boundary_name_the_line_and_write_nothing(tmp_path: Path, case: str,
                                                                      reason: str) -> None:
    candles, gaps, files = ingest(tmp_path, [FILES[case]], whole_member_bytes=0, chunk_bytes=1)
    assert (candles, gaps) == ([], [])
    assert [f[:3] for f in files] == [(NAME, "rejected", reason)]


def test_a_reissued_streamed_month_withdraws_what_it_no_longer_holds(tmp_path: Path) -> None:
    """Rows dropped at the start, inside and at the end of the month, each side of chunk boundaries."""
    month = kline_rows("1h", "2024-02-01", 29 * 24)
    reissue = [row for i, row in enumerate(month) if i >= 3 and not 300 <= i < 310 and i != 500 and i < len(month) - 4]
    versions = [kline_csv(month), kline_csv(reissue)]
    name = "BTCUSDT-1h-2024-02.zip"
    whole = ingest(tmp_path, versions, name)
    assert [f[1:] for f in whole[2]] == [("ok", None, 696, 696, 0, 0, 0, 0), ("ok", None, 678, 0, 0, 0, 0, 18)]
    assert len(whole[0]) == 678 and len(whole[1]) == 2
    for chunk_bytes in (2000, 2**20):  # ~13 lines a chunk, and one chunk
        assert ingest(tmp_path, versions, name, whole_member_bytes=0, chunk_bytes=chunk_bytes) == whole, chunk_bytes


def test_a_member_over_the_old_16_mib_cap_ingests_the_rows_of_the_csv(tmp_path: Path) -> None:
    """A monthly 1s member of ~17 MiB, with the default sizes: streamed, not refused."""
    start = utc_ms("2024-01-01")
    times = start + 1000 * np.arange(WHOLE_MEMBER_BYTES // 48 + 1, dtype=np.int64)
    data = "".join(f"{t},1.5,2,1,1.25,{i % 7},{t + 999},0,{i % 5},0,0,0\n"
                   for i, t in enumerate(times.tolist())).encode()
    assert len(data) > WHOLE_MEMBER_BYTES
    name = "BTCUSDT-1s-2024-01.zip"
    path = tmp_path / "in" / name
    path.parent.mkdir()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr(name.removesuffix(".zip") + ".csv", data)
    (tmp_path / "in" / (name + ".CHECKSUM")).write_text(checksum_text(path.read_bytes(), name))
    result = ingest_paths(str(tmp_path / "market.sqlite"), [str(path)])
    assert [(f.status, f.reason, f.rows_inserted) for f in result.files] == [("ok", None, len(times))]
    expected = parse_klines(name, data, "1s", (start, utc_ms("2024-02-01"))).candles
    with sqlite3.connect(tmp_path / "market.sqlite") as conn:
        stored = conn.execute("SELECT open_time, open, high, low, close, volume, quote_asset_volume, trades, "
                              "taker_buy_base_volume, taker_buy_quote_volume FROM candles "
                              "ORDER BY open_time").fetchall()
    assert stored == expected.tolist()


def test_a_member_over_the_cap_is_refused_in_one_line_writing_nothing(tmp_path: Path) -> None:
    data = kline_csv(kline_rows("1m", "2024-01-15", 1440))
    path = write_archive(tmp_path / "in", "BTCUSDT-1m-2024-01-15.zip", data)
    db = tmp_path / "market.sqlite"
    result = ingest_paths(str(db), [str(path)], max_member_bytes=len(data) - 1, whole_member_bytes=0, chunk_bytes=4096)
    assert [(f.status, f.reason) for f in result.files] == [
        ("rejected", f"BTCUSDT-1m-2024-01-15.zip: zip: member 'BTCUSDT-1m-2024-01-15.csv' is larger than "
                     f"{len(data) - 1} bytes uncompressed")]
    candles, gaps, _ = market(db)
    assert (candles, gaps) == ([], [])
