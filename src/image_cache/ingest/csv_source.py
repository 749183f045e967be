"""A generic OHLCV CSV file: a header row naming the columns, in any case and order.

Required: open, high, low, close, volume, and a time column (`--time-column`, else the first of
TIME_NAMES, else an unnamed first column as pandas' `DataFrame.to_csv()` writes a date index, else a
close-time column). Quote volume, trades and taker volumes are optional and become 0 when missing.
The delimiter is sniffed from the header (comma, semicolon or tab). Times are epoch s/ms/µs
(detected by digit count, one unit per file) or ISO 8601 dates (UTC unless an offset is given).

A time may label a candle's open (the default) or its close (`--time-label close`; detected when
the time column is a close-time column, when every stamp is a day's 23:59:59, or for 1mo data
when every stamp is a month's last day, as pandas labels months). The file is read, validated and
written in chunks of lines (series_check.py carries the rules across chunks), so that memory follows
a chunk, not the file; a file not in time order is sorted through a staging table (staging.py).
"""

from __future__ import annotations

import io
import os
import re
import sqlite3
import time
from collections.abc import Generator
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from image_cache.core import flags
from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, INTERVAL_MS, check_interval, check_symbol, grid_index, grid_time, month_index
from image_cache.core.hooks import Hooks, Progress, Warn, no_progress, no_warn
from image_cache.ingest.inputs import line_chunks, open_regular, sha256_stream
from image_cache.ingest.registry import IngestResult, SourceFile, ingest_stream
from image_cache.ingest.schema import CANDLE_DTYPE, writer
from image_cache.ingest.series_check import Chunk, ChunkSink, FileRows, Tally, stream_or_sort
from image_cache.ingest.sources import Source
from image_cache.ingest.validate import (
    UTF8_BOM,
    RuleError,
    Validated,
    check_field_counts,
    detect_unit,
    fail,
    split_lines,
    to_ms,
)
from image_cache.ingest.venues import venue_of_name

# The flags are read by cli/ingest.py: the library never imports argparse. pandas is imported by the functions
# that parse, as in binance_vision.py: it is a fifth of a command's start-up, and most commands parse no file.
if TYPE_CHECKING:
    import argparse

    import pandas as pd

MAX_LINE_BYTES = 64 * 1024
# Text parsed at a time: a chunk's strings cost ~10x its bytes while it is converted.
CHUNK_BYTES = 2 * 2**20
TIME_NAMES = ("open_time", "opentime", "open time", "timestamp", "time", "datetime", "date")
CLOSE_TIME_NAMES = ("close_time", "closetime", "close time")
ALIASES = {
    "open": ("open",), "high": ("high",), "low": ("low",), "close": ("close",), "volume": ("volume",),
    "quote_asset_volume": ("quote_asset_volume", "quote_volume", "quote volume", "quote asset volume"),
    "trades": ("trades", "number_of_trades", "count", "number of trades"),
    "taker_buy_base_volume": ("taker_buy_base_volume", "taker_buy_volume", "taker buy base asset volume"),
    "taker_buy_quote_volume": ("taker_buy_quote_volume", "taker buy quote asset volume"),
}
REQUIRED = ("open", "high", "low", "close", "volume")
TIME_UNITS = ("ms", "s", "us", "iso")
TIME_LABELS = ("open", "close")
DELIMITERS = {",": "comma", ";": "semicolon", "\t": "tab"}
# Integer counts beyond this lose their last digits as floats.
MAX_COUNT = 2**53


def _numbers(name: str, text: pd.Series, label: str, first_line: int, integer: bool) -> np.ndarray:
    import pandas as pd

    text = text.str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    nan_text = text.str.lower().isin(("nan", "+nan", "-nan")).to_numpy(dtype=bool)
    if (bad := np.flatnonzero(np.isnan(values) & ~nan_text)).size:
        row = int(bad[0])
        raise fail(name, first_line + row, "decimal number", f"{label} is {text.iloc[row]!r}")
    if integer:
        if (bad := np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))).size:
            row = int(bad[0])
            raise fail(name, first_line + row, "integer", f"{label} is {text.iloc[row]!r}")
        if (bad := np.flatnonzero(np.abs(values) >= MAX_COUNT)).size:
            row = int(bad[0])
            raise fail(name, first_line + row, "integer", f"{label} is {text.iloc[row]!r}, too large for a count "
                                                          f"(at most {MAX_COUNT - 1})")
    return values


