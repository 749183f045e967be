"""`--start`/`--end` as people write them: relative dates resolved once in UTC, and `inception`."""

from __future__ import annotations

import json
import sqlite3

import pytest

from fake_binance import FakeBinance
from image_cache.cli.ingest import main as ingest_main
from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, iso_utc, now_ms, utc_ms
from image_cache.ingest.dates import MAX_PROBES, check_date, first_candle, resolve_date

NOW = utc_ms("2024-03-31T10:20:30")


@pytest.mark.parametrize("text, expected", [
    ("now", "2024-03-31T10:20:30Z"), ("today", "2024-03-31T00:00:00Z"), ("2 hours ago", "2024-03-31T08:20:30Z"),
    ("1 hour ago", "2024-03-31T09:20:30Z"), ("3 days ago", "2024-03-28T10:20:30Z"),
    ("2 weeks ago", "2024-03-17T10:20:30Z"), ("1 month ago", "2024-02-29T10:20:30Z"),
    ("13 months ago", "2023-02-28T10:20:30Z"), ("2024-01-05", "2024-01-05T00:00:00Z"),
])
def test_relative_dates_resolve_against_one_now_in_utc(text, expected):
    assert iso_utc(resolve_date(check_date(text), NOW)) == expected


def test_dates_that_mean_nothing_are_refused():
    for text in ("yesterday", "3 fortnights ago", "days ago", "2024-13-01"):
        with pytest.raises(MarketError):
            check_date(text)
    with pytest.raises(MarketError, match="inception"):
        check_date("inception")
    assert check_date("inception", inception=True) == "inception"


def test_inception_is_a_bounded_search_even_where_a_start_before_history_answers_nothing():
    """Some venues answer nothing for a start before their history: halving the slots finds the first one."""
    listing = utc_ms("2019-07-08T13:47")
    asked: list[int] = []

    def probe(t: int) -> int | None:
        asked.append(t)
        return None if t < listing else t  # probes fall on the 1m grid

    assert first_candle(probe, "1m", utc_ms("2026-12-01")) == listing
    assert len(asked) <= MAX_PROBES


def test_api_takes_inception_and_relative_dates_and_prints_them(tmp_path, capsys):
    fake = FakeBinance()
    try:
        today = now_ms() - now_ms() % DAY_MS
        listed = utc_ms("2021-06-01")
        fake.add_series("spot", "BTCUSDT", "1d", listed, (today - listed) // DAY_MS + 1)
        fake.add_series("spot", "ETHUSDT", "1d", listed, (today - listed) // DAY_MS + 1)
        db = tmp_path / "market.sqlite"
        assert ingest_main(["api", "--market-db", str(db), "--symbols", "BTCUSDT", "--intervals", "1d",
                            "--start", "inception", "--api-url", fake.url]) == 0
        out = capsys.readouterr().out
        assert "inception BTCUSDT 1d: 2021-06-01T00:00:00Z" in out
        assert len(fake.api_requests()) <= MAX_PROBES + 2  # the search, then the pages of klines
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT MIN(open_time) FROM candles").fetchone()[0] == listed

        assert ingest_main(["api", "--market-db", str(db), "--symbols", "ETHUSDT", "--intervals", "1d",
                            "--start", "30 days ago", "--end", "today", "--api-url", fake.url, "--json"]) == 0
        summary = json.loads(capsys.readouterr().out)
        start = summary["dates"]["start"]
        assert start.startswith("30 days ago = ") and summary["dates"]["end"] == "today = " + iso_utc(today)
        # 30 days before this moment is inside a day: the candles from the next 00:00 up to today's.
        assert summary["rows_inserted"] == 29
    finally:
        fake.close()


@pytest.mark.parametrize("text", ["99999 months ago", "999999 weeks ago", "999999 days ago"])
def test_a_relative_date_before_1970_is_a_usage_error_not_a_traceback(tmp_path, capsys, text):
    """`--start "99999 months ago"` ended in `ValueError: year -6307 is out of range` (found by review)."""
    assert ingest_main(["api", "--market-db", str(tmp_path / "m.sqlite"), "--symbols", "BTCUSDT", "--intervals",
                        "1h", "--start", text, "--api-url", "http://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("Error: ") and "before 1970-01-01" in err, err
    assert not (tmp_path / "m.sqlite").exists()
