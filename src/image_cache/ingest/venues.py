"""Venues: the exchange and market a series' candles come from, and how a series is named for one.

A series is identified by exchange + market + symbol + interval. The upstream schema keys series by a
unique symbol name, and a market it writes is Binance spot, so Binance spot keeps the plain exchange
symbol (`BTCUSDT`) and every other venue is part of the name, as a path-safe suffix the symbol rule
allows: `{SYMBOL}-{EXCHANGE}-{MARKET}` in capitals (`BTCUSDT-BINANCE-UM`, `BTCUSDT-OKX-SWAP`). A name
therefore carries its venue into image paths, index keys, `--symbol` filters and exports.

The venue of every series is also recorded in `series_venues` (ingest's own table), and a write of one
venue's rows into a symbol recorded for another is refused. Synthetic data (`ingest sample`) is the
venue `sample`: plain names, in a database of its own.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass

from image_cache.core.errors import MarketError
from image_cache.core.grid import SYMBOL_RE, utc_now

_PART_RE = re.compile(r"^[a-z0-9]{1,24}$")  # CCXT ids run to 21 (coinbaseinternational)

VENUES_DDL = """
CREATE TABLE IF NOT EXISTS series_venues (
    series_id INTEGER PRIMARY KEY REFERENCES series(id),
    exchange TEXT NOT NULL,
    market TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS symbol_selections (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    selected_utc TEXT NOT NULL,
    exchange TEXT NOT NULL,
    market TEXT NOT NULL,
    rule TEXT NOT NULL,
    symbols TEXT NOT NULL
);
"""


@dataclass(frozen=True, order=True)
class Venue:
    """An exchange (its CCXT id: lower-case letters and digits) and one of its markets."""

    exchange: str
    market: str

    def __post_init__(self) -> None:
        for part in (self.exchange, self.market):
            if not _PART_RE.match(part):
                raise MarketError(f"invalid venue part {part!r}: must match {_PART_RE.pattern}")

    def __str__(self) -> str:
        return f"{self.exchange} {self.market}"

    @property
    def suffix(self) -> str:
        """What a series name of this venue ends with: nothing for Binance spot and for sample data."""
        return "" if self in (BINANCE_SPOT, SAMPLE) else f"-{self.exchange.upper()}-{self.market.upper()}"


BINANCE_SPOT = Venue("binance", "spot")
SAMPLE = Venue("sample", "synthetic")


def series_name(symbol: str, venue: Venue) -> str:
    """The series name of an exchange symbol on `venue` (path-safe: it must match the symbol rule)."""
    name = symbol + venue.suffix
    if not SYMBOL_RE.match(name):
        raise MarketError(f"series name {name!r} of {symbol} on {venue} does not match {SYMBOL_RE.pattern}")
    return name


def venue_of_name(name: str) -> Venue:
    """The venue a series name states: its `-EXCHANGE-MARKET` suffix, else Binance spot."""
    parts = name.rsplit("-", 2)
    if len(parts) == 3 and parts[0] and _PART_RE.match(parts[1].lower()) and _PART_RE.match(parts[2].lower()):
        return Venue(parts[1].lower(), parts[2].lower())
    return BINANCE_SPOT


def recorded_venues(conn: sqlite3.Connection, symbol: str) -> set[Venue]:
    """The venues recorded for the series of `symbol`; a series written by another tool (no record, but
    candles) is Binance spot, as the upstream pipeline writes."""
    rows = conn.execute(
        """SELECT DISTINCT COALESCE(v.exchange, 'binance'), COALESCE(v.market, 'spot')
           FROM series se JOIN symbols s ON s.id = se.symbol_id LEFT JOIN series_venues v ON v.series_id = se.id
           WHERE s.symbol = ? AND (v.series_id IS NOT NULL
                                   OR EXISTS (SELECT 1 FROM candles c WHERE c.series_id = se.id))""", (symbol,))
    return {Venue(*row) for row in rows}


def venue_of(conn: sqlite3.Connection, symbol: str) -> Venue:
    """The venue of an existing symbol's series (what a series derived from them, by resampling, belongs to)."""
    found = recorded_venues(conn, symbol)
    return min(found) if found else venue_of_name(symbol)


def mismatch(conn: sqlite3.Connection, symbol: str, venue: Venue) -> str | None:
    """Why `venue`'s rows may not go into `symbol`'s series, or None when they may."""
    if venue != SAMPLE and conn.execute("SELECT 1 FROM series_venues WHERE exchange = ? LIMIT 1",
                                        (SAMPLE.exchange,)).fetchone():
        # Plain names on both sides: images and exports could not tell synthetic from real.
        return (f"{symbol}: this database holds sample (synthetic) series; refusing {venue} rows (real candles "
                "go into a database of their own)")
    others = recorded_venues(conn, symbol) - {venue}
    if not others:
        return None
    return (f"{symbol}: its series hold {', '.join(sorted(map(str, others)))} candles; refusing {venue} rows "
            "(a series is one exchange and market: other venues are named SYMBOL-EXCHANGE-MARKET)")


def claim(conn: sqlite3.Connection, sid: int, symbol: str, venue: Venue) -> None:
    """Record series `sid` of `symbol` as `venue`'s; refuse it when the symbol's series belong to another."""
    if (why := mismatch(conn, symbol, venue)) is not None:
        raise MarketError(why)
    conn.execute("INSERT INTO series_venues(series_id, exchange, market) VALUES (?, ?, ?) "
                 "ON CONFLICT(series_id) DO NOTHING", (sid, venue.exchange, venue.market))


# Where the registry of a market written before venues says a file came from Binance's futures markets: its
# REST endpoints, or Binance Vision's futures layout in a mirror path.
_FUTURES_PATHS = {"um": ("%/fapi/%", "%/futures/um/%"), "cm": ("%/dapi/%", "%/futures/cm/%")}


def migrate_venues(conn: sqlite3.Connection) -> None:
    """Record the venue of the series written before venues were, from the registry of the files that
    wrote them: Binance USDⓈ-M or COIN-M where every file of the series came from that futures market (the
    REST endpoint or the archive layout its path names), sample data where only `ingest sample` wrote, and
    Binance spot otherwise, as the rest were fetched."""
    conn.execute(
        """INSERT INTO series_venues(series_id, exchange, market)
           SELECT se.id, 'binance', 'spot' FROM series se JOIN symbols s ON s.id = se.symbol_id
           WHERE NOT EXISTS (SELECT 1 FROM series_venues v WHERE v.series_id = se.id)""")
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ingested_files'").fetchone():
        for market, (rest, layout) in _FUTURES_PATHS.items():
            conn.execute(
                """UPDATE series_venues SET market = ?
                   WHERE market = 'spot' AND series_id IN (
                       SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id
                       JOIN intervals i ON i.id = se.interval_id
                       WHERE EXISTS (SELECT 1 FROM ingested_files f WHERE f.symbol = s.symbol AND f.interval = i.code
                                     AND f.status IN ('ok', 'unverified') AND (f.path LIKE ? OR f.path LIKE ?))
                         AND NOT EXISTS (SELECT 1 FROM ingested_files f WHERE f.symbol = s.symbol
                                         AND f.interval = i.code AND f.status IN ('ok', 'unverified')
                                         AND NOT (f.path LIKE ? OR f.path LIKE ?)))""",
                (market, rest, layout, rest, layout))
        conn.execute(
            """UPDATE series_venues SET exchange = 'sample', market = 'synthetic'
               WHERE series_id IN (SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id
                                   WHERE EXISTS (SELECT 1 FROM ingested_files f WHERE f.symbol = s.symbol
                                                 AND f.source = 'sample')
                                     AND NOT EXISTS (SELECT 1 FROM ingested_files f WHERE f.symbol = s.symbol
                                                     AND f.source != 'sample' AND f.status IN ('ok', 'unverified')))""")


def symbols_not_of(conn: sqlite3.Connection, venue: Venue) -> dict[str, Venue]:
    """Symbols whose series belong to a venue other than `venue`, with that venue."""
    found: dict[str, Venue] = {}
    for (symbol,) in conn.execute("SELECT symbol FROM symbols ORDER BY symbol"):
        for other in sorted(recorded_venues(conn, symbol) - {venue}):
            found.setdefault(symbol, other)
    return found


def record_selection(conn: sqlite3.Connection, venue: Venue, rule: str, symbols: list[str]) -> None:
    """Record a run's symbol selection (`--top N --quote Q`): when, on which venue, by which rule, the
    symbols in their order (comma-separated)."""
    conn.execute("INSERT INTO symbol_selections(selected_utc, exchange, market, rule, symbols) VALUES (?, ?, ?, ?, ?)",
                 (utc_now(), venue.exchange, venue.market, rule, ",".join(symbols)))
