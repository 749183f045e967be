"""Checks every candle source shares: text hygiene, numeric rules, time units, order and duplicates.

Pure functions on bytes and numpy arrays. Each violation raises MarketError naming the file, the
line (1-based, counting a header line) and the rule, so that a rejected file can be fixed by hand.
The happy path is vectorised; the per-line detail is only computed once a rule has failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, INTERVAL_MS, close_time_ms, grid_index, iso_utc, on_grid
from image_cache.ingest.schema import CANDLE_COLUMNS, CANDLE_DTYPE

UTF8_BOM = b"\xef\xbb\xbf"
PRICE_COLUMNS = ("open", "high", "low", "close")
VOLUME_COLUMNS = ("volume", "quote_asset_volume", "taker_buy_base_volume", "taker_buy_quote_volume")
FLOAT_COLUMNS = PRICE_COLUMNS + VOLUME_COLUMNS
# Digits of an epoch time in each unit, for any date between 2001-09-09 and 2286-11-20.
UNIT_DIGITS = {"s": 10, "ms": 13, "us": 16}
POWERS_OF_TEN = 10 ** np.arange(19, dtype=np.int64)
UNIT_TO_MS = {"s": (1000, 1), "ms": (1, 1), "us": (1, 1000)}  # (multiply, floor-divide)


@dataclass(frozen=True)
class Lines:
    """A text file split into lines: normalised bytes plus [start, end) offsets of each line."""

    data: bytes
    starts: np.ndarray
    ends: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def line(self, index: int) -> bytes:
        return self.data[self.starts[index]:self.ends[index]]


@dataclass(frozen=True)
class Validated:
    """Candles ready to write: sorted by open time, unique, in milliseconds."""

    candles: np.ndarray
    rows_read: int
    dropped: int
    flagged: int
    time_unit: str


class RuleError(MarketError):
    """A rule an input file breaks, at `line` (None: the file as a whole)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def fail(name: str, line: int | None, rule: str, detail: str) -> RuleError:
    # A hostile file name (newline, undecodable bytes) must not break the one-line message.
    name = name if name.isprintable() else ascii(name)
    where = f"{name}: line {line}" if line is not None else name
    return RuleError(f"{where}: {rule}: {detail}", line)


