"""Batches from an exchange API: what any API source (Binance REST, CCXT) does with the candles it fetches.

Per series: plan the tail (from the slot after the last stored candle, or the start, to the last closed
candle), fetch it through the source's `fetch`, validate it like an archive and write it as one
registry entry in one transaction. What the network kept from us is reported, never recorded as a
rejected file; a symbol the venue does not have is reported by name (`unknown`): the run fails only
when no symbol asked for exists.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from image_cache.core.errors import ConfigError, ImageCacheError, MarketError
from image_cache.core.grid import grid_index, grid_time, iso_utc
from image_cache.core.hooks import Progress, Warn, no_progress, no_warn
from image_cache.ingest.network import HostDown
from image_cache.ingest.registry import (
    FileOutcome,
    IngestResult,
    SourceFile,
    reject,
    write_file,
)
from image_cache.ingest.validate import validate
from image_cache.ingest.venues import Venue, mismatch

# (exchange symbol, interval, start_ms, end_ms) → an (n, 11) kline table of closed candles, oldest first.
Fetch = Callable[[str, str, int, int], np.ndarray]
# (exchange symbol, interval) → the open time of the venue's first candle, or None.
Inception = Callable[[str, str], "int | None"]

def check_selection(command: str, symbols: list[str], top: int | None, quote: str | None,
                    every_quoted: bool = False) -> None:
    """Which symbols a run fetches: `--symbols`, `--top N --quote Q`, or both; with `every_quoted` (update),
    `--quote Q` alone means every symbol quoted in Q. A usage error (exit 2), raised before anything is
    opened or fetched."""
    if top is not None and quote is None:
        raise ConfigError("--top needs --quote: --top N --quote USDT")
    if quote is not None and top is None and not every_quoted:
        raise ConfigError("--quote goes with --top here: --top N --quote USDT")
    if not symbols and top is None and not (every_quoted and quote):
        raise ConfigError(f"{command} needs --symbols or --top N --quote Q" + (" (or --quote Q)" * every_quoted))


_NAMES = ("open_time", "open", "high", "low", "close", "volume", None, "quote_asset_volume", "trades",
          "taker_buy_base_volume", "taker_buy_quote_volume")


class GaveUp(MarketError):
    """Transient trouble that outlasted the retries: the network's failure, not the data's."""


class UnknownSymbol(MarketError):
    """The venue has no such symbol: reported by name, never recorded as a rejected file."""


@dataclass(frozen=True)
class Tail:
    """What to fetch for one series: open times in [start_ms, end_ms) of exchange symbol `symbol`,
    stored as series `series` (its name: ingest/venues.py)."""

    symbol: str
    interval: str
    start_ms: int
    end_ms: int
    series: str


def last_stored(conn: sqlite3.Connection, symbol: str, interval: str) -> int | None:
    row = conn.execute("""SELECT MAX(c.open_time) FROM candles c JOIN series se ON se.id = c.series_id
                          JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                          WHERE s.symbol = ? AND i.code = ?""", (symbol, interval)).fetchone()
    return row[0] if row else None


def plan_tail(conn: sqlite3.Connection, symbol: str, name: str, interval: str, start_ms: int | None,
              end_ms: int | None, now: int) -> Tail | None:
    """From the slot after series `name`'s last stored candle (or `start_ms`) to the last closed candle
    (or `end_ms`)."""
    last = last_stored(conn, name, interval)
    begin = start_ms if last is None else max(start_ms or 0, grid_time(interval, grid_index(interval, last) + 1))
    if begin is None:
        raise MarketError(f"{name} {interval}: no stored candles; give --start for a new series")
    # Open time of the first candle still open now: nothing from there on is fetched.
    open_now = grid_time(interval, grid_index(interval, now))
    stop = min(end_ms, open_now) if end_ms is not None else open_now
    return Tail(symbol, interval, begin, stop, name) if begin < stop else None


def columns(table: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Candle columns and close times of a kline table."""
    out = {col: table[:, i] for i, col in enumerate(_NAMES) if col}
    out["open_time"] = out["open_time"].astype(np.int64)
    out["trades"] = out["trades"].astype(np.int64)
    return out, table[:, 6].astype(np.int64)


