"""A CSV read in small chunks gives the same rows, counts and errors as one read in a single chunk.

The chunk size is the number of text bytes parsed at a time; 1 byte makes every line a chunk of its
own, so every rule that spans rows (time order, duplicates, grid spacing, close labels, one time
unit per file) is exercised across a chunk boundary.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from image_cache.core.errors import MarketError
from image_cache.core.grid import utc_ms
from image_cache.ingest.csv_source import ingest_csv, parse_csv

HOUR = 3_600_000
T0 = utc_ms("2024-01-01")
HEADER = "open_time,open,high,low,close,volume\n"
CHUNKS = (1, 40, 100, 2**20)


def row(t: int, close: float = 1.5, volume: float | str = 10) -> str:
    return f"{t},1,2,0.5,{close},{volume}\n"


def csv(*rows: str, header: str = HEADER) -> bytes:
    return (header + "".join(rows)).encode()


def hours(n: int, start: int = T0) -> list[str]:
    return [row(start + i * HOUR, close=1 + (i % 5) / 10) for i in range(n)]


def outcome(data: bytes, interval: str, chunk_bytes: int, **options) -> tuple:
    """What parsing gives: the rows and counts, or the error message."""
    try:
        parsed = parse_csv("f.csv", data, interval, chunk_bytes=chunk_bytes, **options)
    except MarketError as exc:
        return ("error", str(exc))
    return ("ok", parsed.candles.tolist(), parsed.rows_read, parsed.dropped, parsed.flagged, parsed.time_unit)


FILES = {
    "in order": (csv(*hours(30)), "1h"),
    "exact duplicate rows": (csv(*hours(5), *hours(5)[4:], *hours(9)[5:]), "1h"),
    "descending": (csv(*reversed(hours(30))), "1h"),
    "a few rows off the grid, flagged": (csv(*hours(10), row(T0 + 10 * HOUR + 60_000), *hours(20)[11:]), "1h"),
    "iso dates": (csv(*[f"2024-01-{d:02d},1,2,0.5,1.5,10\n" for d in range(1, 29)]), "1d"),
    "day ends read as closes": (csv(*[f"2024-01-{d:02d}T23:59:59,1,2,0.5,1.5,10\n" for d in range(1, 29)]), "1d"),
    "one day end, the rest opens": (csv("2024-01-01T23:59:59,1,2,0.5,1.5,10\n",
                                        *[f"2024-01-{d:02d},1,2,0.5,1.5,10\n" for d in range(3, 29)]), "1d"),
    "seconds": (csv(*[row((T0 + i * HOUR) // 1000) for i in range(12)]), "1h"),
    # Errors
    "duplicate with other values": (csv(*hours(12), row(T0 + 11 * HOUR, close=1.9)), "1h"),
    "duplicate out of order": (csv(*hours(12), row(T0 + 3 * HOUR, close=1.9)), "1h"),
    "row error at the last line": (csv(*hours(20), row(T0 + 20 * HOUR, volume=-1)), "1h"),
    "row error after an earlier duplicate": (csv(*hours(4), row(T0 + 3 * HOUR, close=1.9), *hours(9)[4:],
                                                 row(T0 + 9 * HOUR, volume=-1)), "1h"),
    "another interval's data": (csv(*[row(T0 + i * 60_000) for i in range(90)]), "1h"),
    "sparse data of another interval": (csv(*[row(T0 + i * 4 * HOUR) for i in range(20)]), "1h"),
    "off the grid, spaced like it": (csv(*[row(T0 + 30 * 60_000 + i * HOUR) for i in range(20)]), "1h"),
    "unit changes after a chunk": (csv(*hours(8), row((T0 + 8 * HOUR) // 1000)), "1h"),
    "an iso date among epoch times": (csv(*hours(8), "2024-01-01T09:00:00,1,2,0.5,1.5,10\n"), "1h"),
    # A chunk is checked rule by rule: here the later line breaks the rule checked first.
    "bad number, then a bad field count": (csv(*hours(3), row(T0 + 3 * HOUR, volume="x"), *hours(8)[4:],
                                               row(T0 + 8 * HOUR) + ",\n"), "1h"),
    "bad number, then a blank line": (csv(*hours(3), row(T0 + 3 * HOUR, volume="x"), *hours(8)[4:], "\n"), "1h"),
}


@pytest.mark.parametrize("case", list(FILES))
def test_any_chunk_size_gives_what_one_chunk_gives(case: str) -> None:
    data, interval = FILES[case]
    whole = outcome(data, interval, 2**30)
    for size in CHUNKS:
        assert outcome(data, interval, size) == whole, f"chunk_bytes={size}"


@pytest.mark.parametrize("case, message", [
    ("duplicate with other values", "f.csv: line 14: duplicate open time: open_time 2024-01-01T11:00:00Z "
                                    "also on line 13 with other values"),
    ("duplicate out of order", "f.csv: line 14: duplicate open time: open_time 2024-01-01T03:00:00Z also on line 5 "
                               "with other values"),
    ("row error at the last line", "f.csv: line 22: volume >= 0: volume is -1.0"),
    ("row error after an earlier duplicate", "f.csv: line 6: duplicate open time: open_time 2024-01-01T03:00:00Z "
                                             "also on line 5 with other values"),
    ("another interval's data", "f.csv: line 3: interval: 88 of 90 open times are off the 1h grid "
                                "(first 2024-01-01T00:01:00Z); the rows look like 1m data"),
    ("sparse data of another interval", "f.csv: line 3: interval: no two candles are one 1h apart; "
                                        "the rows look like 4h data"),
    ("off the grid, spaced like it", "f.csv: line 2: interval: 20 of 20 open times are off the 1h grid "
                                     "(first 2024-01-01T00:30:00Z); the rows look like 1h data (if the times are "
                                     "the candles' close, use --time-label close)"),
    ("unit changes after a chunk",
     "f.csv: line 10: time unit: open_time is in s but line 2 is in ms; one unit per file"),
    ("an iso date among epoch times", "f.csv: line 10: integer time: open_time is '2024-01-01T09:00:00'"),
    ("bad number, then a bad field count", "f.csv: line 5: decimal number: volume is 'x'"),
    ("bad number, then a blank line", "f.csv: line 5: decimal number: volume is 'x'"),
])
def test_errors_across_a_chunk_boundary_name_the_line_and_rule(case: str, message: str) -> None:
    data, interval = FILES[case]
    assert outcome(data, interval, 1) == ("error", message)


def test_a_descending_file_is_sorted_and_a_day_end_file_read_as_closes() -> None:
    parsed = parse_csv("f.csv", FILES["descending"][0], "1h", chunk_bytes=1)
    assert parsed.candles["open_time"].tolist() == [T0 + i * HOUR for i in range(30)]
    warnings: list[str] = []
    closes = parse_csv("f.csv", FILES["day ends read as closes"][0], "1d", chunk_bytes=1, warn=warnings.append)
    assert closes.candles["open_time"][0] == T0
    assert warnings == ["f.csv: every time is a day's 23:59:59: read as the candles' close "
                        "(--time-label open to override)"]
    assert parse_csv("f.csv", FILES["one day end, the rest opens"][0], "1d", chunk_bytes=1).flagged == 1


def test_a_time_label_given_is_not_suggested_and_a_header_alone_has_no_rows() -> None:
    """With --time-label given the file is never read for close stamps: the one pass finds the errors."""
    for size in CHUNKS:
        assert outcome(FILES["off the grid, spaced like it"][0], "1h", size, time_label="open") == (
            "error", "f.csv: line 2: interval: 20 of 20 open times are off the 1h grid (first 2024-01-01T00:30:00Z); "
                     "the rows look like 1h data")
        assert outcome(csv(), "1h", size, time_label="open") == (
            "error", "f.csv: no rows: the file has a header and no data rows")


def market(db: Path) -> list[str]:
    """Everything the market holds but the registry of ingested files and the change tracking (its
    revisions are random by design), as SQL text."""
    with sqlite3.connect(db) as conn:
        return [line for line in conn.iterdump()
                if not any(name in line for name in ("ingested_files", "candle_changes", "candle_revisions"))]


@pytest.mark.parametrize("rows, counts, gap", [
    (hours(300), ("ok", 255, 240, 8, 5), (120, 149)),  # keeps 0-99 and 150-299
    (hours(300)[::-1], ("ok", 255, 220, 24, 5), (150, 199)),  # keeps 299-200 and 149-0
], ids=["in order", "descending"])
def test_ingest_in_small_chunks_writes_the_same_market(tmp_path: Path, rows: list[str], counts: tuple,
                                                       gap: tuple[int, int]) -> None:
    # A gap, exact duplicates and an earlier file (hours 90-119) revised: known gaps and counts agree too.
    data = csv(*rows[:100], *rows[95:100], *rows[150:])
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    seen = []
    for size in (2**20, 64):
        db = tmp_path / f"m{size}.sqlite"
        (tmp_path / "old.csv").write_bytes(csv(*[row(T0 + i * HOUR, close=1.1) for i in range(90, 120)]))
        assert ingest_csv(str(db), str(tmp_path / "old.csv"), symbol="BTCUSDT", interval="1h").ok
        result = ingest_csv(str(db), str(path), symbol="BTCUSDT", interval="1h", chunk_bytes=size)
        f = result.files[0]
        seen.append((market(db), f.status, f.rows_read, f.rows_inserted, f.rows_revised, f.rows_dropped))
    assert seen[0] == seen[1]
    assert seen[0][1:] == counts
    gaps = [line for line in seen[0][0] if "known_gaps\" VALUES" in line]
    assert gaps == [f'INSERT INTO "known_gaps" VALUES(1,{T0 + gap[0] * HOUR},{T0 + gap[1] * HOUR});']


@pytest.mark.parametrize("order", ["in order", "descending"])
def test_a_file_rejected_at_its_last_line_leaves_the_market_unchanged(tmp_path: Path, order: str) -> None:
    db = tmp_path / "m.sqlite"
    (tmp_path / "old.csv").write_bytes(csv(*hours(50)))
    assert ingest_csv(str(db), str(tmp_path / "old.csv"), symbol="BTCUSDT", interval="1h").ok
    before = market(db)
    # Revises every stored row and adds 250 more before the bad last line; many chunks are written first.
    rows = [row(T0 + i * HOUR, close=1.2) for i in range(300)]
    rows = rows if order == "in order" else rows[::-1]
    path = tmp_path / "new.csv"
    path.write_bytes(csv(*rows, row(T0 + 300 * HOUR, close=3)))
    result = ingest_csv(str(db), str(path), symbol="BTCUSDT", interval="1h", chunk_bytes=64)
    assert result.files[0].status == "rejected"
    assert result.files[0].reason == "new.csv: line 302: high >= max(open, close): high 2.0, open 1.0, close 3.0"
    assert market(db) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT status, rows_inserted FROM ingested_files ORDER BY id").fetchall() == \
            [("ok", 50), ("rejected", 0)]
