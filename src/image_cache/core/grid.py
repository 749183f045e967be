"""Intervals, symbols and time: the interval grid both sides agree on, UTC parsing and writing, calendar days
and months, the closed-candle rule."""

from __future__ import annotations

import calendar
import re
import time
from datetime import UTC, date, datetime, timedelta
from typing import TypeVar, overload

import numpy as np

from image_cache.core.errors import MarketError

MINUTE_MS = 60_000
DAY_MS = 86_400_000
WEEK_MS = 7 * DAY_MS
# 1970-01-01 was a Thursday; weekly candles open on Mondays, four days later on the grid.
WEEK_OFFSET_MS = 4 * DAY_MS
# `intervals.ms` for 1mo is nominal (30 days); month arithmetic uses the calendar instead.
MONTH_NOMINAL_MS = 30 * DAY_MS

INTERVAL_MS: dict[str, int] = {
    "1s": 1_000,
    "1m": MINUTE_MS,
    "3m": 3 * MINUTE_MS,
    "5m": 5 * MINUTE_MS,
    "15m": 15 * MINUTE_MS,
    "30m": 30 * MINUTE_MS,
    "1h": 60 * MINUTE_MS,
    "2h": 120 * MINUTE_MS,
    "4h": 240 * MINUTE_MS,
    "6h": 360 * MINUTE_MS,
    "8h": 480 * MINUTE_MS,
    "12h": 720 * MINUTE_MS,
    "1d": DAY_MS,
    "3d": 3 * DAY_MS,
    "1w": WEEK_MS,
    "1mo": MONTH_NOMINAL_MS,
}

SYMBOL_RE = re.compile(r"^[A-Z0-9][A-Z0-9_-]{0,39}$")
# Longest first, so that e.g. FDUSD wins over USD.
QUOTE_ASSETS = ("FDUSD", "USDT", "USDC", "BUSD", "TUSD", "USDP", "DAI", "USD", "EUR", "TRY", "BRL",
                "GBP", "JPY", "BTC", "ETH", "BNB")


def check_interval(code: str) -> str:
    if code not in INTERVAL_MS:
        raise MarketError(f"unknown interval code {code!r} (known: {' '.join(INTERVAL_MS)})")
    return code


def check_symbol(symbol: str) -> str:
    if not SYMBOL_RE.match(symbol):
        raise MarketError(f"invalid symbol {symbol!r}: must match {SYMBOL_RE.pattern}")
    return symbol


def split_symbol(symbol: str) -> tuple[str, str]:
    """(base_asset, quote_asset) from a symbol name; COIN-M `BTCUSD_PERP` → (BTC, USD)."""
    core = symbol.split("_", 1)[0]
    for quote in QUOTE_ASSETS:
        if core.endswith(quote) and len(core) > len(quote):
            return core[: -len(quote)], quote
    return core, ""


@overload
def month_index(t_ms: np.ndarray) -> np.ndarray: ...
@overload
def month_index(t_ms: int) -> int: ...
@overload
def month_index(t_ms: np.ndarray | int) -> np.ndarray | int: ...


def month_index(t_ms: np.ndarray | int) -> np.ndarray | int:
    """Calendar months since 1970-01 of UTC epoch-ms times (vectorised): the key of a time's month."""
    months = np.asarray(t_ms, dtype="datetime64[ms]").astype("datetime64[M]").astype(np.int64)
    return months if np.ndim(t_ms) else int(months)


def _month_start_ms(index: np.ndarray | int) -> np.ndarray | int:
    starts = np.asarray(index, dtype=np.int64).astype("datetime64[M]").astype("datetime64[ms]").astype(np.int64)
    return starts if np.ndim(index) else int(starts)


