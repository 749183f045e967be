"""`python -m ingest update`: bring every named series up to its last closed candle.

Archives first (monthly files for whole months, then daily files, where Binance Vision has published
them), from the day after the last archive period the registry holds; then the REST API for the
tail the archives do not cover yet. Another exchange (`--exchange okx`) has no archives: its series are
brought up through CCXT alone (`ingest ccxt`, which resumes each series after its last stored candle). A
later archive for a period fetched over REST supersedes those rows (the registry counts the revisions).
Symbols may be listed, read from `@FILE` (one per line), or taken from the exchange's instrument list
(`--quote USDT`: every trading symbol quoted in USDT).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from image_cache.core import flags
from image_cache.core.errors import ConfigError, MarketError
from image_cache.core.grid import SYMBOL_RE, check_interval, check_symbol, day_ms, iso_utc, now_ms, utc_day
from image_cache.core.hooks import Hooks, Progress, Warn, no_progress, no_warn
from image_cache.ingest.batches import ApiResult, UnknownSymbol, check_selection
from image_cache.ingest.ccxt_source import MARKET_TYPES, ccxt_ingest
from image_cache.ingest.dates import START_FLAG
from image_cache.ingest.download import DownloadResult, add_archive_arguments, add_jobs_argument, download
from image_cache.ingest.network import Network
from image_cache.ingest.registry import period_days
from image_cache.ingest.rest import (
    MARKETS,
    Client,
    add_top_arguments,
    check_api_url,
    check_market,
    fetch_tails,
    first_kline,
    resolve_dates,
    top_symbols,
    trading_symbols,
)
from image_cache.ingest.schema import writer
from image_cache.ingest.sources import Source, csv_list
from image_cache.ingest.venues import record_selection, series_name

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse


def read_symbol_file(path: str) -> list[str]:
    """One symbol per line; blank lines and `#` comments are ignored."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise MarketError(f"cannot read symbol list {path}: {getattr(exc, 'strerror', None) or exc}") from None
    symbols = []
    for number, line in enumerate(lines, 1):
        text = line.split("#", 1)[0].strip()
        if text:
            if not SYMBOL_RE.match(text):
                raise MarketError(f"{path}: line {number}: invalid symbol {text!r}")
            symbols.append(text)
    return symbols


def resolve_symbols(entries: list[str], quote: str | None, top: int | None, client: Client,
                    result: ApiResult) -> list[str]:
    """Listed symbols, `@FILE` entries expanded, plus the `--quote` symbols (every one, or the `--top N` by
    24-hour quote volume, recorded in `result`); first occurrence kept."""
    symbols: list[str] = []
    for entry in entries:
        symbols.extend(read_symbol_file(entry[1:]) if entry.startswith("@") else [check_symbol(entry)])
    if quote and top is not None:
        result.top = [{"symbol": s, "quote_volume": v} for s, v in top_symbols(client, quote, top)]
        symbols.extend(t["symbol"] for t in result.top)
    elif quote:
        symbols.extend(trading_symbols(client, quote))
    if not symbols:
        raise MarketError("update needs --symbols or --quote")
    return list(dict.fromkeys(symbols))


def archive_start(conn: sqlite3.Connection, symbol: str, interval: str, start: date | None) -> date | None:
    """Where archives are needed from: after the last archive period ingested, else `start`, else the
    first stored candle's day; None for a new series without `start`."""
    periods = [row[0] for row in conn.execute(
        """SELECT DISTINCT period FROM ingested_files WHERE symbol = ? AND interval = ? AND source != 'rest'
           AND period IS NOT NULL AND status IN ('ok', 'unverified')""", (symbol, interval))]
    if periods:
        after = max(period_days(p)[1] for p in periods)
        return max(after, start) if start else after
    if start:
        return start
    first = conn.execute("""SELECT MIN(c.open_time) FROM candles c JOIN series se ON se.id = c.series_id
                            JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                            WHERE s.symbol = ? AND i.code = ?""", (symbol, interval)).fetchone()[0]
    return None if first is None else utc_day(first)


