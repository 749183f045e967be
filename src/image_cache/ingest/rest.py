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
validated like any archive and written as one registry entry (source `rest`) in one transaction.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import socket
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
from image_cache.core.errors import ImageCacheError, MarketError
from image_cache.core.grid import check_interval, check_symbol, close_time_ms, grid_index, grid_time, iso_utc, now_ms, utc_ms
from image_cache.core.hooks import Progress, Warn, no_progress, no_warn
from image_cache.ingest.network import HostDown, Network, unreachable
from image_cache.ingest.registry import FileOutcome, IngestResult, SourceFile, reject, write_file, writer
from image_cache.ingest.sources import Source
from image_cache.ingest.validate import fail, validate
from image_cache.ingest.venues import BINANCE_SPOT, Venue, mismatch, series_name

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse


@dataclass(frozen=True)
class Market:
    """One exchange market's REST API: where klines and the instrument list live, and their limits."""

    venue: Venue
    base_url: str
    klines: str
    exchange_info: str
    max_limit: int
    weight_limit: int  # request weight per minute
    weight: Callable[[int], int]  # request weight of one klines call with this `limit`
    intervals: frozenset[str]


def _futures_weight(limit: int) -> int:
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


_FUTURES_INTERVALS = frozenset({"1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d",
                                "1w", "1mo"})
MARKETS = {
    "spot": Market(BINANCE_SPOT, "https://api.binance.com", "/api/v3/klines", "/api/v3/exchangeInfo", 1000, 6000,
                   lambda limit: 2, _FUTURES_INTERVALS | {"1s"}),
    "um": Market(Venue("binance", "um"), "https://fapi.binance.com", "/fapi/v1/klines", "/fapi/v1/exchangeInfo", 1500, 2400,
                 _futures_weight, _FUTURES_INTERVALS),
    "cm": Market(Venue("binance", "cm"), "https://dapi.binance.com", "/dapi/v1/klines", "/dapi/v1/exchangeInfo", 1500, 2400,
                 _futures_weight, _FUTURES_INTERVALS),
}
# The API spells months `1M`; everything else is the same code as ours.
API_INTERVAL = {"1mo": "1M"}
WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


class Transient(Exception):
    """Worth retrying: a 5xx, a timeout, a reset connection, a cut body."""


class Unreachable(Transient):
    """No connection: retried without a word, since the host's Network count speaks for all of them."""


class GaveUp(MarketError):
    """Transient trouble that outlasted the retries: the network's failure, not the data's."""


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
                raise RateLimited(exc.code, float(retry_after) if retry_after and retry_after.isdigit() else 60.0)
            if exc.code >= 500:
                raise Transient(f"HTTP {exc.code}") from None
            raise MarketError(f"{url}: HTTP {exc.code} {exc.reason}: {detail}") from None
        except (urllib.error.URLError, OSError, http.client.HTTPException, socket.timeout) as exc:
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

_NAMES = ("open_time", "open", "high", "low", "close", "volume", None, "quote_asset_volume", "trades",
          "taker_buy_base_volume", "taker_buy_quote_volume")


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


