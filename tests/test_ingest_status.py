"""`python -m ingest status`: series spans, counts, recorded gaps, the file registry, failures."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive
from image_cache.core.errors import MarketError
from image_cache.core.grid import utc_ms
from image_cache.ingest.binance_vision import ingest_paths
from image_cache.ingest.csv_source import ingest_csv
from image_cache.ingest.gaps import find_gaps
from image_cache.ingest.status import status

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def market(tmp_path: Path) -> Path:
    """Two good days (one unverified), one bad day, ingested twice; one known gap."""
    mirror = tmp_path / "m"
    write_archive(mirror, "BTCUSDT-1h-2024-01-15.zip", kline_csv(kline_rows("1h", "2024-01-15", 24)))
    write_archive(mirror, "BTCUSDT-1h-2024-01-17.zip", kline_csv(kline_rows("1h", "2024-01-17", 24)), checksum=None)
    write_archive(mirror, "BTCUSDT-1h-2024-01-16.zip", kline_csv(kline_rows("1h", "2024-01-16", 24)), checksum="wrong")
    db = tmp_path / "market.sqlite"
    ingest_paths(str(db), [str(mirror)])
    ingest_paths(str(db), [str(mirror)])
    return db


def test_series_and_registry(market: Path) -> None:
    result = status(str(market))
    [series] = result.series
    assert series.as_dict() == {"symbol": "BTCUSDT", "interval": "1h", "first_open_time": "2024-01-15T00:00:00Z",
                                "last_open_time": "2024-01-17T23:00:00Z", "candles": 48, "gaps": 1,
                                "venue": "binance spot"}
    assert result.files == {"ok": 1, "unverified": 1, "skipped": 2, "rejected": 2}
    assert result.failures is None and result.ok
    assert result.text().splitlines()[-1] == ("files: 1 ok, 1 unverified, 2 skipped, 2 rejected "
                                              "(current failures: --failures)")


def test_failures_list_files_whose_latest_record_is_a_rejection(market: Path, tmp_path: Path) -> None:
    [failure] = status(str(market), failures=True).failures
    assert failure.file_name == "BTCUSDT-1h-2024-01-16.zip" and "checksum: mismatch" in failure.reason
    # The corrected file is re-uploaded: it is no longer a failure, though its history stays.
    write_archive(tmp_path / "m", "BTCUSDT-1h-2024-01-16.zip", kline_csv(kline_rows("1h", "2024-01-16", 24)))
    ingest_paths(str(market), [str(tmp_path / "m" / "BTCUSDT-1h-2024-01-16.zip")])
    result = status(str(market), failures=True)
    assert result.failures == [] and result.files["rejected"] == 2 and result.series[0].candles == 72
    assert result.series[0].gaps == 0  # the day that filled the gap closed it


def test_gap_counts_are_current_after_every_write(tmp_path: Path) -> None:
    mirror = tmp_path / "m"
    db = str(tmp_path / "market.sqlite")
    for day in ("2024-01-15", "2024-01-17"):
        write_archive(mirror, f"BTCUSDT-1h-{day}.zip", kline_csv(kline_rows("1h", day, 24)))
    ingest_paths(db, [str(mirror)])
    assert status(db).series[0].gaps == 1
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT start_open_time, end_open_time FROM known_gaps").fetchall() == [
            (utc_ms("2024-01-16"), utc_ms("2024-01-16T23:00"))]
    rows = kline_rows("1h", "2024-01-16", 24)
    write_archive(mirror, "BTCUSDT-1h-2024-01-16.zip", kline_csv(rows[:5] + rows[7:]))
    ingest_paths(db, [str(mirror / "BTCUSDT-1h-2024-01-16.zip")])
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT start_open_time, end_open_time FROM known_gaps").fetchall() == [
            (utc_ms("2024-01-16T05:00"), utc_ms("2024-01-16T06:00"))]
    write_archive(mirror, "BTCUSDT-1h-2024-01-16.zip", kline_csv(rows))
    ingest_paths(db, [str(mirror / "BTCUSDT-1h-2024-01-16.zip")])
    assert status(db).series[0].gaps == 0 and status(db).series[0].candles == 72
    # A CSV with holes, after a gap: the incremental refresh equals a full recount.
    hours = [h for h in range(80, 110) if h % 7]
    csv = "time,open,high,low,close,volume\n" + "".join(
        f"{utc_ms('2024-01-15') + h * 3_600_000},1,2,0.5,1.5,1\n" for h in hours)
    (tmp_path / "holes.csv").write_text(csv)
    ingest_csv(db, str(tmp_path / "holes.csv"), symbol="BTCUSDT", interval="1h")
    with sqlite3.connect(db) as conn:
        recorded = conn.execute("SELECT start_open_time, end_open_time FROM known_gaps ORDER BY 1").fetchall()
        times = np.array([r[0] for r in conn.execute("SELECT open_time FROM candles ORDER BY open_time")])
    assert recorded == [(g.first, g.last) for g in find_gaps("1h", times)]
    assert len(recorded) == 5 and status(db).series[0].gaps == 5


def test_missing_database_is_an_error_and_is_not_created(tmp_path: Path) -> None:
    with pytest.raises(MarketError, match="no market database at"):
        status(str(tmp_path / "nope.sqlite"))
    assert not (tmp_path / "nope.sqlite").exists()


def test_not_a_market_database(tmp_path: Path) -> None:
    path = tmp_path / "other.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t(x)")
    with pytest.raises(MarketError, match="is not a market database"):
        status(str(path))


def test_cli_json_and_failures(market: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ingest", "status", "--market-db", str(market), *args], cwd=REPO,
                              capture_output=True, text=True, timeout=60)

    as_json = run("--json", "--failures")
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    assert data["series"][0]["candles"] == 48 and data["files"]["rejected"] == 2
    assert [f["file_name"] for f in data["failures"]] == ["BTCUSDT-1h-2024-01-16.zip"]
    text = run("--failures")
    assert text.returncode == 0
    assert text.stdout.splitlines()[-2:] == [
        "failures: 1", f"  {data['failures'][0]['reason']}"]
    missing = subprocess.run([sys.executable, "-m", "ingest", "status", "--market-db", str(market.parent / "x.sqlite")],
                             cwd=REPO, capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and missing.stderr == f"Error: no market database at {market.parent / 'x.sqlite'}\n"
