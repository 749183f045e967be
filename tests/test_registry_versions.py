"""The registry tells the truth about file versions: re-issues, withdrawn rows, older versions, misnamed copies."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from binance_fixtures import kline_csv, kline_rows, write_archive
from image_cache.core.grid import utc_ms
from image_cache.ingest.binance_vision import ingest_paths

NAME = "BTCUSDT-1h-2024-01-15.zip"


def open_times(db: str) -> list[int]:
    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT open_time FROM candles ORDER BY open_time")]


def test_a_reissue_that_withdraws_rows_removes_them_and_the_original_can_come_back(tmp_path: Path) -> None:
    db = str(tmp_path / "market.sqlite")
    rows = kline_rows("1h", "2024-01-15", 24)
    original = write_archive(tmp_path / "v1", NAME, kline_csv(rows))
    assert ingest_paths(db, [str(original)]).totals()["rows_inserted"] == 24

    reissue = write_archive(tmp_path / "v2", NAME, kline_csv(rows[:20]))
    result = ingest_paths(db, [str(reissue)])
    assert result.files[0].status == "ok" and result.files[0].rows_withdrawn == 4
    assert "4 withdrawn" in result.text()
    assert open_times(db) == [utc_ms("2024-01-15") + h * 3_600_000 for h in range(20)]

    # Re-ingesting the original (an older version) is a deliberate revision, not a repeat.
    again = ingest_paths(db, [str(original)])
    assert again.files[0].status == "ok" and again.files[0].rows_inserted == 4
    assert len(open_times(db)) == 24
    # The current version ingested once more is a repeat.
    assert ingest_paths(db, [str(original)]).files[0].status == "skipped"
    with sqlite3.connect(db) as conn:
        history = conn.execute("SELECT status, rows_inserted, rows_withdrawn FROM ingested_files "
                               "ORDER BY id").fetchall()
    assert history == [("ok", 24, 0), ("ok", 0, 4), ("ok", 4, 0), ("skipped", 0, 0)]


def test_the_same_bytes_under_another_days_name_are_rejected(tmp_path: Path) -> None:
    db = str(tmp_path / "market.sqlite")
    first = write_archive(tmp_path / "a", NAME, kline_csv(kline_rows("1h", "2024-01-15", 24)))
    ingest_paths(db, [str(first)])
    copy = tmp_path / "b" / "BTCUSDT-1h-2024-01-16.zip"
    copy.parent.mkdir()
    shutil.copy(first, copy)
    result = ingest_paths(db, [str(copy)])
    assert result.files[0].status == "rejected"
    assert result.files[0].reason == ("BTCUSDT-1h-2024-01-16.zip: line 1: period: open_time 2024-01-15T00:00:00Z "
                                      "is outside the file's period 2024-01-16T00:00:00Z .. 2024-01-17T00:00:00Z")
    assert len(open_times(db)) == 24


def test_an_archive_with_rows_outside_its_named_period_is_rejected_whole(tmp_path: Path) -> None:
    db = str(tmp_path / "market.sqlite")
    rows = kline_rows("1h", "2024-01-15", 25)  # one hour into the next day
    result = ingest_paths(db, [str(write_archive(tmp_path, NAME, kline_csv(rows)))])
    assert result.files[0].status == "rejected" and "line 25: period" in result.files[0].reason
    assert open_times(db) == []
