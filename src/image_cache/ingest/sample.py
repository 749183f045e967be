"""A deterministic synthetic market: the demo's data and the benchmarks'.

Per symbol, a 1m series with trends (drift regimes), volatility clustering (an hourly AR(1) factor),
a daily activity cycle, rare jumps, volume that follows volatility, and one or two "exchange
maintenance" spans with no rows (the same spans for every symbol, as on a real exchange), then
resampled to the usual intervals. Same arguments → identical rows: every random number comes from
`np.random.default_rng` seeded by SHA-256 of (seed, symbol), and the arithmetic avoids transcendental
functions (exp, log, cos), whose last bit may differ between platforms.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import numpy as np

from image_cache.core import flags
from image_cache.core.db import immediate
from image_cache.core.errors import MarketError
from image_cache.core.grid import DAY_MS, MINUTE_MS, check_symbol, iso_utc, split_symbol, utc_ms
from image_cache.core.hooks import Hooks, no_progress, no_warn
from image_cache.ingest.gaps import Gap, find_gaps, refresh_known_gaps
from image_cache.ingest.registry import FileOutcome, SourceFile, record
from image_cache.ingest.resample import write_resampled
from image_cache.ingest.schema import CANDLE_DTYPE, series_id, upsert_candles, writer
from image_cache.ingest.sources import Source
from image_cache.ingest.venues import SAMPLE, symbols_not_of

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse


SAMPLE_INTERVALS = ("5m", "15m", "30m", "1h", "4h", "12h", "1d", "1w")
MAX_DAYS = 3660

# Known anchors; other base assets get a stable price from their name.
ANCHOR_PRICES = {"BTC": 60_000.0, "ETH": 3_000.0}
# Relative activity per UTC hour (Asia open, Europe, the US session peak): volume and volatility.
HOURLY_ACTIVITY = np.array([0.9, 0.85, 0.8, 0.75, 0.7, 0.7, 0.75, 0.85, 0.95, 1.0, 1.0, 1.0,
                            1.05, 1.15, 1.3, 1.4, 1.35, 1.25, 1.1, 1.0, 0.95, 0.95, 0.9, 0.9])
MINUTES_PER_DAY = DAY_MS // MINUTE_MS


def stable_seed(seed: int, name: str) -> int:
    """A 128-bit seed from (seed, name) via SHA-256: stable across runs, unlike Python's `hash`."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{name}".encode()).digest()[:16], "big")