def _times(name: str, text: pd.Series, column: str, mode: str | None, first_line: int,
           reference: tuple[int, str] | None) -> tuple[np.ndarray, str, tuple[int, str] | None]:
    """Times in ms of one chunk, the file's time mode and the (line, unit) its first epoch time set.

    `mode`: a unit as given, None (the first chunk decides: epoch when the first time is an integer,
    else ISO 8601) or "epoch" (s/ms/µs by digit count, the unit of `reference` for the whole file).
    """
    import pandas as pd

    typed = text.dtype == np.int64
    if not typed:
        text = text.str.strip()
    if mode is None:
        mode = "epoch" if typed or re.fullmatch(r"-?[0-9]{1,18}", text.iloc[0]) else "iso"
    if mode == "iso":
        text = text.astype(str)
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        if (bad := np.flatnonzero(parsed.isna().to_numpy())).size:
            row = int(bad[0])
            raise fail(name, first_line + row, "time", f"{column} {text.iloc[row]!r} is not an ISO 8601 date")
        return parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64), mode, reference
    if typed:
        raw = text.to_numpy()
    else:
        if (bad := np.flatnonzero(~text.str.fullmatch(r"-?[0-9]{1,18}").to_numpy(dtype=bool))).size:
            row = int(bad[0])
            raise fail(name, first_line + row, "integer time", f"{column} is {text.iloc[row]!r}")
        raw = text.to_numpy(dtype=str).astype(np.int64)
    if mode != "epoch":
        return to_ms(raw, detect_unit(name, column, raw, first_line, allowed=(mode,))), mode, reference
    unit = detect_unit(name, column, raw, first_line, allowed=("s", "ms", "us"), reference=reference)
    return to_ms(raw, unit), mode, reference or (first_line, unit)


class Layout:
    """What the header says: delimiter, column names, and where each candle field comes from."""

    def __init__(self, name: str, header: bytes, time_column: str | None):
        try:
            text = header.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise fail(name, 1, "encoding", f"byte 0x{header[exc.start]:02x} is not UTF-8") from None
        counts = {d: text.count(d) for d in DELIMITERS}
        self.delimiter = max(counts, key=lambda d: counts[d])
        if counts[self.delimiter] == 0:
            raise fail(name, 1, "header", "one column only: expected comma, semicolon or tab separated names")
        self.names = [n.strip().strip('"').strip() for n in text.split(self.delimiter)]
        lowered = {n.lower(): i for i, n in reversed(list(enumerate(self.names))) if n}
        self.close_labelled = False
        if time_column is not None:
            if time_column.strip().lower() not in lowered:
                raise fail(name, 1, "header", f"no column named {time_column!r}")
            self.time = lowered[time_column.strip().lower()]
        elif (found := next((lowered[n] for n in TIME_NAMES if n in lowered), None)) is not None:
            self.time = found
        elif self.names[0] == "":
            self.time = 0  # pandas' date index: the unnamed first column
        elif (found := next((lowered[n] for n in CLOSE_TIME_NAMES if n in lowered), None)) is not None:
            self.time, self.close_labelled = found, True
        else:
            raise fail(name, 1, "header", f"no time column (looked for {', '.join(TIME_NAMES)}, an unnamed first "
                                          f"column, {', '.join(CLOSE_TIME_NAMES)}; use --time-column)")
        self.time_name = self.names[self.time] or "the unnamed first column"
        self.fields: dict[str, int | None] = {}
        for target, aliases in ALIASES.items():
            index = next((lowered[n] for n in aliases if n in lowered), None)
            if index is None and target in REQUIRED:
                raise fail(name, 1, "header", f"no {target!r} column")
            self.fields[target] = index


def _read(name: str, data: bytes, layout: Layout, first_line: int, typed: bool,
          time_dtype: Any = str) -> pd.DataFrame:
    """The used columns of a chunk: typed (floats, and `time_dtype` for the time), or all as text."""
    import pandas as pd

    used = sorted({layout.time, *(i for i in layout.fields.values() if i is not None)})
    dtype: Any = str
    if typed:
        dtype = {i: np.float64 for i in layout.fields.values() if i is not None} | {layout.time: time_dtype}
    try:
        return pd.read_csv(io.BytesIO(data), sep=layout.delimiter, header=None, usecols=used, dtype=dtype,
                           keep_default_na=False, na_filter=False, engine="c")
    except (ValueError, OverflowError, pd.errors.ParserError) as exc:
        if typed:
            raise
        raise fail(name, first_line, "csv", str(exc).strip().splitlines()[0]) from None


def _whole(values: np.ndarray) -> bool:
    return bool((np.isfinite(values) & (values == np.round(values)) & (np.abs(values) < MAX_COUNT)).all())


