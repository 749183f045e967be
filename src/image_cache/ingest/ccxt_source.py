"""`python -m ingest ccxt`: closed OHLCV candles of any exchange CCXT knows, into series of their own.

The exchange's markets are loaded once; each series is paged from the slot after its last stored
candle (or `--start`) with the exchange's own OHLCV limit (CCXT's `features`), paced by CCXT's rate
limiter (`enableRateLimit`, the exchange's `rateLimit`). A rate-limit answer (429), a timeout or an
exchange that is down is retried with backoff, a bounded number of times. Only closed candles are
kept; each series' batch is validated and written like a REST batch (ingest/rest.py: one registry
entry, source `ccxt`, one transaction), into the series named for the venue (ingest/venues.py:
`BTCUSDT-OKX-SWAP`). CCXT's candles carry no quote volume, trade count or taker volumes: they are
stored as 0.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from image_cache.core import flags
from image_cache.core.errors import ConfigError, MarketError
from image_cache.core.grid import check_interval, close_time_ms, now_ms
from image_cache.core.hooks import Hooks, Progress, Warn, no_progress, no_warn
from image_cache.ingest.batches import ApiResult, GaveUp, UnknownSymbol, check_selection, ingest_batches
from image_cache.ingest.dates import END_FLAG, START_FLAG, first_candle
from image_cache.ingest.rest import add_top_arguments, check_api_url, resolve_dates
from image_cache.ingest.schema import writer
from image_cache.ingest.sources import Source, csv_list
from image_cache.ingest.venues import Venue, record_selection, series_name

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse

CCXT_PIN = "ccxt==4.5.90"
MARKET_TYPES = ("spot", "swap", "future")
# Rows per request when CCXT does not say the exchange's limit.
DEFAULT_LIMIT = 500
_NAME_RE = re.compile(r"[^A-Z0-9]")


def load_ccxt() -> Any:
    try:
        import ccxt
    except ImportError:
        raise MarketError(f"ingest ccxt needs CCXT: pip install 'image-cache[ccxt]' (or {CCXT_PIN})") from None
    return ccxt


def _point_at(urls: Any, root: str) -> Any:
    """Every URL in CCXT's (nested) `urls['api']` with its scheme and host replaced by `root`'s."""
    if isinstance(urls, dict):
        return {key: _point_at(value, root) for key, value in urls.items()}
    if isinstance(urls, str) and "://" in urls:
        return root.rstrip("/") + urllib.parse.urlsplit(urls).path
    return urls


@dataclass
class Exchange:
    """One CCXT exchange opened for one market type, with bounded retries and the counts of what it did."""

    api: Any  # a ccxt.Exchange
    venue: Venue
    limit: int
    retries: int = 4
    backoff: float = 0.5
    sleep: Callable[[float], None] = time.sleep
    warn: Warn = no_warn
    requests: int = 0
    retried: int = 0
    waited_s: float = 0.0

    def call(self, what: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        ccxt = load_ccxt()
        tries = 0
        while True:
            self.requests += 1
            try:
                return method(*args, **kwargs)
            except ccxt.BadSymbol as exc:
                raise UnknownSymbol(f"{self.venue}: {what}: {_first_line(exc)}") from None
            except ccxt.NetworkError as exc:  # 429 (DDoSProtection), timeouts, exchange down
                tries += 1
                if tries > self.retries:
                    raise GaveUp(f"{self.venue}: {what}: {_first_line(exc)} (gave up after {tries} attempts)") from None
                self.retried += 1
                delay = max(self.backoff * 2 ** (tries - 1), self.api.rateLimit / 1000)
                self.warn(f"{self.venue}: {what}: {type(exc).__name__}; "
                          f"retrying in {delay:g}s ({tries}/{self.retries})")
                self.waited_s += delay
                self.sleep(delay)
            except ccxt.BaseError as exc:
                raise MarketError(f"{self.venue}: {what}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


def open_exchange(exchange_id: str, market_type: str, *, api_url: str | None = None, timeout: float = 10.0,
                  retries: int = 4, backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep,
                  warn: Warn = no_warn) -> Exchange:
    """CCXT's exchange `exchange_id` for `market_type`, its markets loaded, pointed at `api_url` if given."""
    ccxt = load_ccxt()
    if exchange_id not in ccxt.exchanges:
        raise MarketError(f"unknown exchange {exchange_id!r} (CCXT knows {len(ccxt.exchanges)}, e.g. binance, okx, "
                          "bybit, kraken)")
    if market_type not in MARKET_TYPES:
        raise MarketError(f"unknown market type {market_type!r} (known: {', '.join(MARKET_TYPES)})")
    api = getattr(ccxt, exchange_id)({"enableRateLimit": True, "timeout": int(timeout * 1000),
                                       "options": {"defaultType": market_type}})
    if api_url is not None:
        api.urls["api"] = _point_at(api.urls["api"], check_api_url(api_url))
    features = api.features.get(market_type) or {}
    if "fetchOHLCV" not in features:  # swap and future list linear and inverse contracts apart
        features = features.get("linear") or features.get("inverse") or {}
    limit = int((features.get("fetchOHLCV") or {}).get("limit") or DEFAULT_LIMIT)
    exchange = Exchange(api, Venue(exchange_id, market_type), limit, retries, backoff, sleep, warn)
    exchange.call("markets", api.load_markets)
    return exchange


