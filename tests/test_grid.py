"""core/grid.py's calendar helpers: the one place months are added and UTC times are written."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

import numpy as np
import pytest

from image_cache.core.grid import add_months, day_ms, iso_utc, month_index, now_ms, utc_day, utc_ms, utc_now


@pytest.mark.parametrize("day, count, expected", [
    (date(2024, 12, 1), 1, date(2025, 1, 1)),  # December rolls into January of the next year
    (date(2025, 1, 1), -1, date(2024, 12, 1)),
    (date(2024, 1, 31), 1, date(2024, 2, 29)),  # clamped to the month's last day: leap year
    (date(2023, 1, 31), 1, date(2023, 2, 28)),
    (date(2024, 3, 31), -1, date(2024, 2, 29)),  # back from a month end
    (date(2024, 2, 29), -12, date(2023, 2, 28)),
    (date(2024, 2, 29), 48, date(2028, 2, 29)),
    (date(2024, 5, 15), 0, date(2024, 5, 15)),
    (date(1970, 1, 1), -1, date(1969, 12, 1)),
])
def test_add_months_rolls_years_and_clamps_to_the_month_end(day, count, expected):
    assert add_months(day, count) == expected


def test_add_months_keeps_the_time_of_a_datetime_and_refuses_year_zero():
    moment = datetime(2024, 3, 31, 10, 20, 30, 500, tzinfo=UTC)
    assert add_months(moment, -13) == datetime(2023, 2, 28, 10, 20, 30, 500, tzinfo=UTC)
    with pytest.raises(ValueError):
        add_months(date(1, 1, 1), -1)


def test_month_index_counts_calendar_months_since_1970():
    times = np.array([utc_ms("1969-12-31T23:59"), 0, utc_ms("1970-01-31T23:59:59"), utc_ms("1970-02-01"),
                      utc_ms("2024-02-29T12:00"), utc_ms("2024-12-31T23:59:59")], dtype=np.int64)
    assert month_index(times).tolist() == [-1, 0, 0, 1, 649, 659]
    assert month_index(utc_ms("2025-01-01")) == 660


def test_days_and_times_convert_both_ways_in_utc():
    for text in ("1970-01-01", "2024-02-29", "1969-12-31"):
        assert day_ms(date.fromisoformat(text)) == utc_ms(text)
        assert utc_day(utc_ms(text) + 86_399_999) == date.fromisoformat(text)
    assert utc_day(-1) == date(1969, 12, 31)


def test_times_are_written_to_the_second_with_a_z():
    assert iso_utc(utc_ms("2024-02-29T23:59:59") + 999) == "2024-02-29T23:59:59Z"
    before = now_ms() // 1000 * 1000
    written = utc_now()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", written)
    assert before <= utc_ms(written[:-1]) <= now_ms()