def _unit_from_name(name: str) -> float:
    """A stable number in [0, 1) from a name."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") / 2**64


def base_price(symbol: str) -> float:
    """BTC ~ 60,000, ETH ~ 3,000, others between 0.1 and 1,000 by a hash of the base asset."""
    base, _ = split_symbol(symbol)
    if base in ANCHOR_PRICES:
        return ANCHOR_PRICES[base]
    exponent = -1 + 4 * _unit_from_name(base)
    # Three significant digits, computed in Decimal so that no platform's pow() is involved.
    mantissa = Decimal(int(1000 * _unit_from_name(base + "/m")) % 900 + 100) / 100
    return float(mantissa * Decimal(10) ** int(exponent // 1))


def tick_size(price: float) -> float:
    """Price step: six significant digits, at least 1e-8 (Binance spot's precision), at most 0.01."""
    digits = len(str(int(price))) if price >= 1 else 0
    exponent = max(-8, min(-2, digits - 6))
    return float(Decimal(10) ** exponent)


def maintenance_spans(seed: int, minutes: int) -> list[tuple[int, int]]:
    """One or two [start, end) minute spans without rows, 10 minutes to 2 hours, away from the edges."""
    rng = np.random.default_rng(stable_seed(seed, "maintenance"))
    margin = min(MINUTES_PER_DAY, minutes // 4)
    spans = []
    for _ in range(int(rng.integers(1, 3))):
        length = int(rng.integers(10, 121))
        hi = minutes - margin - length
        if hi <= margin:
            break
        start = int(rng.integers(margin, hi))
        spans.append((start, start + length))
    return sorted(spans)


def _hourly_volatility(rng: np.random.Generator, hours: int) -> np.ndarray:
    """Volatility clustering: an AR(1) factor per hour, mapped to a positive multiplier with mean square ≈ 1."""
    shocks = rng.standard_normal(hours) * 0.25
    factor = np.empty(hours)
    level = 0.0
    for i in range(hours):
        level = 0.97 * level + shocks[i]
        factor[i] = level
    variance = 0.25**2 / (1 - 0.97**2)
    return np.sqrt(0.25 + 0.75 * factor**2 / variance)


def _daily_drift(rng: np.random.Generator, days: int) -> np.ndarray:
    """Trends: drift regimes of a few days each, ±1 %/day typical."""
    drift = np.empty(days)
    day = 0
    while day < days:
        length = int(rng.integers(2, 12))
        drift[day:day + length] = rng.normal(0.0, 0.01)
        day += length
    return drift


def generate_symbol(symbol: str, *, days: int, seed: int, end_ms: int,
                    gaps: list[tuple[int, int]] | None = None) -> np.ndarray:
    """The 1m candles (CANDLE_DTYPE) of one symbol, `days` days ending before `end_ms`."""
    rng = np.random.default_rng(stable_seed(seed, symbol))
    n = days * MINUTES_PER_DAY
    p0 = base_price(symbol)
    tick = tick_size(p0)
    u = _unit_from_name(split_symbol(symbol)[0] + "/vol")
    daily_vol = 0.025 if p0 >= 1_000 else 0.03 + 0.03 * u
    sigma = daily_vol / np.sqrt(MINUTES_PER_DAY)
    start_ms = end_ms - days * DAY_MS

    minute = np.arange(n)
    hour = minute // 60
    activity = HOURLY_ACTIVITY[(start_ms // 3_600_000 + hour) % 24]
    local_sigma = sigma * _hourly_volatility(rng, days * 24)[hour] * activity
    drift = _daily_drift(rng, days)[minute // MINUTES_PER_DAY] / MINUTES_PER_DAY
    shocks = rng.standard_normal(n)
    jumps = (rng.random(n) < 2e-4) * rng.normal(0.0, 12.0, n)
    returns = np.clip(drift + local_sigma * (shocks + jumps), -0.3, 0.3)
    close = p0 * np.cumprod(1.0 + returns)
    open_ = np.r_[p0, close[:-1]]
    wick_up = local_sigma * np.abs(rng.standard_normal(n)) * 0.7
    wick_down = np.minimum(local_sigma * np.abs(rng.standard_normal(n)) * 0.7, 0.5)
    high = np.maximum(open_, close) * (1.0 + wick_up)
    low = np.minimum(open_, close) * (1.0 - wick_down)

    def to_tick(x: np.ndarray) -> np.ndarray:
        return np.maximum(np.round(np.rint(x / tick) * tick, 8), tick)

    o, c = to_tick(open_), to_tick(close)
    h = np.maximum(to_tick(high), np.maximum(o, c))
    lo = np.minimum(to_tick(low), np.minimum(o, c))

    # Volume follows volatility and activity; notional per minute is stable per symbol.
    notional = 1_000_000.0 if p0 >= 1_000 else 20_000.0 + 400_000.0 * _unit_from_name(symbol + "/notional")
    surprise = np.abs(returns - drift) / sigma
    volume = notional / p0 * (local_sigma / sigma) * (0.6 + 0.4 * surprise) * rng.gamma(4.0, 0.25, n)
    volume = np.round(volume, 8)
    vwap = (o + h + lo + c) / 4
    quote = np.round(volume * vwap, 8)
    share = np.clip(0.5 + 0.15 * (returns - drift) / local_sigma + rng.normal(0.0, 0.05, n), 0.05, 0.95)
    taker_base = np.round(volume * share, 8)
    taker_quote = np.minimum(np.round(taker_base * vwap, 8), quote)
    trades = np.maximum(1, np.rint(volume * vwap / 500.0 * rng.gamma(8.0, 0.125, n))).astype(np.int64)

    out = np.empty(n, dtype=CANDLE_DTYPE)
    out["open_time"] = start_ms + minute * MINUTE_MS
    out["open"], out["high"], out["low"], out["close"] = o, h, lo, c
    out["volume"], out["quote_asset_volume"], out["trades"] = volume, quote, trades
    out["taker_buy_base_volume"], out["taker_buy_quote_volume"] = taker_base, taker_quote
    keep = np.ones(n, dtype=bool)
    for first, stop in gaps or []:
        keep[first:stop] = False
    return out[keep]


def candles_digest(candles: np.ndarray) -> str:
    """SHA-256 of the candles in a fixed byte order: the sample's "file hash" in the registry."""
    canonical = candles.astype(CANDLE_DTYPE.newbyteorder("<"))
    return hashlib.sha256(canonical.tobytes()).hexdigest()


# ---------------------------------------------------------------------------------------- database

@dataclass
class SymbolReport:
    symbol: str
    status: str
    candles: dict[str, int]
    inserted: int
    revised: int
    gaps: list[Gap]

    def as_dict(self) -> dict[str, Any]:
        return {"symbol": self.symbol, "status": self.status, "candles": self.candles,
                "inserted": self.inserted, "revised": self.revised, "gaps": [g.as_dict() for g in self.gaps]}


@dataclass
class SampleResult:
    db: str
    start_ms: int
    end_ms: int
    seed: int
    symbols: list[SymbolReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return True

    @property
    def rows(self) -> int:
        return sum(sum(s.candles.values()) for s in self.symbols)

    def as_dict(self) -> dict[str, Any]:
        return {"db": self.db, "start": iso_utc(self.start_ms), "end": iso_utc(self.end_ms), "seed": self.seed,
                "rows": self.rows, "seconds": round(self.seconds, 3), "venue": str(SAMPLE),
                "symbols": [s.as_dict() for s in self.symbols]}

    def text(self) -> str:
        lines = [f"sample market {iso_utc(self.start_ms)} … {iso_utc(self.end_ms)} (seed {self.seed}) "
                 f"→ {self.db}: {self.rows} candles in {self.seconds:.2f}s; synthetic data, recorded as venue "
                 f"{SAMPLE.exchange} in a database that holds no real series"]
        for s in self.symbols:
            counts = " ".join(f"{iv}={n}" for iv, n in s.candles.items())
            lines.append(f"  {s.symbol} [{s.status}]: {counts}; {s.inserted} new, {s.revised} revised")
            lines.extend(f"    maintenance gap: {g.text()}" for g in s.gaps)
        return "\n".join(lines)


def _register(conn, symbol: str, digest: str, candles: np.ndarray, params: dict[str, Any], status: str,
              inserted: int, revised: int, start_ms: int, end_ms: int) -> None:
    """One registry row per symbol: the sample behaves like one ingested file."""
    src = SourceFile(f"sample:{symbol}?{json.dumps(params, sort_keys=True)}",
                     f"{symbol}-1m-sample-seed{params['seed']}-{params['days']}d", digest, candles.nbytes, "sample",
                     symbol, "1m", f"{iso_utc(start_ms)[:10]}..{iso_utc(end_ms)[:10]}", SAMPLE)
    record(conn, src, FileOutcome(src.path, src.file_name, status,
                                  "already ingested (same sha256)" if status == "skipped" else None, src.symbol,
                                  src.interval, src.period, rows_read=len(candles), rows_inserted=inserted,
                                  rows_revised=revised))


def build_sample(db: str, *, symbols: Sequence[str] = ("BTCUSDT", "ETHUSDT", "SOLUSDT"), days: int = 90,
                 seed: int = 1, end: str = "2024-07-01", lock_wait: float = 30.0,
                 progress: Callable = no_progress, warn: Callable[[str], None] = no_warn) -> SampleResult:
    """Write the sample market for `symbols` into `db`: 1m plus SAMPLE_INTERVALS, one transaction per symbol."""
    started = time.monotonic()
    symbols = [check_symbol(s) for s in dict.fromkeys(symbols)]
    if not symbols:
        raise MarketError("sample needs at least one symbol")
    if not 1 <= days <= MAX_DAYS:
        raise MarketError(f"--days must be between 1 and {MAX_DAYS}, got {days}")
    end_ms = utc_ms(end)
    if end_ms % MINUTE_MS:
        raise MarketError(f"--end {end!r} must be on a whole minute")
    start_ms = end_ms - days * DAY_MS
    spans = maintenance_spans(seed, days * MINUTES_PER_DAY)
    params = {"seed": seed, "days": days, "end": iso_utc(end_ms)}
    result = SampleResult(db, start_ms, end_ms, seed)
    with writer(db, f"ingest sample {','.join(symbols)}", lock_wait) as conn:
        # Synthetic candles never share a series, nor a database, with real ones.
        if real := symbols_not_of(conn, SAMPLE):
            named = ", ".join(f"{s} ({v})" for s, v in list(real.items())[:5]) + (", …" if len(real) > 5 else "")
            raise MarketError(f"{db} holds real series ({len(real)} symbols: {named}); the sample market is "
                              "synthetic and goes into a database of its own: give another --market-db")
        for symbol in progress(symbols, total=len(symbols), desc="sample", unit="symbol"):
            base = generate_symbol(symbol, days=days, seed=seed, end_ms=end_ms, gaps=spans)
            digest = candles_digest(base)
            gaps = find_gaps("1m", base["open_time"])
            with immediate(conn):
                seen = conn.execute("SELECT 1 FROM ingested_files WHERE source = 'sample' AND sha256 = ? "
                                    "AND status = 'ok' LIMIT 1", (digest,)).fetchone()
                if seen:
                    report = SymbolReport(symbol, "skipped", {"1m": len(base)}, 0, 0, gaps)
                else:
                    sid = series_id(conn, symbol, "1m", SAMPLE)
                    counts = upsert_candles(conn, sid, base)
                    refresh_known_gaps(conn, sid, "1m")
                    report = SymbolReport(symbol, "ok", {"1m": len(base)}, counts.inserted, counts.revised,
                                          gaps)
                    for target in SAMPLE_INTERVALS:
                        written = write_resampled(conn, symbol, base, "1m", target)
                        report.candles[target] = written.candles
                        report.inserted += written.inserted
                        report.revised += written.revised
                _register(conn, symbol, digest, base, params, report.status, report.inserted,
                          report.revised, start_ms, end_ms)
            if seen:
                warn(f"{symbol}: this sample is already in {db}, skipped")
            result.symbols.append(report)
    result.seconds = time.monotonic() - started
    return result


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", type=flags.symbols, default=["BTCUSDT", "ETHUSDT", "SOLUSDT"],
                   help="comma-separated symbols to synthesise")
    p.add_argument("--days", type=flags.integer(1, MAX_DAYS), default=90, help="days of 1m candles before --end")
    p.add_argument("--seed", type=flags.integer(0), default=1, help="the same seed gives the same market")
    p.add_argument("--end", type=flags.date, default="2024-07-01",
                   help="UTC date the sample ends before (default: %(default)s)")


def _run(args: argparse.Namespace, hooks: Hooks) -> SampleResult:
    return build_sample(args.db, symbols=args.symbols, days=args.days, seed=args.seed, end=args.end,
                        lock_wait=args.lock_wait, **hooks)


SOURCE = Source("sample", "build a deterministic synthetic market", _arguments, _run)