def _parse_chunk(name: str, data: bytes, layout: Layout, first_line: int, mode: str | None,
                 reference: tuple[int, str] | None) -> tuple[np.ndarray, str, tuple[int, str] | None]:
    """One chunk of whole lines as candles; numbers parsed typed, as text only to locate an error."""
    lines = split_lines(name, data, max_line_bytes=MAX_LINE_BYTES, line_offset=first_line - 1)
    if b'"' not in data:  # quoted fields may hold delimiters: left to the CSV parser
        check_field_counts(name, lines, first_line, len(layout.names), separator=layout.delimiter.encode(),
                           header=True)
    fields = {target: index for target, index in layout.fields.items() if index is not None}
    try:
        try:
            frame = _read(name, lines.data, layout, first_line, typed=True, time_dtype=np.int64)
        except (ValueError, OverflowError):  # ISO dates, or a bad field somewhere
            frame = _read(name, lines.data, layout, first_line, typed=True)
        chunk = np.zeros(len(frame), dtype=CANDLE_DTYPE)
        for target, index in fields.items():
            values = frame[index].to_numpy(dtype=np.float64)
            if target == "trades" and not _whole(values):
                raise ValueError("trades")
            chunk[target] = values
    except (ValueError, OverflowError):
        frame = _read(name, lines.data, layout, first_line, typed=False)
        chunk = np.zeros(len(frame), dtype=CANDLE_DTYPE)
        for target, index in fields.items():
            chunk[target] = _numbers(name, frame[index], target, first_line, integer=target == "trades")
    chunk["open_time"], mode, reference = _times(name, frame[layout.time], layout.time_name, mode, first_line,
                                                 reference)
    return chunk, mode, reference


def _parse_earliest(name: str, data: bytes, layout: Layout, first_line: int, mode: str | None,
                    reference: tuple[int, str] | None) -> tuple[np.ndarray, str, tuple[int, str] | None]:
    """_parse_chunk, its error naming the chunk's earliest bad line whatever the chunk size.

    Its checks run rule by rule over the whole chunk, so a later line may break a rule checked
    first: the lines before the one named are parsed again on their own (at most once per rule).
    """
    try:
        return _parse_chunk(name, data, layout, first_line, mode, reference)
    except RuleError as exc:
        if exc.line is None or exc.line <= first_line:
            raise
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        _parse_earliest(name, data[:int(ends[exc.line - first_line - 1]) + 1], layout, first_line, mode, reference)
        raise


CLOSE_REASONS = ("every time is a day's 23:59:59", "every time is the last day of a month")


def _close_like(interval: str, times: np.ndarray) -> np.ndarray:
    """Whether all these stamps look like period ends, for each of CLOSE_REASONS."""
    day_end = bool((times % DAY_MS >= DAY_MS - 1000).all())
    month_end = False
    if interval == "1mo":
        month_end = bool((month_index(times) != month_index(times + DAY_MS)).all())
    return np.array([day_end, month_end])


class _Reader:
    """A CSV file's data rows as candle chunks, read again from the first data line on each pass."""

    def __init__(self, name: str, f: BinaryIO, interval: str, layout: Layout, time_unit: str | None,
                 chunk_bytes: int):
        self.name, self.f, self.interval, self.layout = name, f, interval, layout
        self.given = time_unit
        self.chunk_bytes = chunk_bytes
        self.start = f.tell()
        self.unit = time_unit or "iso"

    def chunks(self, label: str | None) -> Generator[Chunk, None, None]:
        """(candles, their line numbers, None), open times in ms (moved to the open when `label` is close);
        raises for a file without data rows."""
        self.f.seek(self.start)
        mode, reference = self.given, None
        line = 2
        for data in line_chunks(self.f, self.chunk_bytes, MAX_LINE_BYTES):
            chunk, mode, reference = _parse_earliest(self.name, data, self.layout, line, mode, reference)
            if reference is not None:
                self.unit = reference[1]
            if label == "close":
                # A close stamp lies in its candle's last moment or at its exclusive end: the slot of t - 1 ms.
                chunk["open_time"] = grid_time(self.interval, grid_index(self.interval, chunk["open_time"] - 1))
            yield chunk, line + np.arange(len(chunk), dtype=np.int64), None
            line += len(chunk)
        if line == 2:
            raise fail(self.name, None, "no rows", "the file has a header and no data rows")

    def close_reason(self) -> str | None:
        """Why the file's times look like period ends (every one of them), or None; reads until one is not."""
        alike = np.array([True, True])
        for chunk, _, _ in self.chunks(None):
            alike &= _close_like(self.interval, chunk["open_time"])
            if not alike.any():
                return None
        return next(why for why, yes in zip(CLOSE_REASONS, alike, strict=True) if yes)