@overload
def grid_index(code: str, open_time_ms: np.ndarray) -> np.ndarray: ...
@overload
def grid_index(code: str, open_time_ms: int) -> int: ...
@overload
def grid_index(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | int: ...


def grid_index(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | int:
    """Position of an open time on the interval's grid (floor for times off the grid).

    Fixed intervals count from the epoch (1w from the first Monday); 1mo counts calendar months.
    The renderer's stride grid and gap detection both use this, so the grid never moves.
    """
    if code == "1mo":
        return month_index(open_time_ms)
    offset = WEEK_OFFSET_MS if code == "1w" else 0
    return (np.asarray(open_time_ms, dtype=np.int64) - offset) // INTERVAL_MS[code] if np.ndim(open_time_ms) \
        else (int(open_time_ms) - offset) // INTERVAL_MS[code]


@overload
def grid_time(code: str, index: np.ndarray) -> np.ndarray: ...
@overload
def grid_time(code: str, index: int) -> int: ...
@overload
def grid_time(code: str, index: np.ndarray | int) -> np.ndarray | int: ...


def grid_time(code: str, index: np.ndarray | int) -> np.ndarray | int:
    """Inverse of grid_index: the open time of grid slot `index`."""
    if code == "1mo":
        return _month_start_ms(index)
    offset = WEEK_OFFSET_MS if code == "1w" else 0
    return np.asarray(index, dtype=np.int64) * INTERVAL_MS[code] + offset if np.ndim(index) \
        else int(index) * INTERVAL_MS[code] + offset


@overload
def on_grid(code: str, open_time_ms: np.ndarray) -> np.ndarray: ...
@overload
def on_grid(code: str, open_time_ms: int) -> bool: ...
@overload
def on_grid(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | bool: ...


def on_grid(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | bool:
    return grid_time(code, grid_index(code, open_time_ms)) == open_time_ms


@overload
def close_time_ms(code: str, open_time_ms: np.ndarray) -> np.ndarray: ...
@overload
def close_time_ms(code: str, open_time_ms: int) -> int: ...
@overload
def close_time_ms(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | int: ...


def close_time_ms(code: str, open_time_ms: np.ndarray | int) -> np.ndarray | int:
    """Exclusive end of a candle: open time of the next grid slot (calendar months for 1mo)."""
    if code == "1mo":
        return grid_time(code, grid_index(code, open_time_ms) + 1)
    return open_time_ms + INTERVAL_MS[code]


@overload
def utc_ms(value: str) -> int: ...
@overload
def utc_ms(value: None) -> None: ...
@overload
def utc_ms(value: str | None) -> int | None: ...


def utc_ms(value: str | None) -> int | None:
    """Parse a UTC date or datetime (`2024-01-01`, `2024-01-01T12:00`) to epoch milliseconds."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MarketError(f"invalid date {value!r}: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS] (UTC)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return calendar.timegm(parsed.utctimetuple()) * 1000 + parsed.microsecond // 1000


def iso_utc(ms: int) -> str:
    """`2024-01-01T12:00:00Z`: how times are written, in messages and in both databases' text columns."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_EPOCH_DAY = date(1970, 1, 1)
_Day = TypeVar("_Day", bound=date)


def utc_day(ms: int) -> date:
    """The UTC day holding an epoch-ms time."""
    return _EPOCH_DAY + timedelta(days=ms // DAY_MS)


def day_ms(day: date) -> int:
    """Epoch ms of a day's 00:00 UTC."""
    return (day - _EPOCH_DAY).days * DAY_MS


def add_months(day: _Day, count: int) -> _Day:
    """`day` (a date or datetime, its time kept) `count` calendar months later (earlier when negative), its
    day of the month clamped to the new month's last: months have no fixed length, so they are added here only.
    ValueError before year 1 or after 9999."""
    year, month = divmod(day.year * 12 + day.month - 1 + count, 12)
    return day.replace(year=year, month=month + 1, day=min(day.day, calendar.monthrange(year, month + 1)[1]))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def utc_now() -> str:
    """This moment as iso_utc writes it (the stamps of runs, files and venue choices)."""
    return iso_utc(now_ms())
