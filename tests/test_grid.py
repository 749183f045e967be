"""core/grid.py's UTC helpers: the one place UTC times are written."""

from __future__ import annotations

import re

from image_cache.core.grid import iso_utc, now_ms, utc_ms, utc_now


def test_times_are_written_to_the_second_with_a_z():
    assert iso_utc(utc_ms("2024-02-29T23:59:59") + 999) == "2024-02-29T23:59:59Z"
    before = now_ms() // 1000 * 1000
    written = utc_now()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", written)
    assert before <= utc_ms(written[:-1]) <= now_ms()
