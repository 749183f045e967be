"""The exchange's REST klines endpoint: closed candles after the last stored one, for the recent tail.

Binance spot (`/api/v3/klines`), USDⓈ-M (`/fapi/v1/klines`) and COIN-M (`/dapi/v1/klines`) futures
share one shape: `symbol, interval, startTime, endTime, limit` in, an array of 12-field kline arrays
out, oldest first. Requests are paged at the endpoint's maximum `limit` until the server has no
more. The used request weight comes back in `X-MBX-USED-WEIGHT-1M`; near the limit the client
waits for the next minute. 429 (rate limit) and 418 (IP ban) carry `Retry-After`, which is obeyed;
5xx answers and timeouts are retried with exponential backoff, a bounded number of times; a host
that cannot be reached a few times in a row is given up for the run (ingest/network.py). A series
the network kept from us is reported as such, never recorded as a rejected file.

Only closed candles (open time + interval <= now) are kept. Each series' fetched candles are
validated like any archive and written as one registry entry (source `rest`) in one transaction
(ingest/batches.py, shared with the CCXT source), into the series of the market's venue
(ingest/venues.py: `BTCUSDT` on spot, `BTCUSDT-BINANCE-UM` on USDⓈ-M futures).
"""

from __future__ import annotations

import http.client
import json
import sqlite3
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from image_cache.core import flags
from image_cache.core.errors import MarketError
from image_cache.core.grid import SYMBOL_RE, check_interval, check_symbol, close_time_ms, now_ms
from image_cache.core.hooks import Hooks, Progress, Warn, no_progress, no_warn
from image_cache.ingest.batches import ApiResult, GaveUp, UnknownSymbol, check_selection, ingest_batches
from image_cache.ingest.dates import END_FLAG, INCEPTION, START_FLAG, check_date, described, first_candle, resolve_date
from image_cache.ingest.network import Network, unreachable
from image_cache.ingest.registry import SourceFile, reject
from image_cache.ingest.schema import writer
from image_cache.ingest.sources import Source
from image_cache.ingest.validate import fail
from image_cache.ingest.venues import BINANCE_SPOT, Venue, record_selection, series_name

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse


@dataclass(frozen=True)
class Market:
    """One exchange market's REST API: where klines and the instrument list live, and their limits."""

    venue: Venue
    base_url: str
    klines: str
    exchange_info: str
    tickers: str  # 24-hour statistics of every symbol
    max_limit: int
    weight_limit: int  # request weight per minute
    weight: Callable[[int], int]  # request weight of one klines call with this `limit`
    intervals: frozenset[str]


def _futures_weight(limit: int) -> int:
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


_FUTURES_INTERVALS = frozenset({"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d",
                                "1w", "1mo"})
MARKETS = {
    "spot": Market(BINANCE_SPOT, "https://api.binance.com", "/api/v3/klines", "/api/v3/exchangeInfo",
                   "/api/v3/ticker/24hr", 1000, 6000, lambda limit: 2, _FUTURES_INTERVALS | {"1s"}),
    "um": Market(Venue("binance", "um"), "https://fapi.binance.com", "/fapi/v1/klines", "/fapi/v1/exchangeInfo",
                 "/fapi/v1/ticker/24hr", 1500, 2400, _futures_weight, _FUTURES_INTERVALS),
    "cm": Market(Venue("binance", "cm"), "https://dapi.binance.com", "/dapi/v1/klines", "/dapi/v1/exchangeInfo",
                 "/dapi/v1/ticker/24hr", 1500, 2400, _futures_weight, _FUTURES_INTERVALS),
}
# The API spells months `1M`; everything else is the same code as ours.
API_INTERVAL = {"1mo": "1M"}
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"
# The API's error code for a symbol it does not list.
INVALID_SYMBOL = -1121


def _error_code(detail: str) -> int | None:
    """The `code` of the API's JSON error body, if it is one."""
    try:
        body = json.loads(detail)
    except ValueError:
        return None
    return body.get("code") if isinstance(body, dict) else None


class Transient(Exception):
    """Worth retrying: a 5xx, a timeout, a reset connection, a cut body."""


class Unreachable(Transient):
    """No connection: retried without a word, since the host's Network count speaks for all of them."""


class RateLimited(Exception):
    def __init__(self, status: int, retry_after: float):
        super().__init__(f"HTTP {status}")
        self.status = status
        self.retry_after = retry_after


