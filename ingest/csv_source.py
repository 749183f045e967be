"""A generic OHLCV CSV file: a header row naming the columns, in any case and order.

Required: open, high, low, close, volume, and a time column (`--time-column`, or the first of
TIME_NAMES). Quote volume, trades and taker volumes are optional and become 0 when missing. Times
are epoch s/ms/µs (detected by digit count, one unit per file) or ISO 8601 dates (UTC unless an
offset is given).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import time
from typing import Any

import numpy as np
import pandas as pd

from core.hooks import Progress, Warn, no_progress, no_warn
from ingest.registry import IngestResult, SourceFile, ingest_file, writer
from ingest.sources import Source
from core.errors import MarketError
from core.grid import INTERVAL_MS, check_interval, check_symbol
from ingest.validate import Validated, detect_unit, fail, split_lines, to_ms, validate

MAX_LINE_BYTES = 64 * 1024
TIME_NAMES = ("open_time", "opentime", "open time", "timestamp", "time", "datetime", "date")
ALIASES = {
    "open": ("open",), "high": ("high",), "low": ("low",), "close": ("close",), "volume": ("volume",),
    "quote_asset_volume": ("quote_asset_volume", "quote_volume", "quote volume", "quote asset volume"),
    "trades": ("trades", "number_of_trades", "count", "number of trades"),
    "taker_buy_base_volume": ("taker_buy_base_volume", "taker_buy_volume", "taker buy base asset volume"),
    "taker_buy_quote_volume": ("taker_buy_quote_volume", "taker buy quote asset volume"),
}
REQUIRED = ("open", "high", "low", "close", "volume")
TIME_UNITS = ("ms", "s", "us", "iso")


def _find_column(header: dict[str, str], names: tuple[str, ...]) -> str | None:
    return next((header[n] for n in names if n in header), None)


def _numbers(name: str, frame: pd.DataFrame, column: str, label: str, first_line: int, integer: bool) -> np.ndarray:
    text = frame[column].astype(str).str.strip()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    nan_text = text.str.lower().isin(("nan", "+nan", "-nan")).to_numpy(dtype=bool)
    if (bad := np.flatnonzero(np.isnan(values) & ~nan_text)).size:
        row = int(bad[0])
        raise fail(name, first_line + row, "decimal number", f"{label} is {text.iloc[row]!r}")
    if integer:
        if (bad := np.flatnonzero(~np.isfinite(values) | (values != np.round(values)))).size:
            row = int(bad[0])
            raise fail(name, first_line + row, "integer", f"{label} is {text.iloc[row]!r}")
    return values


def _times(name: str, frame: pd.DataFrame, column: str, unit: str | None, first_line: int) -> tuple[np.ndarray, str]:
    text = frame[column].astype(str).str.strip()
    integers = text.str.fullmatch(r"-?[0-9]{1,18}").to_numpy(dtype=bool)
    if unit is None:
        unit = "epoch" if integers.all() else "iso"
    if unit == "iso":
        parsed = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        if (bad := np.flatnonzero(parsed.isna().to_numpy())).size:
            row = int(bad[0])
            raise fail(name, first_line + row, "time", f"{column} {text.iloc[row]!r} is not an ISO 8601 date")
        ms = parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
        return ms, "iso"
    if (bad := np.flatnonzero(~integers)).size:
        row = int(bad[0])
        raise fail(name, first_line + row, "integer time", f"{column} is {text.iloc[row]!r}")
    raw = text.to_numpy(dtype=str).astype(np.int64)
    detected = detect_unit(name, column, raw, first_line, allowed=("s", "ms", "us") if unit == "epoch" else (unit,))
    return to_ms(raw, detected), detected


def parse_csv(name: str, data: bytes, interval: str, *, time_column: str | None = None,
              time_unit: str | None = None) -> Validated:
    """Validated candles of a generic OHLCV CSV (row i of the data is line i + 2)."""
    lines = split_lines(name, data, max_line_bytes=MAX_LINE_BYTES)
    if len(lines) == 1:
        raise fail(name, None, "no rows", "the file has a header and no data rows")
    try:
        frame = pd.read_csv(io.BytesIO(lines.data), dtype=str, keep_default_na=False, na_filter=False,
                            skipinitialspace=True, engine="c")
    except (ValueError, pd.errors.ParserError) as exc:
        raise fail(name, None, "csv", str(exc).strip().splitlines()[0]) from None
    header = {str(c).strip().lower(): c for c in frame.columns}
    first_line = 2
    if time_column is not None:
        time_col = header.get(time_column.strip().lower())
        if time_col is None:
            raise fail(name, 1, "header", f"no column named {time_column!r}")
    else:
        time_col = _find_column(header, TIME_NAMES)
        if time_col is None:
            raise fail(name, 1, "header", f"no time column (looked for {', '.join(TIME_NAMES)}; use --time-column)")
    if time_unit is not None and time_unit not in TIME_UNITS:
        raise MarketError(f"unknown time unit {time_unit!r} (known: {' '.join(TIME_UNITS)})")
    columns: dict[str, np.ndarray] = {}
    n = len(frame)
    for target, names in ALIASES.items():
        source = _find_column(header, names)
        if source is None:
            if target in REQUIRED:
                raise fail(name, 1, "header", f"no {target!r} column")
            columns[target] = np.zeros(n, dtype=np.int64 if target == "trades" else np.float64)
            continue
        values = _numbers(name, frame, source, target, first_line, integer=target == "trades")
        columns[target] = values.astype(np.int64) if target == "trades" else values
    columns["open_time"], unit = _times(name, frame, time_col, time_unit, first_line)
    return validate(name, interval, columns, first_line=first_line, time_unit=unit)


def ingest_csv(db: str, path: str, *, symbol: str, interval: str, time_column: str | None = None,
               time_unit: str | None = None, lock_wait: float = 30.0, progress: Progress = no_progress,
               warn: Warn = no_warn) -> IngestResult:
    """Ingest one generic OHLCV CSV file as the series (symbol, interval)."""
    started = time.perf_counter()
    check_symbol(symbol)
    check_interval(interval)
    path = os.path.abspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise MarketError(f"cannot read {path}: {exc.strerror}") from None
    file_name = os.path.basename(path)
    src = SourceFile(path, file_name, hashlib.sha256(data).hexdigest(), len(data), "csv", symbol, interval)
    result = IngestResult()
    with writer(db, "ingest csv", lock_wait) as conn:
        for _ in progress([src], total=1, desc="ingest", unit="file"):
            result.files.append(ingest_file(
                conn, src, lambda: parse_csv(file_name, data, interval, time_column=time_column, time_unit=time_unit),
                verified=True))
    result.seconds = time.perf_counter() - started
    return result


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", metavar="FILE")
    p.add_argument("--symbol", required=True)
    p.add_argument("--interval", required=True, choices=list(INTERVAL_MS))
    p.add_argument("--time-column", help="name of the time column (default: detected)")
    p.add_argument("--time-unit", choices=TIME_UNITS, help="(default: detected)")


def _run(args: argparse.Namespace, hooks: dict[str, Any]) -> IngestResult:
    return ingest_csv(args.db, args.path, symbol=args.symbol, interval=args.interval,
                      time_column=args.time_column, time_unit=args.time_unit, lock_wait=args.lock_wait, **hooks)


SOURCE = Source("csv", "ingest a generic OHLCV CSV file", _arguments, _run)