@dataclass
class UpdateResult:
    symbols: list[str] = field(default_factory=list)
    archives: list[DownloadResult] = field(default_factory=list)
    # The REST tails, and the run's resolved dates, --top selection and unknown symbols.
    api: ApiResult = field(default_factory=ApiResult)
    seconds: float = 0.0
    unreachable: list[str] = field(default_factory=list)  # one line per host given up

    @property
    def ok(self) -> bool:
        # A symbol with no archive may still trade: the REST API says which symbols do not exist.
        return all(d.fetched for d in self.archives) and self.api.ok

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "symbols": self.symbols, "seconds": round(self.seconds, 3),
                "unreachable": self.unreachable, "archives": [d.as_dict() for d in self.archives],
                "api": self.api.as_dict()}

    def text(self) -> str:
        lines = [f"update: {len(self.symbols)} symbols; {self.seconds:.2f} s"]
        lines.extend(d.text() for d in self.archives)
        lines.append(self.api.text())
        return "\n".join(lines)


def update(db: str, *, symbols: list[str], intervals: list[str], quote: str | None = None, top: int | None = None,
           market: str = "spot", start: str | None = None, api_url: str | None = None,
           base_url: str = "https://data.binance.vision/", mirror: str = "mirror", jobs: int = 4,
           retry_failed: bool = False, require_checksum: bool = False, lock_wait: float = 30.0,
           progress: Progress = no_progress, warn: Warn = no_warn, now: int | None = None, timeout: float = 10.0,
           retries: int = 4, backoff: float = 0.5, verbose: bool = False) -> UpdateResult:
    """Archives where published, then the REST API, for every (symbol, interval), up to the last closed candle.

    Archives are planned in whole UTC days: a `--start` inside a day starts at its 00:00. One Network for
    the whole run: a host given up by one download is not asked again by the next.
    """
    started = time.monotonic()
    now = now_ms() if now is None else now
    intervals = [check_interval(i) for i in dict.fromkeys(intervals)]
    check_selection("update", symbols, top, quote, every_quoted=True)
    if not intervals:
        raise ConfigError("update needs at least one interval")
    spec = check_market(market)
    network = Network(warn)
    client = Client(spec, check_api_url(api_url or spec.base_url), timeout=timeout, retries=retries,
                    backoff=backoff, warn=warn, network=network)
    result = UpdateResult()
    start_ms, _ = resolve_dates(start, None, now, result.api)
    inception = start is not None and start_ms is None
    result.symbols = result.api.symbols = resolve_symbols(symbols, quote, top, client, result.api)
    first = None if start_ms is None else utc_day(start_ms)
    today = utc_day(now)

    def new_series_day(symbol: str, interval: str) -> date | None:
        """Where a series with no archive and no candle starts: --start, or its first kline (inception)."""
        name = series_name(symbol, spec.venue)
        if first is not None:
            return first
        if not inception:
            raise MarketError(f"{name} {interval}: no stored candles; give --start for a new series")
        try:
            found = first_kline(client, symbol, interval, now)
        except UnknownSymbol:
            if symbol not in result.api.unknown:
                result.api.unknown.append(symbol)
                warn(f"{symbol}: no such symbol on {spec.venue}")
            return None
        if found is not None:
            result.api.dates[f"inception {name} {interval}"] = iso_utc(found)
        return None if found is None else utc_day(found)

    series = [(s, i) for s in result.symbols for i in intervals]
    starts: dict[date, list[tuple[str, str]]] = {}
    if os.path.exists(db):
        with writer(db, "ingest update", lock_wait) as conn:
            for s, i in series:
                day = archive_start(conn, series_name(s, spec.venue), i, first) or new_series_day(s, i)
                if day is not None:
                    starts.setdefault(day, []).append((s, i))
    elif first is None and not inception:
        raise MarketError(f"{db} does not exist yet; give --start")
    else:
        for s, i in series:
            if (day := new_series_day(s, i)) is not None:
                starts.setdefault(day, []).append((s, i))
    for day, todo in sorted(starts.items()):
        if day >= today:
            continue
        # download() takes a product of symbols and intervals: one call per interval keeps it exact.
        for interval in dict.fromkeys(i for _, i in todo):
            names = [s for s, i in todo if i == interval]
            result.archives.append(download(
                db, symbols=names, intervals=[interval], start=day.isoformat(), market=market,
                base_url=base_url, mirror=mirror, jobs=jobs, retry_failed=retry_failed,
                require_checksum=require_checksum, lock_wait=lock_wait, progress=progress, warn=warn,
                today=today, retries=retries, backoff=backoff, timeout=timeout, network=network, verbose=verbose))
    with writer(db, "ingest update", lock_wait) as conn:
        if result.api.top is not None:
            record_selection(conn, spec.venue, f"top {top} by 24-hour quote volume, quoted in {quote}",
                             [t["symbol"] for t in result.api.top])
        fetch_tails(conn, client, [(s, i) for s, i in series if s not in result.api.unknown],
                    start_ms=None if first is None else day_ms(first), end_ms=None, now=now, result=result.api,
                    inception=inception, progress=progress, warn=warn)
    result.unreachable = list(network.down.values())
    result.seconds = time.monotonic() - started
    return result


