"""`python -m ingest update`: bring every named series up to its last closed candle.

Archives first (monthly files for whole months, then daily files, where Binance Vision has published
them), from the day after the last archive period the registry holds; then the REST API for the
tail the archives do not cover yet. A later archive for a period fetched over REST supersedes those
rows (the registry counts the revisions). Symbols may be listed, read from `@FILE` (one per line), or
taken from the exchange's instrument list (`--quote USDT`: every trading symbol quoted in USDT).
"""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any

from image_cache.core import flags
from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, SYMBOL_RE, check_interval, check_symbol, now_ms, utc_ms
from image_cache.core.hooks import Progress, Warn, no_progress, no_warn
from image_cache.ingest.download import DownloadResult, add_archive_arguments, add_jobs_argument, download
from image_cache.ingest.network import Network
from image_cache.ingest.registry import writer
from image_cache.ingest.rest import ApiResult, Client, add_market_arguments, check_api_url, check_market, fetch_tails
from image_cache.ingest.sources import Source, csv_list
from image_cache.ingest.venues import series_name

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


def quoted_symbols(client: Client, quote: str) -> list[str]:
    """Every symbol trading now and quoted in `quote`, from the market's instrument list, sorted."""
    info = client.get(client.market.exchange_info, {})
    entries = info.get("symbols") if isinstance(info, dict) else None
    if not isinstance(entries, list):
        raise MarketError("the exchange's instrument list has no 'symbols' array")
    found = sorted({e["symbol"] for e in entries
                    if isinstance(e, dict) and isinstance(e.get("symbol"), str) and SYMBOL_RE.match(e["symbol"])
                    and e.get("quoteAsset") == quote and (e.get("status") or e.get("contractStatus")) == "TRADING"})
    if not found:
        raise MarketError(f"no trading symbol is quoted in {quote} on this market")
    return found


def resolve_symbols(entries: list[str], quote: str | None, client: Client) -> list[str]:
    """Listed symbols, `@FILE` entries expanded, plus the `--quote` symbols; first occurrence kept."""
    symbols: list[str] = []
    for entry in entries:
        symbols.extend(read_symbol_file(entry[1:]) if entry.startswith("@") else [check_symbol(entry)])
    if quote:
        symbols.extend(quoted_symbols(client, quote))
    if not symbols:
        raise MarketError("update needs --symbols or --quote")
    return list(dict.fromkeys(symbols))


def _period_end(period: str) -> date:
    if len(period) == 10:
        return date.fromisoformat(period) + timedelta(days=1)
    first = date.fromisoformat(period + "-01")
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def archive_start(conn: sqlite3.Connection, symbol: str, interval: str, start: date | None) -> date | None:
    """Where archives are needed from: after the last archive period ingested, else `start`, else the
    first stored candle's day; None for a new series without `start`."""
    periods = [row[0] for row in conn.execute(
        """SELECT DISTINCT period FROM ingested_files WHERE symbol = ? AND interval = ? AND source != 'rest'
           AND period IS NOT NULL AND status IN ('ok', 'unverified')""", (symbol, interval))]
    if periods:
        after = max(_period_end(p) for p in periods)
        return max(after, start) if start else after
    if start:
        return start
    first = conn.execute("""SELECT MIN(c.open_time) FROM candles c JOIN series se ON se.id = c.series_id
                            JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                            WHERE s.symbol = ? AND i.code = ?""", (symbol, interval)).fetchone()[0]
    return None if first is None else datetime.fromtimestamp(first // 1000, tz=timezone.utc).date()


@dataclass
class UpdateResult:
    symbols: list[str] = field(default_factory=list)
    archives: list[DownloadResult] = field(default_factory=list)
    api: ApiResult | None = None
    seconds: float = 0.0
    unreachable: list[str] = field(default_factory=list)  # one line per host given up

    @property
    def ok(self) -> bool:
        return all(d.ok for d in self.archives) and (self.api is None or self.api.ok)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "symbols": self.symbols, "seconds": round(self.seconds, 3),
                "unreachable": self.unreachable, "archives": [d.as_dict() for d in self.archives],
                "api": self.api.as_dict() if self.api else None}

    def text(self) -> str:
        lines = [f"update: {len(self.symbols)} symbols; {self.seconds:.2f} s"]
        lines.extend(d.text() for d in self.archives)
        if self.api is not None:
            lines.append(self.api.text())
        return "\n".join(lines)