def market_name(market: dict[str, Any]) -> str | None:
    """Our symbol for a CCXT market: base and quote (`BTC/USDT:USDT` → BTCUSDT), then after `_` a settle
    asset other than the quote (`BTC/USD:BTC` → BTCUSD_BTC) and a future's expiry (BTCUSD_BTC_250627):
    as unique as CCXT's symbol for spot, swap and future markets. None for a market whose base or quote
    has characters a series name cannot hold (a name of other letters would lose them: `币安人生/USDT` is
    not `USDT`)."""
    for asset in (market.get("base"), market.get("quote")):
        if not asset or _NAME_RE.sub("", str(asset).upper()) != str(asset).upper():
            return None
    name = _NAME_RE.sub("", f"{market.get('base') or ''}{market.get('quote') or ''}".upper())
    settle = _NAME_RE.sub("", str(market.get("settle") or "").upper())
    if settle and settle != _NAME_RE.sub("", str(market.get("quote") or "").upper()):
        name += "_" + settle
    if market.get("expiryDatetime"):
        name += "_" + market["expiryDatetime"][2:10].replace("-", "")
    return name


def _markets(exchange: Exchange) -> dict[str, dict[str, Any]]:
    """The exchange's markets of the venue's type, by CCXT symbol."""
    return {symbol: m for symbol, m in exchange.api.markets.items() if m.get("type") == exchange.venue.market}


def top_symbols(exchange: Exchange, quote: str, count: int) -> list[tuple[str, float]]:
    """The `count` active markets quoted in `quote` with the highest 24-hour quote volume, from the
    exchange's tickers: (CCXT symbol, quote volume), ties broken by symbol so that the order is fixed."""
    markets = {s: m for s, m in _markets(exchange).items() if m.get("quote") == quote and m.get("active") is not False}
    tickers = exchange.call("tickers", exchange.api.fetch_tickers)
    volumes = []
    for symbol in (s for s, m in markets.items() if market_name(m) is not None):  # one a series can name
        ticker = tickers.get(symbol) or {}
        volume = ticker.get("quoteVolume")
        if volume is None and ticker.get("baseVolume") is not None and ticker.get("last") is not None:
            volume = ticker["baseVolume"] * ticker["last"]
        volumes.append((symbol, float(volume or 0.0)))
    if not volumes:
        raise MarketError(f"{exchange.venue}: no active market is quoted in {quote}")
    return sorted(volumes, key=lambda item: (-item[1], item[0]))[:count]


def _table(rows: Any, interval: str, what: str) -> np.ndarray:
    """CCXT's [time, open, high, low, close, volume] rows as ingest/rest.py's (n, 11) kline table."""
    if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) >= 6 for r in rows):
        raise MarketError(f"{what}: OHLCV rows are not arrays of 6 fields")
    try:
        ohlcv = np.array([[np.nan if v is None else v for v in r[:6]] for r in rows], dtype=np.float64).reshape(-1, 6)
    except (TypeError, ValueError):
        raise MarketError(f"{what}: OHLCV rows hold values that are not numbers") from None
    table = np.zeros((len(ohlcv), 11))
    table[:, :6] = ohlcv
    opens = ohlcv[:, 0].astype(np.int64)
    table[:, 6] = np.asarray(close_time_ms(interval, opens)) - 1
    return table


def fetch_ohlcv(exchange: Exchange, symbol: str, interval: str, start_ms: int, end_ms: int, now: int) -> np.ndarray:
    """Candles of CCXT market `symbol` with `start_ms <= open time < end_ms` closed by `now`, paged at the
    exchange's limit until it has no more, as an (n, 11) table."""
    timeframe = "1M" if interval == "1mo" else interval
    what = f"{symbol} {interval} OHLCV"
    pages: list[np.ndarray] = []
    cursor = start_ms
    while cursor < end_ms:
        table = _table(exchange.call(what, exchange.api.fetch_ohlcv, symbol, timeframe, since=cursor,
                                     limit=exchange.limit), interval, what)
        if not len(table):
            break
        opens = table[:, 0].astype(np.int64)
        closes = np.asarray(close_time_ms(interval, opens))
        keep = (opens >= cursor) & (opens < end_ms) & (closes <= now)
        pages.append(table[keep])
        last = int(opens.max())
        # Nothing new, or the candle still open reached: the exchange has no more for us.
        if last < cursor or not keep[opens == last].all():
            break
        cursor = int(close_time_ms(interval, last))
    return np.concatenate(pages) if pages else np.empty((0, 11))