def update_ccxt(db: str, *, exchange: str, symbols: list[str], intervals: list[str], market: str = "spot",
                **options: Any) -> UpdateResult:
    """`update` for an exchange without archives: every series through CCXT, from after its last stored candle
    (a new one from `start`)."""
    if market not in MARKET_TYPES:
        raise MarketError(f"--market {market} is Binance's; {exchange} takes spot, swap or future")
    api = ccxt_ingest(db, exchange=exchange, symbols=symbols, intervals=intervals, market=market, **options)
    return UpdateResult(symbols=api.symbols, api=api, seconds=api.seconds)


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", type=csv_list, default=[],
                   help="comma-separated symbols and @FILE lists (one symbol per line)")
    p.add_argument("--quote", help="also every trading symbol quoted in this asset, e.g. USDT (with --top: the N "
                   "most traded of them)")
    p.add_argument("--intervals", type=flags.intervals, required=True, help="comma-separated, e.g. 1m,1h")
    p.add_argument("--start", type=START_FLAG, help="first UTC day for series with no archives yet: a date, "
                   "N days ago, today or inception")
    p.add_argument("--exchange", default="binance",
                   help="binance (archives, then its REST API), or any CCXT exchange id (no archives: CCXT alone, "
                        "with CCXT symbols such as BTC/USDT and --market spot, swap or future)")
    p.add_argument("--market", choices=tuple(dict.fromkeys((*MARKETS, *MARKET_TYPES))), default="spot",
                   help="binance: spot, USDⓈ-M (um) or COIN-M (cm); another exchange: spot, swap or future")
    p.add_argument("--api-url", help="REST API root (default: the market's own)")
    add_top_arguments(p)
    add_archive_arguments(p)
    add_jobs_argument(p)


def _run(args: argparse.Namespace, hooks: Hooks) -> UpdateResult:
    if args.exchange != "binance":
        return update_ccxt(args.db, exchange=args.exchange, symbols=args.symbols, intervals=args.intervals,
                           market=args.market, top=args.top, quote=args.quote, start=args.start,
                           api_url=args.api_url, lock_wait=args.lock_wait, **hooks)
    return update(args.db, symbols=args.symbols, intervals=args.intervals, quote=args.quote, top=args.top,
                  market=args.market,
                  start=args.start, api_url=args.api_url, base_url=args.base_url, mirror=args.mirror,
                  jobs=args.jobs, retry_failed=args.retry_failed, require_checksum=args.require_checksum,
                  lock_wait=args.lock_wait, verbose=args.verbose, **hooks)


SOURCE = Source("update", "archives where published, then the REST API: every series to its last closed candle",
                _arguments, _run, checksums=True)
