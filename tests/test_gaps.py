"""Gap finding on the interval grid and the `gaps` command's known_gaps rows."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np

from image_cache.core.grid import DAY_MS, MINUTE_MS, utc_ms
from image_cache.ingest.gaps import Gap, find_gaps, gap_arrays
from image_cache.ingest.schema import CANDLE_DTYPE, connect_writer, series_id, upsert_candles
from image_cache.ingest.venues import BINANCE_SPOT

ROOT = str(Path(__file__).resolve().parents[1])


def test_a_hole_in_minutes():
    t0 = utc_ms("2024-03-05T10:00")
    times = np.array([t0 + i * MINUTE_MS for i in range(20) if not 5 <= i <= 8 and i != 12])
    assert find_gaps("1m", times) == [Gap(t0 + 5 * MINUTE_MS, t0 + 8 * MINUTE_MS, 4),
                                      Gap(t0 + 12 * MINUTE_MS, t0 + 12 * MINUTE_MS, 1)]


def test_no_gap_for_consecutive_short_or_empty_series():
    t0 = utc_ms("2024-03-05")
    assert find_gaps("1h", np.array([t0 + i * 3_600_000 for i in range(48)])) == []
    assert find_gaps("1h", np.array([t0])) == []
    assert find_gaps("1h", np.array([], dtype=np.int64)) == []


def test_weeks_and_months_use_their_calendar_grid():
    monday = utc_ms("2024-01-01")
    weeks = np.array([monday, monday + 7 * DAY_MS, monday + 28 * DAY_MS])
    assert find_gaps("1w", weeks) == [Gap(monday + 14 * DAY_MS, monday + 21 * DAY_MS, 2)]
    months = np.array([utc_ms("2024-01-01"), utc_ms("2024-04-01"), utc_ms("2024-05-01")])
    assert find_gaps("1mo", months) == [Gap(utc_ms("2024-02-01"), utc_ms("2024-03-01"), 2)]


def test_an_off_grid_candle_is_not_a_gap():
    t0 = utc_ms("2018-01-01")
    times = np.array([t0, t0 + MINUTE_MS + 30_000, t0 + 2 * MINUTE_MS])
    first, last, count = gap_arrays("1m", times)
    assert len(first) == len(last) == len(count) == 0


def _series(db: str, symbol: str, interval: str, times: list[int]) -> None:
    candles = np.zeros(len(times), dtype=CANDLE_DTYPE)
    candles["open_time"] = times
    for name in ("open", "high", "low", "close"):
        candles[name] = 1.0
    conn = connect_writer(db)
    conn.execute("BEGIN")
    upsert_candles(conn, series_id(conn, symbol, interval, BINANCE_SPOT), candles)
    conn.execute("COMMIT")
    conn.close()


def _known_gaps(db: str) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("""SELECT s.symbol, i.code, g.start_open_time, g.end_open_time FROM known_gaps g
                               JOIN series se ON se.id = g.series_id JOIN symbols s ON s.id = se.symbol_id
                               JOIN intervals i ON i.id = se.interval_id ORDER BY 1, 2, 3""").fetchall()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli_records_and_replaces_known_gaps(tmp_path):
    db = str(tmp_path / "market.sqlite")
    h = 3_600_000
    t0 = utc_ms("2024-03-05")
    _series(db, "AAAUSDT", "1h", [t0 + i * h for i in range(10) if i not in (3, 4, 7)])
    _series(db, "BBBUSDT", "1h", [t0, t0 + 5 * h])
    _series(db, "AAAUSDT", "1d", [t0, t0 + 2 * DAY_MS])

    run = _cli("gaps", "--market-db", db, "--symbols", "AAAUSDT", "--intervals", "1h")

    assert run.returncode == 0, run.stderr
    assert _known_gaps(db) == [("AAAUSDT", "1h", t0 + 3 * h, t0 + 4 * h), ("AAAUSDT", "1h", t0 + 7 * h, t0 + 7 * h)]
    assert "AAAUSDT 1h: 7 candles, 2 gap(s), 3 missing" in run.stdout
    assert "2024-03-05T03:00:00Z … 2024-03-05T04:00:00Z (2 missing)" in run.stdout

    _series(db, "AAAUSDT", "1h", [t0 + 3 * h, t0 + 4 * h])  # the missing hours arrive later
    run = _cli("gaps", "--market-db", db, "--json")

    assert run.returncode == 0, run.stderr
    assert _known_gaps(db) == [("AAAUSDT", "1d", t0 + DAY_MS, t0 + DAY_MS),
                               ("AAAUSDT", "1h", t0 + 7 * h, t0 + 7 * h),
                               ("BBBUSDT", "1h", t0 + h, t0 + 4 * h)]
    report = json.loads(run.stdout)
    assert report["gaps"] == 3
    assert [(s["symbol"], s["interval"], s["missing"]) for s in report["series"]] == [
        ("AAAUSDT", "1h", 1), ("AAAUSDT", "1d", 1), ("BBBUSDT", "1h", 4)]


def test_cli_rejects_an_unknown_interval(tmp_path):
    run = _cli("gaps", "--market-db", str(tmp_path / "market.sqlite"), "--intervals", "7m")
    assert run.returncode == 2  # a usage error
    assert run.stderr.startswith("Error: python -m ingest gaps: argument --intervals: unknown interval code '7m'")