def _columns(table: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Candle columns and close times of a kline table."""
    columns = {col: table[:, i] for i, col in enumerate(_NAMES) if col}
    columns["open_time"] = columns["open_time"].astype(np.int64)
    columns["trades"] = columns["trades"].astype(np.int64)
    return columns, table[:, 6].astype(np.int64)


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


@dataclass(frozen=True)
class Tail:
    """What to fetch for one series: open times in [start_ms, end_ms); `series`: the series' name."""

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


def plan_tail(conn: sqlite3.Connection, symbol: str, interval: str, start_ms: int | None, end_ms: int | None,
              now: int, venue: Venue) -> Tail | None:
    """From the slot after the last stored candle (or `start_ms`) to the last closed candle (or `end_ms`)
    of `symbol`'s series on `venue`."""
    name = series_name(symbol, venue)
    last = last_stored(conn, name, interval)
    begin = start_ms if last is None else max(start_ms or 0, grid_time(interval, grid_index(interval, last) + 1))
    if begin is None:
        raise MarketError(f"{name} {interval}: no stored candles; give --start for a new series")
    # Open time of the first candle still open now: nothing from there on is fetched.
    open_now = grid_time(interval, grid_index(interval, now))
    stop = min(end_ms, open_now) if end_ms is not None else open_now
    return Tail(symbol, interval, begin, stop, name) if begin < stop else None


def ingest_tail(conn: sqlite3.Connection, client: Client, tail: Tail, now: int) -> FileOutcome | None:
    """Fetch, validate and write one series' tail as one registry entry; None when nothing was served."""
    market = client.market
    url = client.api_url.rstrip("/") + market.klines + "?" + urllib.parse.urlencode(
        {"symbol": tail.symbol, "interval": API_INTERVAL.get(tail.interval, tail.interval)})
    name = f"{tail.series}-{tail.interval}-rest-{iso_utc(tail.start_ms)}"
    src = SourceFile(url, name, None, None, "rest", tail.series, tail.interval, venue=market.venue)
    try:
        table = fetch_klines(client, tail.symbol, tail.interval, tail.start_ms, tail.end_ms, now)
        if not len(table):
            return None
        columns, close_ms = _columns(table)
        parsed = validate(name, tail.interval, columns, first_line=1, time_unit="ms",
                          close_ms=close_ms, period=(tail.start_ms, tail.end_ms))
    except (GaveUp, HostDown):
        raise  # nothing was served to judge: not a rejected file
    except ImageCacheError as exc:
        return reject(conn, src, str(exc))
    span = f"{iso_utc(int(parsed.candles['open_time'][0]))}..{iso_utc(int(parsed.candles['open_time'][-1]))}"
    # No period: a REST batch vouches for the candles it served, not for a whole day or month.
    src = SourceFile(url, f"{tail.series}-{tail.interval}-rest-{span}", hashlib.sha256(parsed.candles.tobytes())
                     .hexdigest(), None, "rest", tail.series, tail.interval, venue=market.venue)
    return write_file(conn, src, parsed, verified=True)


@dataclass
class ApiResult(IngestResult):
    """An IngestResult whose entries are REST batches, plus what the client did and the series the
    network kept from us (`network`: "SYMBOL INTERVAL: why", recorded nowhere else)."""

    requests: int = 0
    retries: int = 0
    waited_s: float = 0.0
    max_weight: int = 0
    network: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return super().ok and not self.network

    def as_dict(self) -> dict[str, Any]:
        return {**super().as_dict(), "requests": self.requests, "retries": self.retries,
                "waited_s": round(self.waited_s, 3), "max_weight": self.max_weight, "network": self.network}

    def text(self) -> str:
        lost = f"; {len(self.network)} series not fetched for the network ({self.network[0]})" if self.network else ""
        return (super().text() + f"\napi: {self.requests} requests, {self.retries} retries, "
                f"{self.waited_s:.1f} s waited, peak weight {self.max_weight}{lost}")


def check_market(market: str) -> Market:
    if market not in MARKETS:
        raise MarketError(f"unknown market {market!r} (known: {', '.join(MARKETS)})")
    return MARKETS[market]


def check_api_url(api_url: str) -> str:
    if urllib.parse.urlsplit(api_url).scheme not in ("http", "https"):
        raise MarketError(f"--api-url {api_url!r} must be an http or https URL")
    return api_url


def fetch_tails(conn: sqlite3.Connection, client: Client, series: list[tuple[str, str]], *,
                start_ms: int | None, end_ms: int | None, now: int, result: ApiResult,
                progress: Progress = no_progress) -> None:
    """Bring each (symbol, interval) up to its last closed candle on an open writer connection."""
    venue = client.market.venue
    for n, (symbol, interval) in enumerate(progress(series, total=len(series), desc="api", unit="series")):
        name = series_name(symbol, venue)
        refused = (f"{symbol} {interval}: the API has no {interval} klines on this market"
                   if interval not in client.market.intervals else mismatch(conn, name, venue))
        if refused is not None:  # decided before a request: another venue's last candle plans nothing here
            result.files.append(reject(conn, SourceFile(client.api_url, f"{name}-{interval}-rest", None, None,
                                                        "rest", name, interval, venue=venue), refused))
            continue
        tail = plan_tail(conn, symbol, interval, start_ms, end_ms, now, venue)
        try:
            outcome = None if tail is None else ingest_tail(conn, client, tail, now)
        except GaveUp as exc:
            result.network.append(f"{symbol} {interval}: {exc}")
            continue
        except HostDown as exc:  # the rest would not be asked either
            result.network.extend(f"{s} {i}: {exc}" for s, i in series[n:])
            break
        if outcome is not None:
            result.files.append(outcome)
    result.requests, result.retries = client.requests, client.retried
    result.waited_s, result.max_weight = client.waited_s, client.max_weight


def api(db: str, *, symbols: list[str], intervals: list[str], market: str = "spot", start: str | None = None,
        end: str | None = None, api_url: str | None = None, lock_wait: float = 30.0,
        progress: Progress = no_progress, warn: Warn = no_warn, now: int | None = None,
        timeout: float = 10.0, retries: int = 4, backoff: float = 0.5,
        sleep: Callable[[float], None] = time.sleep) -> ApiResult:
    """Fetch closed klines of `symbols` × `intervals` from the REST API into `db`."""
    started = time.perf_counter()
    symbols = [check_symbol(s) for s in dict.fromkeys(symbols)]
    intervals = [check_interval(i) for i in dict.fromkeys(intervals)]
    if not symbols or not intervals:
        raise MarketError("api needs at least one symbol and one interval")
    spec = check_market(market)
    client = Client(spec, check_api_url(api_url or spec.base_url), timeout=timeout, retries=retries,
                    backoff=backoff, sleep=sleep, warn=warn, network=Network(warn))
    result = ApiResult()
    with writer(db, "ingest api", lock_wait) as conn:
        fetch_tails(conn, client, [(s, i) for s in symbols for i in intervals], start_ms=utc_ms(start),
                    end_ms=utc_ms(end), now=now_ms() if now is None else now, result=result, progress=progress)
    result.seconds = time.perf_counter() - started
    return result


def add_market_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--market", choices=tuple(MARKETS), default="spot", help="spot, USDⓈ-M (um) or COIN-M (cm)")
    p.add_argument("--api-url", help="REST API root (default: the market's Binance API)")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", type=flags.symbols, required=True, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--intervals", type=flags.intervals, required=True, help="comma-separated, e.g. 1m,1h")
    add_market_arguments(p)
    p.add_argument("--start", type=flags.date, help="first UTC date for a series with no candles yet")
    p.add_argument("--end", type=flags.date, help="UTC date to stop before (default: the last closed candle)")


def _run(args: argparse.Namespace, hooks: dict[str, Any]) -> ApiResult:
    return api(args.db, symbols=args.symbols, intervals=args.intervals, market=args.market, start=args.start,
               end=args.end, api_url=args.api_url, lock_wait=args.lock_wait, **hooks)


SOURCE = Source("api", "fetch closed klines from the exchange's REST API (spot, um, cm)", _arguments, _run)
