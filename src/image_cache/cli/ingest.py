"""Everything that writes market.sqlite.

`image-cache ingest <command>` installed, `python -m ingest <command>` in a checkout.

Each command parses its arguments, calls one library function, and prints the result it returns
(text, or `--json`). Library functions take `progress` (wraps an iterable in a progress bar) and
`warn` (one log line) callables so that they never print themselves.
"""

from __future__ import annotations

import argparse
import errno
import sqlite3
from collections.abc import Callable
from typing import Any

from image_cache.cli import console
from image_cache.cli import settings as cli_settings
from image_cache.core import flags
from image_cache.core.errors import ConfigError, MarketError, storage_error
from image_cache.core.grid import INTERVAL_MS
from image_cache.core.hooks import Hooks
from image_cache.ingest.sources import sources
from image_cache.settings import find_config, market_db_in

PROG = "python -m ingest"
MARKET_DB = "market.sqlite"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = console.Parser(prog=prog, description=__doc__.split("\n")[0])
    common = console.common_flags()
    cli_settings.add_config(common)
    common.add_argument("--market-db", dest="db", metavar="PATH",
                        help=f"market database (default: the config file's market_db, else {MARKET_DB})")
    common.add_argument("--db", dest="db", help=argparse.SUPPRESS, action=console.deprecated("--db", "--market-db"))
    common.add_argument("--lock-wait", type=flags.seconds, default=30.0, metavar="SECONDS",
                        help="how long to wait for another ingest to finish")
    checksum = console.Parser(add_help=False)
    checksum.add_argument("--require-checksum", action="store_true",
                          help="reject archives without a .CHECKSUM file (default: ingest them as unverified)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for source in sources():
        p = sub.add_parser(source.name, parents=[common, checksum] if source.checksums else [common],
                           help=source.help)
        source.arguments(p)

    p = sub.add_parser("resample", parents=[common], help="derive higher intervals from a base interval")
    p.add_argument("--from", dest="source", default="1m", choices=list(INTERVAL_MS))
    p.add_argument("--to", dest="targets", type=flags.intervals, required=True)
    _series_filters(p, intervals=False)

    p = sub.add_parser("gaps", parents=[common], help="find and record the gaps of each series")
    _series_filters(p, intervals=True)

    p = sub.add_parser("status", parents=[common], help="series and ingested files")
    p.add_argument("--failures", action="store_true", help="list rejected files with their reasons")
    p.add_argument("--summary", action="store_true",
                   help="per venue, symbol and interval: span, rows, gaps, bytes and freshness")
    return parser


def _series_filters(p: argparse.ArgumentParser, intervals: bool) -> None:
    """--symbols (and --intervals): the series a command covers, as every command names them; the old
    repeatable --symbol and --interval still work this release."""
    p.add_argument("--symbols", type=flags.symbols, metavar="SYMS", help="comma-separated (default: all)")
    p.add_argument("--symbol", dest="symbols", type=flags.symbol, help=argparse.SUPPRESS,
                   action=console.deprecated("--symbol", "--symbols", "append"))
    if intervals:
        p.add_argument("--intervals", type=flags.intervals, metavar="IVS", help="comma-separated (default: all)")
        p.add_argument("--interval", dest="intervals", type=flags.interval, help=argparse.SUPPRESS,
                       action=console.deprecated("--interval", "--intervals", "append"))


def command(args: argparse.Namespace):
    """The library call behind each command, as a zero-argument callable."""
    hooks: Hooks = {"progress": console.progress, "warn": console.log}
    for source in sources():
        if args.command == source.name:
            return lambda: source.run(args, hooks)
    if args.command == "resample":
        from image_cache.ingest.resample import resample
        return lambda: resample(args.db, source=args.source, targets=args.targets, symbols=args.symbols,
                                lock_wait=args.lock_wait, **hooks)
    if args.command == "gaps":
        from image_cache.ingest.gaps import record_gaps
        return lambda: record_gaps(args.db, symbols=args.symbols, intervals=args.intervals,
                                   lock_wait=args.lock_wait, **hooks)
    from image_cache.ingest.status import status
    return lambda: status(args.db, failures=args.failures, summary=args.summary)


def one_line_errors(call: Callable[[], Any], db: str) -> Callable[[], Any]:
    """`call`, with the OS and SQLite errors that escape the library told as one-line domain errors.

    The library turns the errors it expects into ImageCacheErrors at their source; this is the last line
    that keeps a traceback from the user (a disk filling up mid-write, an I/O error).
    """
    def wrapped() -> Any:
        try:
            return call()
        except sqlite3.Error as exc:
            raise MarketError(f"{db}: {exc}") from None
        except OSError as exc:
            raise storage_error("write" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "access",
                                exc.filename or db, exc) from None
    return wrapped


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = console.parse(build_parser(prog), argv)
    if isinstance(args, int):
        return args
    console.configure(args)
    if args.db is None:  # the market the renderer reads: one config file for both halves
        try:
            args.db = market_db_in(find_config(args.config)) or MARKET_DB
        except ConfigError as exc:
            return console.usage_error(exc)
    return console.run(one_line_errors(command(args), args.db), args.json)
