"""`python -m ingest <command>`: everything that writes market.sqlite.

Each command parses its arguments, calls one library function, and prints the result it returns
(text, or `--json`). Library functions take `progress` (wraps an iterable in a progress bar) and
`warn` (one log line) callables so that they never print themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import console
from core.errors import MarketError
from core.grid import INTERVAL_MS, check_interval, check_symbol, utc_ms
from ingest.sample import MAX_DAYS

# Flag values are checked while parsing: a bad one is a usage error (exit 2) before anything is opened.
_symbol = console.flag_type(check_symbol)
_interval = console.flag_type(check_interval)


def _date(text: str) -> str:
    utc_ms(text)
    return text


def _csv_list(check: Callable[[str], str]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = [check(item.strip()) for item in value.split(",") if item.strip()]
        if not items:
            raise MarketError(f"expected a comma-separated list, got {value!r}")
        return items
    return console.flag_type(parse)


def _db_path(path: str) -> str:
    if os.path.isdir(path):
        raise MarketError(f"{path} is a directory, not a database file")
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = console.Parser(prog="python -m ingest", description=__doc__.split("\n")[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--db", type=console.flag_type(_db_path), default="market.sqlite",
                        help="market database (default: %(default)s)")
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--lock-wait", type=console.seconds, default=30.0, metavar="SECONDS",
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
    p.add_argument("--symbols", type=_csv_list(check_symbol), required=True,
                   help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--intervals", type=_csv_list(check_interval), required=True, help="comma-separated, e.g. 1m,1h")
    p.add_argument("--start", type=console.flag_type(_date), required=True, help="first UTC date, YYYY-MM-DD")
    p.add_argument("--end", type=console.flag_type(_date), help="UTC date to stop before (default: today)")
    p.add_argument("--market", choices=("spot", "um", "cm"), default="spot")
    p.add_argument("--base-url", default="https://data.binance.vision/", help="Binance Vision layout root")
    p.add_argument("--mirror", default="mirror", help="local mirror folder (default: %(default)s)")
    p.add_argument("--jobs", type=console.integer(1), default=4, help="parallel downloads (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true", help="download again files recorded as failed")

    p = sub.add_parser("csv", parents=[common], help="ingest a generic OHLCV CSV file")
    p.add_argument("path", metavar="FILE")
    p.add_argument("--symbol", type=_symbol, required=True)
    p.add_argument("--interval", required=True, choices=list(INTERVAL_MS))
    p.add_argument("--time-column", help="name of the time column (default: detected)")
    p.add_argument("--time-unit", choices=("ms", "s", "us", "iso"), help="(default: detected)")

    p = sub.add_parser("sample", parents=[common], help="build a deterministic synthetic market")
    p.add_argument("--symbols", type=_csv_list(check_symbol), default=["BTCUSDT", "ETHUSDT", "SOLUSDT"])
    p.add_argument("--days", type=console.integer(1, MAX_DAYS), default=90)
    p.add_argument("--seed", type=console.integer(0), default=1)
    p.add_argument("--end", type=console.flag_type(_date), default="2024-07-01",
                   help="UTC date the sample ends before (default: %(default)s)")

    p = sub.add_parser("resample", parents=[common], help="derive higher intervals from a base interval")
    p.add_argument("--from", dest="source", default="1m", choices=list(INTERVAL_MS))
    p.add_argument("--to", dest="targets", type=_csv_list(check_interval), required=True)
    p.add_argument("--symbol", action="append", dest="symbols", type=_symbol, help="repeatable (default: all)")

    p = sub.add_parser("gaps", parents=[common], help="find and record the gaps of each series")
    p.add_argument("--symbol", action="append", dest="symbols", type=_symbol, help="repeatable (default: all)")
    p.add_argument("--interval", action="append", dest="intervals", type=_interval, help="repeatable (default: all)")

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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "download" and args.end and utc_ms(args.end) <= utc_ms(args.start):
        usage = console.Parser(prog="python -m ingest download")
        usage.error(f"--start {args.start} must be before --end {args.end}")
    return console.run(command(args), args.json)


if __name__ == "__main__":
    sys.exit(main())