def split_lines(name: str, data: bytes, *, max_line_bytes: int, line_offset: int = 0) -> Lines:
    """Check the text layer and split into lines (`line_offset`: lines before `data` in its file).

    Documented choices: a UTF-8 BOM is ignored and CRLF line ends are accepted as LF (spreadsheet
    exports have both); a lone CR, blank lines, non-UTF-8 bytes and over-long lines are errors.
    """
    if line_offset == 0 and data.startswith(UTF8_BOM):
        data = data[len(UTF8_BOM):]
    if not data:
        raise fail(name, None, "empty file", "no data")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n")
        if (pos := data.find(b"\r")) >= 0:
            raise fail(name, line_offset + data.count(b"\n", 0, pos) + 1, "line ends",
                       "carriage return without line feed")
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise fail(name, line_offset + data.count(b"\n", 0, exc.start) + 1, "encoding",
                       f"byte 0x{data[exc.start]:02x} is not UTF-8") from None
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
    ends = newlines if data.endswith(b"\n") else np.append(newlines, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts
    if (long := np.flatnonzero(lengths > max_line_bytes)).size:
        raise fail(name, line_offset + int(long[0]) + 1, "line length",
                   f"{int(lengths[long[0]])} bytes, the limit is {max_line_bytes}")
    if (blank := np.flatnonzero(lengths == 0)).size:
        if blank.size == lengths.size:
            raise fail(name, None, "empty file", "no data")
        raise fail(name, line_offset + int(blank[0]) + 1, "blank line", "no fields")
    return Lines(data, starts, ends)


def field_counts(lines: Lines, separator: bytes = b",") -> np.ndarray:
    """Number of fields on each line (no quoting: Binance files never quote)."""
    seps = np.flatnonzero(np.frombuffer(lines.data, dtype=np.uint8) == separator[0])
    return np.searchsorted(seps, lines.ends) - np.searchsorted(seps, lines.starts) + 1


def check_field_counts(name: str, lines: Lines, first_line: int, expected: int, *, skip: int = 0,
                       separator: bytes = b",", header: bool = False) -> None:
    """Every line after the first `skip` (the first of them on `first_line`) has `expected` fields.

    `header`: `expected` is what the file's header names, and a trailing separator is pointed out.
    """
    counts = field_counts(lines, separator)[skip:]
    if (wrong := np.flatnonzero(counts != expected)).size:
        row = int(wrong[0])
        count = int(counts[row])
        detail = f"{count} fields, " + (f"the header has {expected}" if header else f"expected {expected}")
        if header and count == expected + 1 and lines.line(skip + row).endswith(separator):
            detail += " (a trailing delimiter at the end of the line)"
        raise fail(name, first_line + row, "field count", detail)


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------- times

def detect_unit(name: str, column: str, raw: np.ndarray, first_line: int,
                allowed: tuple[str, ...] = ("ms", "us"), reference: tuple[int, str] | None = None) -> str:
    """The one epoch unit (by digit count) that every value of `raw` uses.

    `reference`: (line, unit) of the file's first time when `raw` is a later chunk of it.
    """
    # Exact digit count by integer comparison (0 for values <= 0).
    digits = np.searchsorted(POWERS_OF_TEN, raw, side="right")
    by_digits = {UNIT_DIGITS[u]: u for u in allowed}
    expected = " or ".join(f"{UNIT_DIGITS[u]} ({u})" for u in allowed)
    known = np.logical_or.reduce([digits == d for d in by_digits])
    if not known.all():
        bad = int(np.flatnonzero(~known)[0])
        raise fail(name, first_line + bad, "time unit",
                   f"{column} {int(raw[bad])} has {int(digits[bad])} digits, expected {expected}")
    line, unit = reference or (first_line, by_digits[int(digits[0])])
    if (other := np.flatnonzero(digits != UNIT_DIGITS[unit])).size:
        bad = int(other[0])
        raise fail(name, first_line + bad, "time unit",
                   f"{column} is in {by_digits[int(digits[bad])]} but line {line} is in {unit}; one unit per file")
    return unit


def to_ms(raw: np.ndarray, unit: str) -> np.ndarray:
    multiply, divide = UNIT_TO_MS[unit]
    return raw * multiply // divide


# ---------------------------------------------------------------------------------------- rows

def _first(mask: np.ndarray) -> int | None:
    hits = np.flatnonzero(mask)
    return int(hits[0]) if hits.size else None


Rule = tuple[np.ndarray, str, Callable[[int], str]]  # (rows breaking it, its name, the detail of row i)


def _detail(columns: dict[str, np.ndarray] | np.ndarray, col: str,
            show: Callable[[object], str]) -> Callable[[int], str]:
    """The detail of row i breaking a rule on `col`: its value, shown by `show` (str or repr)."""
    return lambda i: f"{col} is {show(columns[col][i].item())}"


def row_rules(columns: dict[str, np.ndarray] | np.ndarray) -> list[Rule]:
    """The row rules, in order, over the columns present (a market read holds only OHLCV): the one
    definition of a sound candle, which ingest enforces on write and the renderer on read."""
    present = (columns.dtype.names or ()) if isinstance(columns, np.ndarray) else tuple(columns)
    o, h, lo, c = (columns[col] for col in PRICE_COLUMNS)
    rules: list[Rule] = []
    for col in (col for col in FLOAT_COLUMNS if col in present):
        rules.append((~np.isfinite(columns[col]), "finite decimal",
                      _detail(columns, col, str)))
    for col in PRICE_COLUMNS:
        rules.append((columns[col] <= 0, "price > 0", _detail(columns, col, repr)))
    for col in (col for col in VOLUME_COLUMNS + ("trades",) if col in present):
        rules.append((columns[col] < 0, f"{col} >= 0", _detail(columns, col, repr)))
    rules.append((lo > np.minimum(o, c), "low <= min(open, close)",
                  lambda i: f"low {lo[i].item()!r}, open {o[i].item()!r}, close {c[i].item()!r}"))
    rules.append((h < np.maximum(o, c), "high >= max(open, close)",
                  lambda i: f"high {h[i].item()!r}, open {o[i].item()!r}, close {c[i].item()!r}"))
    return rules


def first_broken(columns: dict[str, np.ndarray] | np.ndarray) -> tuple[int, str, str] | None:
    """(row, rule, detail) of the first row breaking a row rule; None when all rows pass.

    Earliest row first, then rule order, so that a file read in chunks of any size names the same line.
    """
    rules = row_rules(columns)
    found = [(bad, k) for k, (mask, _, _) in enumerate(rules) if (bad := _first(mask)) is not None]
    if not found:
        return None
    bad, k = min(found)
    return bad, rules[k][1], rules[k][2](bad)


def row_error(name: str, columns: dict[str, np.ndarray] | np.ndarray,
              first_line: int) -> tuple[int, MarketError] | None:
    """The first row (in file order) breaking a row rule, with its error; None when all rows pass."""
    if (found := first_broken(columns)) is None:
        return None
    bad, rule, detail = found
    return bad, fail(name, first_line + bad, rule, detail)


def check_rows(name: str, columns: dict[str, np.ndarray] | np.ndarray, first_line: int) -> None:
    """Row rules: finite decimals, prices > 0, volumes and trades >= 0, low/high around open/close."""
    if (found := row_error(name, columns, first_line)) is not None:
        raise found[1]


def period_error(name: str, open_ms: np.ndarray, first_line: int,
                 period: tuple[int, int]) -> tuple[int, MarketError] | None:
    """The first row whose open time lies outside the file's period [start, end), with its error."""
    start, end = period
    if (bad := _first((open_ms < start) | (open_ms >= end))) is None:
        return None
    return bad, fail(name, first_line + bad, "period", f"open_time {iso_utc(int(open_ms[bad]))} is outside the "
                                                      f"file's period {iso_utc(start)} .. {iso_utc(end)}")


def check_period(name: str, open_ms: np.ndarray, first_line: int, period: tuple[int, int]) -> None:
    if (found := period_error(name, open_ms, first_line, period)) is not None:
        raise found[1]


def _spacing(ms: int) -> str:
    for unit, size in (("d", DAY_MS), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms} ms"


def spacing_code(usual: int) -> str:
    """The interval code of rows usually `usual` ms apart, or a description of that spacing."""
    codes = {ms: code for code, ms in INTERVAL_MS.items() if code != "1mo"}
    if usual in codes:
        return codes[usual]
    if 28 * DAY_MS <= usual <= 31 * DAY_MS:
        return "1mo"
    return f"no known interval (rows {_spacing(usual)} apart)"


def looks_like(times: np.ndarray) -> str:
    """The interval sorted, unique open times (two or more) look like: the code of their usual spacing."""
    return spacing_code(int(np.median(np.diff(times))))


def off_grid_error(name: str, interval: str, line: int, off: int, count: int, first_off: int,
                   looks: Callable[[], str]) -> MarketError:
    """Most open times off the grid: another interval's data (`looks`: what the rows look like)."""
    hint = f"; the rows look like {looks()} data" if count > 1 else ""
    return fail(name, line, "interval",
                f"{off} of {count} open times are off the {interval} grid (first {iso_utc(first_off)}){hint}")


def sparse_error(name: str, interval: str, line: int, looks: Callable[[], str]) -> MarketError:
    """Never two candles in adjacent grid slots: another interval's data."""
    return fail(name, line, "interval", f"no two candles are one {interval} apart; the rows look like {looks()} data")


def check_interval_fit(name: str, interval: str, times: np.ndarray, line_of: Callable[[int], int]) -> np.ndarray:
    """Reject data of another interval; return the mask of the few off-grid candles kept as flagged.

    Mostly off the grid, or never two candles in adjacent grid slots, means the rows are another
    interval's data. A few off-grid candles are real (Binance's early 2018 files): kept, flagged.
    """
    off = ~np.asarray(on_grid(interval, times), dtype=bool)
    if off.sum() * 2 > len(times):
        bad = int(np.flatnonzero(off)[0])
        raise off_grid_error(name, interval, line_of(bad), int(off.sum()), len(times), int(times[bad]),
                             lambda: looks_like(times))
    if len(times) >= 3:
        slots = np.diff(np.asarray(grid_index(interval, times), dtype=np.int64))
        if slots.min() > 1:
            raise sparse_error(name, interval, line_of(1), lambda: looks_like(times))
    return off


def validate(name: str, interval: str, columns: dict[str, np.ndarray] | np.ndarray, *, first_line: int,
             time_unit: str, close_ms: np.ndarray | None = None,
             period: tuple[int, int] | None = None) -> Validated:
    """Validate parsed rows of one file and return them sorted, de-duplicated, as CANDLE_DTYPE.

    `columns` holds every CANDLE_COLUMNS array with open_time already in ms (or is a CANDLE_DTYPE
    array, used without a copy); row i is line `first_line + i`. Exact duplicate rows are dropped;
    same open time with other values rejects the file. Data of another interval is rejected
    (check_interval_fit); the odd candle off the interval grid, or whose `close_ms` is not the
    interval's last millisecond, is kept and counted as flagged.
    """
    if interval not in INTERVAL_MS:
        raise fail(name, None, "interval", f"unknown interval code {interval!r}")
    n = len(columns["open_time"])
    if n == 0:
        raise fail(name, None, "no rows", "the file has no data rows")
    check_rows(name, columns, first_line)
    open_ms = columns["open_time"]
    if period is not None:
        check_period(name, open_ms, first_line, period)

    if isinstance(columns, np.ndarray):
        candles = columns
    else:
        candles = np.empty(n, dtype=CANDLE_DTYPE)
        for col in CANDLE_COLUMNS:
            candles[col] = columns[col]
    closes = close_ms
    order = None
    if n > 1 and (np.diff(open_ms) < 0).any():
        order = np.argsort(open_ms, kind="stable")
        candles = candles[order]
        closes = None if close_ms is None else close_ms[order]

    times = candles["open_time"]
    same_time = np.flatnonzero(times[1:] == times[:-1])
    dropped = 0
    if same_time.size:
        a, b = candles[same_time], candles[same_time + 1]
        equal = np.ones(len(same_time), dtype=bool)
        for col in CANDLE_COLUMNS[1:]:
            equal &= a[col] == b[col]
        if closes is not None:
            equal &= closes[same_time] == closes[same_time + 1]
        if (bad := _first(~equal)) is not None:
            line_of = (lambda i: first_line + int(i)) if order is None else (lambda i: first_line + int(order[i]))
            i, j = sorted((line_of(same_time[bad]), line_of(same_time[bad] + 1)))
            raise fail(name, j, "duplicate open time",
                       f"open_time {iso_utc(int(times[same_time[bad]]))} also on line {i} with other values")
        keep = np.ones(n, dtype=bool)
        keep[same_time + 1] = False
        candles = candles[keep]
        closes = None if closes is None else closes[keep]
        dropped = int(n - keep.sum())
    else:
        keep = None

    times = candles["open_time"]
    kept = None if keep is None else np.flatnonzero(keep)

    def source_line(i: int) -> int:
        row = int(i) if kept is None else int(kept[i])
        return first_line + (row if order is None else int(order[row]))

    flagged = check_interval_fit(name, interval, times, source_line)
    if closes is not None:
        flagged |= closes != close_time_ms(interval, times) - 1
    return Validated(candles, n, dropped, int(flagged.sum()), time_unit)