@dataclass
class Client:
    """HTTP GETs of JSON with the exchange's rate-limit rules; counts what it did."""

    market: Market
    api_url: str
    timeout: float = 10.0
    retries: int = 4
    backoff: float = 0.5
    # Waits for 429/418 before giving up: each honours the server's Retry-After.
    rate_limit_waits: int = 5
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.time
    warn: Warn = no_warn
    network: Network = field(default_factory=Network)
    requests: int = 0
    retried: int = 0
    waited_s: float = 0.0
    max_weight: int = 0

    def _wait(self, seconds: float) -> None:
        self.waited_s += seconds
        self.sleep(seconds)

    def _once(self, url: str) -> Any:
        self.network.check(url)
        self.requests += 1
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = response.read()
                used = response.headers.get(WEIGHT_HEADER)
        except urllib.error.HTTPError as exc:
            self.network.answered(url)
            retry_after = exc.headers.get("Retry-After") if exc.headers else None
            detail = exc.read(300).decode("utf-8", "replace").strip()
            exc.close()
            if exc.code in (418, 429):
                raise RateLimited(exc.code,
                                  float(retry_after) if retry_after and retry_after.isdigit() else 60.0) from None
            if exc.code >= 500:
                raise Transient(f"HTTP {exc.code}") from None
            if exc.code == 400 and _error_code(detail) == INVALID_SYMBOL:
                raise UnknownSymbol(f"HTTP 400: {detail}") from None
            raise MarketError(f"{url}: HTTP {exc.code} {exc.reason}: {detail}") from None
        except (TimeoutError, urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if (down := unreachable(exc)) is not None:
                self.network.failed(url, down)
                raise Unreachable(str(down)) from None
            reason = getattr(exc, "reason", None) or exc
            raise Transient(str(reason) or type(exc).__name__) from None
        self.network.answered(url)
        if used is not None and used.isdigit():
            self.max_weight = max(self.max_weight, int(used))
            self._pace(int(used))
        try:
            return json.loads(body)
        except ValueError:
            raise MarketError(f"{url}: the response is not JSON") from None

    def _pace(self, used: int) -> None:
        """Wait for the next minute when another call could take the used weight over the limit."""
        if used + self.market.weight(self.market.max_limit) > self.market.weight_limit:
            pause = 60.0 - self.clock() % 60.0 + 0.5
            self.warn(f"request weight {used} of {self.market.weight_limit} used; waiting {pause:.1f}s")
            self._wait(pause)

    def get(self, path: str, params: dict[str, Any]) -> Any:
        url = self.api_url.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
        tries = waits = 0
        while True:
            try:
                return self._once(url)
            except RateLimited as exc:
                waits += 1
                if waits > self.rate_limit_waits:
                    raise MarketError(f"{url}: HTTP {exc.status} rate limit persisted "
                                      f"after {self.rate_limit_waits} waits") from None
                self.warn(f"HTTP {exc.status} from the API: waiting {exc.retry_after:g}s (Retry-After)")
                self._wait(exc.retry_after)
            except Transient as exc:
                tries += 1
                if tries > self.retries:
                    raise GaveUp(f"{url}: {exc} (gave up after {tries} attempts)") from None
                self.retried += 1
                delay = self.backoff * 2 ** (tries - 1)
                if isinstance(exc, Unreachable):
                    self.network.check(url)  # no backoff for a host given up just now
                else:
                    self.warn(f"{exc} from the API; retrying in {delay:g}s ({tries}/{self.retries})")
                self._wait(delay)


# ---------------------------------------------------------------------------------------- klines

def _table(name: str, page: list[Any]) -> np.ndarray:
    """A page of klines (12-field arrays of numbers or decimal strings) as an (n, 11) float table.

    Pages are converted as they come, so a long fetch holds 88 bytes per candle, not Python lists.
    """
    if not all(isinstance(row, list) and len(row) == 12 for row in page):
        raise fail(name, None, "response", "klines are not arrays of 12 fields")
    try:
        table = np.array([row[:11] for row in page], dtype=np.float64).reshape(-1, 11)
    except (TypeError, ValueError):
        raise fail(name, None, "response", "klines are not arrays of 12 numeric fields") from None
    ints = table[:, [0, 6, 8]]
    # An integer field that is not an exact integer (or too large for one) is refused, not rounded.
    if (bad := np.flatnonzero(~np.isfinite(ints).all(axis=1) | (np.abs(ints) >= 2**53).any(axis=1)
                              | (ints != np.round(ints)).any(axis=1))).size:
        raise fail(name, None, "integer", f"kline {page[int(bad[0])]!r}")
    return table


def fetch_klines(client: Client, symbol: str, interval: str, start_ms: int, end_ms: int,
                 now: int) -> np.ndarray:
    """Klines with `start_ms <= open time < end_ms` that closed by `now`, paged at the maximum limit,
    as an (n, 11) table (the 12th field, `ignore`, is dropped)."""
    market = client.market
    pages: list[np.ndarray] = []
    cursor = start_ms
    while cursor < end_ms:
        page = client.get(market.klines, {"symbol": symbol, "interval": API_INTERVAL.get(interval, interval),
                                          "startTime": cursor, "endTime": end_ms - 1, "limit": market.max_limit})
        if not isinstance(page, list):
            raise MarketError(f"{symbol} {interval}: the klines response is not a list")
        table = _table(f"{symbol}-{interval} klines", page)
        opens = table[:, 0].astype(np.int64)
        keep = (opens >= cursor) & (opens < end_ms) & (np.asarray(close_time_ms(interval, opens)) <= now)
        pages.append(table[keep])
        # A short page, or one reaching candles still open, means the server has nothing more for us.
        if len(page) < market.max_limit or not keep.all():
            break
        cursor = int(opens[-1]) + 1
    return np.concatenate(pages) if pages else np.empty((0, 11))


def check_market(market: str) -> Market:
    if market not in MARKETS:
        raise MarketError(f"unknown market {market!r} (known: {', '.join(MARKETS)})")
    return MARKETS[market]


def check_api_url(api_url: str) -> str:
    if urllib.parse.urlsplit(api_url).scheme not in ("http", "https"):
        raise MarketError(f"--api-url {api_url!r} must be an http or https URL")
    return api_url


def first_kline(client: Client, symbol: str, interval: str, now: int) -> int | None:
    """The open time of the market's first kline of (symbol, interval): `--start inception`."""
    def probe(t: int) -> int | None:
        page = client.get(client.market.klines, {"symbol": symbol, "interval": API_INTERVAL.get(interval, interval),
                                                 "startTime": t, "limit": 1})
        return int(_table(f"{symbol}-{interval} klines", page)[0, 0]) if isinstance(page, list) and page else None
    return first_candle(probe, interval, now)


def fetch_tails(conn: sqlite3.Connection, client: Client, series: list[tuple[str, str]], *,
                start_ms: int | None, end_ms: int | None, now: int, result: ApiResult,
                inception: bool = False, progress: Progress = no_progress, warn: Warn = no_warn) -> None:
    """Bring each (symbol, interval) up to its last closed candle on an open writer connection;
    `inception`: a series with no candles starts at the venue's first one."""
    market = client.market
    todo = []
    for symbol, interval in series:
        name = series_name(symbol, market.venue)
        if interval in market.intervals:
            todo.append((symbol, name, interval))
        else:
            result.files.append(reject(conn, SourceFile(client.api_url, f"{name}-{interval}-rest", None, None, "rest",
                                                        name, interval, venue=market.venue),
                                       f"{symbol} {interval}: the API has no {interval} klines on this market"))

    def fetch(symbol: str, interval: str, begin: int, stop: int) -> np.ndarray:
        return fetch_klines(client, symbol, interval, begin, stop, now)

    def first(symbol: str, interval: str) -> int | None:
        return first_kline(client, symbol, interval, now)

    ingest_batches(conn, todo, venue=market.venue, url=client.api_url.rstrip("/") + market.klines, source="rest",
                   fetch=fetch, start_ms=start_ms, end_ms=end_ms, now=now, result=result,
                   inception=first if inception else None, progress=progress, warn=warn)
    result.requests, result.retries = client.requests, client.retried
    result.waited_s, result.max_weight = client.waited_s, client.max_weight


def trading_symbols(client: Client, quote: str) -> list[str]:
    """Every symbol trading now and quoted in `quote`, from the market's instrument list, sorted."""
    info = client.get(client.market.exchange_info, {})
    entries = info.get("symbols") if isinstance(info, dict) else None
    if not isinstance(entries, list):
        raise MarketError("the exchange's instrument list has no 'symbols' array")
    found = sorted({e["symbol"] for e in entries
                    if isinstance(e, dict) and isinstance(e.get("symbol"), str) and SYMBOL_RE.match(e["symbol"])
                    and e.get("quoteAsset") == quote and (e.get("status") or e.get("contractStatus")) == "TRADING"})
    if not found:
        raise MarketError(f"no trading symbol is quoted in {quote} on {client.market.venue}")
    return found


def top_symbols(client: Client, quote: str, count: int) -> list[tuple[str, float]]:
    """The `count` trading symbols quoted in `quote` with the highest 24-hour quote volume (the market's
    tickers), as (symbol, quote volume); ties are broken by name, so that the order is fixed."""
    trading = set(trading_symbols(client, quote))
    tickers = client.get(client.market.tickers, {})
    if not isinstance(tickers, list):
        raise MarketError("the exchange's 24-hour tickers are not a list")
    volumes = {}
    for t in tickers:
        if isinstance(t, dict) and t.get("symbol") in trading:
            try:
                volumes[t["symbol"]] = float(t.get("quoteVolume") or 0.0)
            except (TypeError, ValueError):
                raise MarketError(f"{t['symbol']}: the 24-hour ticker's quoteVolume is not a number") from None
    return sorted(volumes.items(), key=lambda item: (-item[1], item[0]))[:count]


def resolve_dates(start: str | None, end: str | None, now: int, result: ApiResult) -> tuple[int | None, int | None]:
    """--start and --end in epoch ms, resolved once for the run and recorded in the result (None for
    `inception`: found per series)."""
    if start is not None:
        check_date(start, inception=True)
    start_ms = None if start is None or start.strip().lower() == INCEPTION else resolve_date(start, now)
    end_ms = resolve_date(end, now)
    result.dates.update({k: v for k, v in (("start", described(start, start_ms)), ("end", described(end, end_ms)))
                         if v is not None})
    return start_ms, end_ms


def api(db: str, *, symbols: list[str], intervals: list[str], market: str = "spot", start: str | None = None,
        end: str | None = None, api_url: str | None = None, top: int | None = None, quote: str | None = None,
        lock_wait: float = 30.0, progress: Progress = no_progress, warn: Warn = no_warn, now: int | None = None,
        timeout: float = 10.0, retries: int = 4, backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep) -> ApiResult:
    """Fetch closed klines of `symbols` (plus the `top` symbols quoted in `quote`) × `intervals` from the
    REST API into `db`."""
    started = time.perf_counter()
    now = now_ms() if now is None else now
    symbols = [check_symbol(s) for s in dict.fromkeys(symbols)]
    intervals = [check_interval(i) for i in dict.fromkeys(intervals)]
    check_selection("api", symbols, top, quote)
    spec = check_market(market)
    client = Client(spec, check_api_url(api_url or spec.base_url), timeout=timeout, retries=retries,
                    backoff=backoff, sleep=sleep, warn=warn, network=Network(warn))
    result = ApiResult()
    start_ms, end_ms = resolve_dates(start, end, now, result)
    if top is not None and quote is not None:
        result.top = [{"symbol": s, "quote_volume": v} for s, v in top_symbols(client, quote, top)]
        symbols = list(dict.fromkeys(symbols + [t["symbol"] for t in result.top]))
    if not symbols or not intervals:
        raise MarketError("api needs at least one symbol (--symbols or --top) and one interval")
    result.symbols = symbols
    with writer(db, "ingest api", lock_wait) as conn:
        if result.top is not None:
            record_selection(conn, spec.venue, f"top {top} by 24-hour quote volume, quoted in {quote}",
                             [t["symbol"] for t in result.top])
        fetch_tails(conn, client, [(s, i) for s in symbols for i in intervals], start_ms=start_ms, end_ms=end_ms,
                    now=now, result=result, inception=start is not None and start_ms is None, progress=progress,
                    warn=warn)
    result.seconds = time.perf_counter() - started
    return result


def add_market_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--market", choices=tuple(MARKETS), default="spot", help="spot, USDⓈ-M (um) or COIN-M (cm)")
    p.add_argument("--api-url", help="REST API root (default: the market's Binance API)")


def add_top_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--top", type=flags.integer(1, 1000),
                   help="also the N symbols with the highest 24-hour quote volume (with --quote)")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", type=flags.symbols, default=[], help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--intervals", type=flags.intervals, required=True, help="comma-separated, e.g. 1m,1h")
    add_market_arguments(p)
    add_top_arguments(p)
    p.add_argument("--quote", help="the quote asset --top picks from, e.g. USDT")
    p.add_argument("--start", type=START_FLAG,
                   help="first candle for a series with none yet: a UTC date, N days ago, today, now or inception")
    p.add_argument("--end", type=END_FLAG, help="stop before this (default: the last closed candle)")


def _run(args: argparse.Namespace, hooks: Hooks) -> ApiResult:
    return api(args.db, symbols=args.symbols, intervals=args.intervals, market=args.market, start=args.start,
               end=args.end, api_url=args.api_url, top=args.top, quote=args.quote, lock_wait=args.lock_wait, **hooks)


SOURCE = Source("api", "fetch closed klines from the exchange's REST API (spot, um, cm)", _arguments, _run)
