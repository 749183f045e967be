"""`python -m ingest <command>`: everything that writes market.sqlite.

Each command parses its arguments, calls one library function, and prints the result it returns
(text, or `--json`). Library functions take `progress` (wraps an iterable in a progress bar) and
`warn` (one log line) callables so that they never print themselves.
"""

from __future__ import annotations

import argparse
import errno
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

import console
from core.errors import MarketError, os_error_message
from core.grid import INTERVAL_MS


def _csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", default="market.sqlite", help="market database (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--lock-wait", type=float, default=30.0, metavar="SECONDS",
                        help="how long to wait for another ingest to finish (default: %(default)s)")
    checksum = argparse.ArgumentParser(add_help=False)
    checksum.add_argument("--require-checksum", action="store_true",
                          help="reject archives without a .CHECKSUM file (default: ingest them as unverified)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("binance-vision", parents=[common, checksum],
                       help="ingest local Binance Vision kline zips (files or directories)")
    p.add_argument("paths", nargs="+", metavar="PATH")

    p = sub.add_parser("download", parents=[common, checksum],
                       help="fetch Binance Vision archives into a local mirror, then ingest them")
    p.add_argument("--symbols", type=_csv_list, required=True, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--intervals", type=_csv_list, required=True, help="comma-separated, e.g. 1m,1h")
    p.add_argument("--start", required=True, help="first UTC date, YYYY-MM-DD")
    p.add_argument("--end", help="UTC date to stop before (default: today)")
    p.add_argument("--market", choices=("spot", "um", "cm"), default="spot")
    p.add_argument("--base-url", default="https://data.binance.vision/", help="Binance Vision layout root")
    p.add_argument("--mirror", default="mirror", help="local mirror folder (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=4, help="parallel downloads (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true", help="download again files recorded as failed")

    p = sub.add_parser("csv", parents=[common], help="ingest a generic OHLCV CSV file")
    p.add_argument("path", metavar="FILE")
    p.add_argument("--symbol", required=True)
    p.add_argument("--interval", required=True, choices=list(INTERVAL_MS))
    p.add_argument("--time-column", help="name of the time column (default: detected)")
    p.add_argument("--time-unit", choices=("ms", "s", "us", "iso"), help="(default: detected)")

    p = sub.add_parser("sample", parents=[common], help="build a deterministic synthetic market")
    p.add_argument("--symbols", type=_csv_list, default=["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    p.add_argument("--days", type=int, default=90)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--end", default="2024-07-01", help="UTC date the sample ends before (default: %(default)s)")

    p = sub.add_parser("resample", parents=[common], help="derive higher intervals from a base interval")
    p.add_argument("--from", dest="source", default="1m", choices=list(INTERVAL_MS))
    p.add_argument("--to", dest="targets", type=_csv_list, required=True)
    p.add_argument("--symbol", action="append", dest="symbols", help="repeatable (default: all)")

    p = sub.add_parser("gaps", parents=[common], help="find and record the gaps of each series")
    p.add_argument("--symbol", action="append", dest="symbols", help="repeatable (default: all)")
    p.add_argument("--interval", action="append", dest="intervals", help="repeatable (default: all)")

    p = sub.add_parser("status", parents=[common], help="series and ingested files")
    p.add_argument("--failures", action="store_true", help="list rejected files with their reasons")
    return parser


def command(args: argparse.Namespace):
    """The library call behind each command, as a zero-argument callable."""
    hooks = dict(progress=console.progress, warn=console.log)
    if args.command == "binance-vision":
        from ingest.binance_vision import ingest_paths
        return lambda: ingest_paths(args.db, args.paths, require_checksum=args.require_checksum,
                                    lock_wait=args.lock_wait, **hooks)
    if args.command == "download":
        from ingest.download import download
        return lambda: download(args.db, symbols=args.symbols, intervals=args.intervals, start=args.start,
                                end=args.end, market=args.market, base_url=args.base_url, mirror=args.mirror,
                                jobs=args.jobs, retry_failed=args.retry_failed,
                                require_checksum=args.require_checksum, lock_wait=args.lock_wait, **hooks)
    if args.command == "csv":
        from ingest.csv_source import ingest_csv
        return lambda: ingest_csv(args.db, args.path, symbol=args.symbol, interval=args.interval,
                                  time_column=args.time_column, time_unit=args.time_unit,
                                  lock_wait=args.lock_wait, **hooks)
    if args.command == "sample":
        from ingest.sample import build_sample
        return lambda: build_sample(args.db, symbols=args.symbols, days=args.days, seed=args.seed,
                                    end=args.end, lock_wait=args.lock_wait, **hooks)
    if args.command == "resample":
        from ingest.resample import resample
        return lambda: resample(args.db, source=args.source, targets=args.targets, symbols=args.symbols,
                                lock_wait=args.lock_wait, **hooks)
    if args.command == "gaps":
        from ingest.gaps import record_gaps
        return lambda: record_gaps(args.db, symbols=args.symbols, intervals=args.intervals,
                                   lock_wait=args.lock_wait, **hooks)
    from ingest.status import status
    return lambda: status(args.db, failures=args.failures)


def one_line_errors(call: Callable[[], Any], db: str) -> Callable[[], Any]:
    """`call`, with the OS and SQLite errors that escape the library told as one-line domain errors.

    The library turns the errors it expects into MarketError at their source; this is the last line
    that keeps a traceback from the user (a disk filling up mid-write, an I/O error).
    """
    def wrapped() -> Any:
        try:
            return call()
        except sqlite3.Error as exc:
            raise MarketError(f"{db}: {exc}") from None
        except OSError as exc:
            raise MarketError(os_error_message("write" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "access",
                                               exc.filename or db, exc)) from None
    return wrapped


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return console.run(one_line_errors(command(args), args.db), args.json)


if __name__ == "__main__":
    sys.exit(main())