def update(db: str, *, symbols: list[str], intervals: list[str], quote: str | None = None, market: str = "spot",
           start: str | None = None, api_url: str | None = None, base_url: str = "https://data.binance.vision/",
           mirror: str = "mirror", jobs: int = 4, retry_failed: bool = False, require_checksum: bool = False,
           lock_wait: float = 30.0, progress: Progress = no_progress, warn: Warn = no_warn,
           now: int | None = None, timeout: float = 10.0, retries: int = 4, backoff: float = 0.5,
           verbose: bool = False) -> UpdateResult:
    """Archives where published, then the REST API, for every (symbol, interval), up to the last closed candle.

    One Network for the whole run: a host given up by one download is not asked again by the next.
    """
    started = time.monotonic()
    now = now_ms() if now is None else now
    intervals = [check_interval(i) for i in dict.fromkeys(intervals)]
    if not intervals:
        raise MarketError("update needs at least one interval")
    spec = check_market(market)
    network = Network(warn)
    client = Client(spec, check_api_url(api_url or spec.base_url), timeout=timeout, retries=retries,
                    backoff=backoff, warn=warn, network=network)
    result = UpdateResult(resolve_symbols(symbols, quote, client))
    first = None if start is None else date.fromisoformat(_day(start))
    today = datetime.fromtimestamp(now // 1000, tz=timezone.utc).date()
    series = [(s, i) for s in result.symbols for i in intervals]

    starts: dict[date, list[tuple[str, str]]] = {}
    if os.path.exists(db):
        with writer(db, "ingest update", lock_wait) as conn:
            for s, i in series:
                day = archive_start(conn, series_name(s, spec.venue), i, first)
                if day is None:
                    raise MarketError(f"{series_name(s, spec.venue)} {i}: no stored candles; give --start for a new series")
                starts.setdefault(day, []).append((s, i))
    elif first is None:
        raise MarketError(f"{db} does not exist yet; give --start")
    else:
        starts[first] = series
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
    result.api = ApiResult()
    with writer(db, "ingest update", lock_wait) as conn:
        fetch_tails(conn, client, series, start_ms=utc_ms(start), end_ms=None, now=now, result=result.api,
                    progress=progress)
    result.unreachable = list(network.down.values())
    result.seconds = time.monotonic() - started
    return result


def _day(value: str) -> str:
    ms = utc_ms(value)
    if ms % DAY_MS:
        raise MarketError(f"--start {value!r} must be a date (YYYY-MM-DD)")
    return datetime.fromtimestamp(ms // 1000, tz=timezone.utc).date().isoformat()


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", type=csv_list, default=[],
                   help="comma-separated symbols and @FILE lists (one symbol per line)")
    p.add_argument("--quote", help="also every trading symbol quoted in this asset, e.g. USDT")
    p.add_argument("--intervals", type=flags.intervals, required=True, help="comma-separated, e.g. 1m,1h")
    p.add_argument("--start", type=flags.date, help="first UTC date for series with no archives yet")
    add_market_arguments(p)
    add_archive_arguments(p)
    add_jobs_argument(p)


def _run(args: argparse.Namespace, hooks: dict[str, Any]) -> UpdateResult:
    return update(args.db, symbols=args.symbols, intervals=args.intervals, quote=args.quote, market=args.market,
                  start=args.start, api_url=args.api_url, base_url=args.base_url, mirror=args.mirror,
                  jobs=args.jobs, retry_failed=args.retry_failed, require_checksum=args.require_checksum,
                  lock_wait=args.lock_wait, verbose=args.verbose, **hooks)


SOURCE = Source("update", "archives where published, then the REST API: every series to its last closed candle",
                _arguments, _run, checksums=True)
