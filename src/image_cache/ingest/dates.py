"""`--start` and `--end` as people write them, resolved once per run in UTC.

A date or datetime (`2024-01-01`, `2024-01-01T12:00`), `now`, `today` (00:00 UTC), `N hours ago`,
`N days ago`, `N weeks ago`, `N months ago` (calendar months, the day clamped to the month's last),
and, for `--start`, `inception`: the first candle the venue has, found per series by first_candle().
"""

from __future__ import annotations

import calendar
import re
from collections.abc import Callable
from datetime import UTC, datetime

from image_cache.core import flags
from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, add_months, grid_index, grid_time, iso_utc, now_ms, utc_ms

INCEPTION = "inception"
_AGO_RE = re.compile(r"^(\d{1,6})\s+(hour|day|week|month)s?\s+ago$")
_UNIT_MS = {"hour": 3_600_000, "day": DAY_MS, "week": 7 * DAY_MS}
# Where the search for a venue's first candle starts: before any crypto exchange had klines.
EARLIEST_MS = utc_ms("2009-01-01")
# The most requests first_candle() makes: a halving search over 1m slots since 2009 needs about 24.
MAX_PROBES = 40


def check_date(text: str, *, inception: bool = False) -> str:
    """`text` when it is a date resolve_date() takes (`inception` only where the caller allows it)."""
    value = text.strip().lower()
    if value == INCEPTION:
        if not inception:
            raise MarketError(f"{text!r}: inception is taken only by --start of api, update and ccxt")
        return value
    if value in ("now", "today"):
        return value
    if _AGO_RE.match(value):
        resolve_date(value, now_ms())  # one that lands before 1970 is refused here, as a usage error
        return value
    utc_ms(text)
    return text


def resolve_date(text: str | None, now: int) -> int | None:
    """Epoch ms of a date as check_date() takes it, relative to `now` (epoch ms, UTC); not `inception`."""
    if text is None:
        return None
    value = text.strip().lower()
    if value == "now":
        return now
    if value == "today":
        return now - now % DAY_MS
    if match := _AGO_RE.match(value):
        count, unit = int(match[1]), match[2]
        if unit != "month":
            ms = now - count * _UNIT_MS[unit]
        else:
            try:
                moment = add_months(datetime.fromtimestamp(now / 1000, tz=UTC), -count)
            except ValueError:  # before year 1; a later year before 1970 is refused below
                raise MarketError(f"{text!r} is before 1970-01-01") from None
            ms = calendar.timegm(moment.utctimetuple()) * 1000 + now % 1000
        if ms < 0:
            raise MarketError(f"{text!r} is before 1970-01-01")
        return ms
    if value == INCEPTION:
        raise MarketError("inception is found per series, not resolved as a date")
    return utc_ms(text)


def described(text: str | None, ms: int | None) -> str | None:
    """How a resolved date is printed: `30 days ago = 2024-05-02T10:00:00Z`."""
    if text is None or ms is None:
        return None
    return iso_utc(ms) if text == iso_utc(ms) else f"{text} = {iso_utc(ms)}"


def first_candle(probe: Callable[[int], int | None], interval: str, now: int) -> int | None:
    """The open time of the venue's first candle, or None when it has none before `now`.

    `probe(t)`: the open time of the first candle at or after `t` the venue serves (one request with a
    start time and a limit of 1), or None. A venue that answers a start before its history with its
    first candle is settled by the first probe; one that answers nothing there is searched by halving
    the slots between that start and now for the earliest start it answers. MAX_PROBES bounds both.
    """
    found = probe(EARLIEST_MS)
    if found is not None:
        return found
    lo, hi = int(grid_index(interval, EARLIEST_MS)), int(grid_index(interval, now))
    best = probe(int(grid_time(interval, hi)))
    if best is None:
        return None
    probes = 2
    # Invariant: nothing is served from slot lo, `best` from slot hi.
    while hi - lo > 1:
        if probes >= MAX_PROBES:
            raise MarketError(f"inception: no first candle found in {MAX_PROBES} requests")
        mid = (lo + hi) // 2
        answer = probe(int(grid_time(interval, mid)))
        probes += 1
        if answer is None:
            lo = mid
        else:
            hi, best = mid, answer
    return best


START_FLAG = flags.flag_type(lambda text: check_date(text, inception=True))
END_FLAG = flags.flag_type(check_date)