def ccxt_ingest(db: str, *, exchange: str, symbols: list[str], intervals: list[str], market: str = "spot",
                top: int | None = None, quote: str | None = None, start: str | None = None, end: str | None = None,
                api_url: str | None = None, lock_wait: float = 30.0, progress: Progress = no_progress,
                warn: Warn = no_warn, now: int | None = None, timeout: float = 10.0, retries: int = 4,
                backoff: float = 0.5, sleep: Callable[[float], None] = time.sleep) -> ApiResult:
    """Fetch closed candles of `symbols` (CCXT symbols, `BTC/USDT`) and/or the `top` markets quoted in
    `quote` × `intervals` from `exchange`'s `market` type into `db`."""
    started = time.perf_counter()
    now = now_ms() if now is None else now
    intervals = [check_interval(i) for i in dict.fromkeys(intervals)]
    check_selection("ccxt", symbols, top, quote)  # before the exchange's markets are loaded over the network
    if not intervals:
        raise ConfigError("ccxt needs --intervals")
    result = ApiResult()
    start_ms, end_ms = resolve_dates(start, end, now, result)
    ex = open_exchange(exchange, market, api_url=api_url, timeout=timeout, retries=retries, backoff=backoff,
                       sleep=sleep, warn=warn)
    wanted = list(dict.fromkeys(symbols))
    if top is not None and quote is not None:
        chosen = top_symbols(ex, quote, top)
        result.top = [{"symbol": s, "quote_volume": v} for s, v in chosen]
        wanted = list(dict.fromkeys(wanted + [s for s, _ in chosen]))
    markets = _markets(ex)
    result.symbols = wanted
    result.unknown = [s for s in wanted if s not in markets]
    unnamable = [s for s in wanted if s in markets and market_name(markets[s]) is None]
    if unnamable:
        raise MarketError(f"{', '.join(unnamable)}: an asset name outside A-Z and 0-9, which a series name cannot "
                          "hold (ingest it into a database of its own under another tool's name)")
    names = {s: series_name(str(market_name(markets[s])), ex.venue) for s in wanted if s in markets}
    # Two markets whose names differ only in characters a series name cannot hold would share a series.
    if len(set(names.values())) < len(names):
        same = sorted(s for s in names if list(names.values()).count(names[s]) > 1)
        raise MarketError(f"{', '.join(same)} would share the series {names[same[0]]}; ingest them one at a time "
                          "into databases of their own")
    for s in result.unknown:
        warn(f"{s}: no such {market} market on {exchange} (not in its market list)")
    missing = [i for i in intervals if ("1M" if i == "1mo" else i) not in (ex.api.timeframes or {})]
    if missing:
        raise MarketError(f"{exchange} has no {', '.join(missing)} candles "
                          f"(it has: {' '.join(ex.api.timeframes or {})})")

    def fetch(symbol: str, interval: str, begin: int, stop: int) -> np.ndarray:
        return fetch_ohlcv(ex, symbol, interval, begin, stop, now)

    def inception(symbol: str, interval: str) -> int | None:
        def probe(t: int) -> int | None:
            rows = ex.call(f"{symbol} {interval} inception", ex.api.fetch_ohlcv, symbol,
                           "1M" if interval == "1mo" else interval, since=t, limit=1)
            return int(rows[0][0]) if rows else None
        return first_candle(probe, interval, now)

    with writer(db, "ingest ccxt", lock_wait) as conn:
        if result.top is not None:
            record_selection(conn, ex.venue, f"top {top} by 24-hour quote volume, quoted in {quote}",
                             [t["symbol"] for t in result.top])
        ingest_batches(conn, [(s, names[s], i) for s in wanted if s in names for i in intervals], venue=ex.venue,
                       url=f"ccxt:{exchange}:{market}", source="ccxt", fetch=fetch,
                       inception=inception if start_ms is None and start is not None else None,
                       start_ms=start_ms, end_ms=end_ms, now=now, result=result, progress=progress, warn=warn)
    result.requests, result.retries, result.waited_s = ex.requests, ex.retried, ex.waited_s
    result.seconds = time.perf_counter() - started
    return result


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exchange", required=True, help="CCXT exchange id, e.g. okx, bybit, kraken, binance")
    p.add_argument("--symbols", type=csv_list, default=[], help="comma-separated CCXT symbols, e.g. BTC/USDT,ETH/USDT")
    p.add_argument("--intervals", type=flags.intervals, required=True, help="comma-separated, e.g. 1h,1d")
    p.add_argument("--market", choices=MARKET_TYPES, default="spot", help="spot, swap (perpetuals) or future")
    add_top_arguments(p)
    p.add_argument("--quote", help="the quote asset --top picks from, e.g. USDT")
    p.add_argument("--start", type=START_FLAG,
                   help="first candle for a series with none yet: a UTC date, N days ago, today, now or inception")
    p.add_argument("--end", type=END_FLAG, help="stop before this (default: the last closed candle)")
    p.add_argument("--api-url", help="the exchange's API root (a server with the same API, e.g. a test double)")


def _run(args: argparse.Namespace, hooks: Hooks) -> ApiResult:
    return ccxt_ingest(args.db, exchange=args.exchange, symbols=args.symbols, intervals=args.intervals,
                       market=args.market, top=args.top, quote=args.quote, start=args.start, end=args.end,
                       api_url=args.api_url, lock_wait=args.lock_wait, **hooks)


SOURCE = Source("ccxt", "fetch closed candles of any exchange through CCXT (spot, swap, future)", _arguments, _run)