def read_csv(name: str, f: BinaryIO, interval: str, sink: ChunkSink, *, time_column: str | None = None,
             time_unit: str | None = None, time_label: str | None = None, warn: Warn = no_warn,
             chunk_bytes: int = CHUNK_BYTES) -> Tally:
    """Validate a generic OHLCV CSV read from `f` into `sink`, `chunk_bytes` of text at a time.

    Row i of the data is line i + 2. A file in time order is read once; one that goes back in time
    (or is rejected as another interval's data) is read again and sorted through a staging table,
    so that memory never follows the file. The rules and messages are validate()'s.
    """
    check_interval(interval)
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise MarketError(f"unknown time unit {time_unit!r} (known: {' '.join(TIME_UNITS)})")
    if time_label is not None and time_label not in TIME_LABELS:
        raise MarketError(f"unknown time label {time_label!r} (known: {' '.join(TIME_LABELS)})")
    header = f.readline(MAX_LINE_BYTES + 1).removeprefix(UTF8_BOM)
    if not header.strip():
        raise fail(name, None, "empty file", "no data")
    if not header.endswith(b"\n") and len(header) > MAX_LINE_BYTES:
        raise fail(name, 1, "line length", f"over {MAX_LINE_BYTES} bytes")
    layout = Layout(name, header.rstrip(b"\r\n"), time_column)
    reader = _Reader(name, f, interval, layout, time_unit, chunk_bytes)
    label = time_label
    if label is None:
        why = "the time column is a close time" if layout.close_labelled else reader.close_reason()
        if why:
            label = "close"
            warn(f"{name}: {why}: read as the candles' close (--time-label open to override)")
    # Rows off the grid yet spaced like the interval: stamps at the candles' close, most likely.
    hint = "if the times are the candles' close, use --time-label close" if label is None else None
    return stream_or_sort(FileRows(name, interval, lambda: reader.chunks(label), lambda: reader.unit, chunk_bytes,
                                   hint=hint), sink)


class _Collected:
    """A sink keeping the chunks in memory, with an in-memory database to sort in."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", isolation_level=None)
        self.parts: list[np.ndarray] = []

    def write(self, candles: np.ndarray) -> None:
        self.parts.append(candles.copy())

    def restart(self) -> None:
        self.parts = []


def parse_csv(name: str, data: bytes, interval: str, **options: Any) -> Validated:
    """read_csv on bytes in memory, the candles collected into one array (small files)."""
    sink = _Collected()
    try:
        tally = read_csv(name, io.BytesIO(data), interval, sink, **options)
    finally:
        sink.conn.close()
    return Validated(np.concatenate(sink.parts), tally.rows_read, tally.dropped, tally.flagged, tally.time_unit)


def _sha256(path: str) -> tuple[str, int]:
    with open_regular(path, path) as f:  # a pipe or device is refused, never read blocking
        return sha256_stream(f)


def ingest_csv(db: str, path: str, *, symbol: str, interval: str, time_column: str | None = None,
               time_unit: str | None = None, time_label: str | None = None, lock_wait: float = 30.0,
               progress: Progress = no_progress, warn: Warn = no_warn, chunk_bytes: int = CHUNK_BYTES) -> IngestResult:
    """Ingest one generic OHLCV CSV file as the series (symbol, interval), `chunk_bytes` of text at a time.

    The file's rows are of the venue the series name states (ingest/venues.py: a plain name is Binance spot).
    """
    started = time.perf_counter()
    check_symbol(symbol)
    check_interval(interval)
    path = os.path.abspath(path)
    try:
        sha, size = _sha256(path)
    except OSError as exc:
        raise MarketError(f"cannot read {path}: {exc.strerror}") from None
    file_name = os.path.basename(path)
    src = SourceFile(path, file_name, sha, size, "csv", symbol, interval, venue=venue_of_name(symbol))

    def produce(sink: ChunkSink) -> Tally:
        try:
            with open_regular(path, path) as f:
                return read_csv(file_name, f, interval, sink, time_column=time_column, time_unit=time_unit,
                                time_label=time_label, warn=warn, chunk_bytes=chunk_bytes)
        except OSError as exc:
            raise MarketError(f"cannot read {path}: {exc.strerror}") from None

    result = IngestResult()
    with writer(db, "ingest csv", lock_wait) as conn:
        for _ in progress([src], total=1, desc="ingest", unit="file"):
            result.files.append(ingest_stream(conn, src, produce, verified=True))
    result.seconds = time.perf_counter() - started
    return result


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="FILE")
    p.add_argument("--symbol", type=flags.symbol, required=True)
    p.add_argument("--interval", required=True, choices=list(INTERVAL_MS))
    p.add_argument("--time-column", help="name of the time column (default: detected)")
    p.add_argument("--time-unit", choices=TIME_UNITS, help="(default: detected)")
    p.add_argument("--time-label", choices=TIME_LABELS,
                   help="whether times stamp the candle's open or its close (default: detected)")


def _run(args: argparse.Namespace, hooks: Hooks) -> IngestResult:
    return ingest_csv(args.db, args.path, symbol=args.symbol, interval=args.interval,
                      time_column=args.time_column, time_unit=args.time_unit, time_label=args.time_label,
                      lock_wait=args.lock_wait, **hooks)


SOURCE = Source("csv", "ingest a generic OHLCV CSV file", _arguments, _run)