def ingest_tail(conn: sqlite3.Connection, tail: Tail, *, url: str, venue: Venue, source: str,
                fetch: Fetch) -> FileOutcome | None:
    """Fetch, validate and write one series' tail as one registry entry; None when nothing was served."""
    name = f"{tail.series}-{tail.interval}-{source}-{iso_utc(tail.start_ms)}"
    src = SourceFile(url, name, None, None, source, tail.series, tail.interval, venue=venue)
    try:
        table = fetch(tail.symbol, tail.interval, tail.start_ms, tail.end_ms)
        if not len(table):
            return None
        cols, close_ms = columns(table)
        parsed = validate(name, tail.interval, cols, first_line=1, time_unit="ms",
                          close_ms=close_ms, period=(tail.start_ms, tail.end_ms))
    except (GaveUp, HostDown, UnknownSymbol):
        raise  # nothing was served to judge: not a rejected file
    except ImageCacheError as exc:
        return reject(conn, src, str(exc))
    span = f"{iso_utc(int(parsed.candles['open_time'][0]))}..{iso_utc(int(parsed.candles['open_time'][-1]))}"
    # No period: a batch vouches for the candles it served, not for a whole day or month.
    src = SourceFile(url, f"{tail.series}-{tail.interval}-{source}-{span}", hashlib.sha256(parsed.candles.tobytes())
                     .hexdigest(), None, source, tail.series, tail.interval, venue=venue)
    return write_file(conn, src, parsed, verified=True)


@dataclass
class ApiResult(IngestResult):
    """An IngestResult whose entries are API batches, plus what the client did, the series the network
    kept from us (`network`: "SYMBOL INTERVAL: why", recorded nowhere else), the symbols asked for and
    those the venue does not have (`unknown`), the dates as resolved, and a `--top` selection."""

    requests: int = 0
    retries: int = 0
    waited_s: float = 0.0
    max_weight: int = 0
    network: list[str] = field(default_factory=list)
    symbols: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    dates: dict[str, str] = field(default_factory=dict)
    top: list[dict[str, Any]] | None = None

    @property
    def ok(self) -> bool:
        # Unknown symbols fail the run only when no symbol asked for exists (README: exit codes).
        none_known = bool(self.unknown) and len(set(self.unknown)) >= len(set(self.symbols))
        return super().ok and not self.network and not none_known

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "requests": self.requests, "retries": self.retries,
                "waited_s": round(self.waited_s, 3), "max_weight": self.max_weight, "network": self.network,
                "symbols": self.symbols, "unknown": self.unknown, "dates": self.dates, "top": self.top}

    def text(self) -> str:
        lines = [f"{key}: {value}" for key, value in self.dates.items()]
        if self.top is not None:
            lines.append(f"top {len(self.top)} by 24-hour quote volume: "
                         + ", ".join(f"{t['symbol']} ({t['quote_volume']:,.0f})" for t in self.top))
        if self.unknown:
            lines.append(f"unknown symbols (not on the venue): {', '.join(self.unknown)}")
        lost = f"; {len(self.network)} series not fetched for the network ({self.network[0]})" if self.network else ""
        lines += [super().text(), (f"api: {self.requests} requests, {self.retries} retries, "
                                   f"{self.waited_s:.1f} s waited, peak weight {self.max_weight}{lost}")]
        return "\n".join(lines)


def ingest_batches(conn: sqlite3.Connection, series: list[tuple[str, str, str]], *, venue: Venue, url: str,
                   source: str, fetch: Fetch, start_ms: int | None, end_ms: int | None, now: int,
                   result: ApiResult, inception: Inception | None = None, progress: Progress = no_progress,
                   warn: Warn = no_warn) -> None:
    """Bring each (exchange symbol, series name, interval) up to its last closed candle on an open writer
    connection. `inception`: where a series with no candles starts (`--start inception`)."""
    for n, (symbol, name, interval) in enumerate(progress(series, total=len(series), desc=source, unit="series")):
        if symbol in result.unknown:
            continue
        path = f"{url}?symbol={symbol}&interval={interval}"
        if (why := mismatch(conn, name, venue)) is not None:  # before a request: another venue plans nothing here
            result.files.append(reject(conn, SourceFile(path, f"{name}-{interval}-{source}", None, None, source,
                                                        name, interval, venue=venue), why))
            continue
        try:
            begin = start_ms
            if inception is not None and last_stored(conn, name, interval) is None:
                if (begin := inception(symbol, interval)) is None:
                    continue
                result.dates[f"inception {name} {interval}"] = iso_utc(begin)
            tail = plan_tail(conn, symbol, name, interval, begin, end_ms, now)
            outcome = None if tail is None else ingest_tail(conn, tail, url=path, venue=venue, source=source,
                                                            fetch=fetch)
        except UnknownSymbol as exc:
            result.unknown.append(symbol)
            warn(f"{symbol}: no such symbol on {venue} ({exc})")
            continue
        except GaveUp as exc:
            result.network.append(f"{symbol} {interval}: {exc}")
            continue
        except HostDown as exc:  # the rest would not be asked either
            result.network.extend(f"{s} {i}: {exc}" for s, _, i in series[n:])
            break
        if outcome is not None:
            result.files.append(outcome)
