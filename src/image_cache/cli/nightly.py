"""The nightly recipe in one command, for cron or a systemd timer.

`image-cache nightly` installed, `python nightly.py` in a checkout:

1. update the market: Binance Vision archives where published, the REST API for the tail, for
   every pair and interval of the settings (`python -m ingest update`);
2. render the due windows (`python image_cache.py render`);
3. verify the index against the files (`python image_cache.py verify`, `--deep` to re-hash).

Each step runs even when an earlier one reported a problem (images of yesterday's data are still
worth drawing), and the summary says which step was not well. Exit 0 only when every step was
well; 1 otherwise; 75 when another run holds a lock (a scheduler may retry later); 2 for bad flags.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field, replace
from typing import Any

from image_cache.cache.market import Filters
from image_cache.cache.runner import render
from image_cache.cache.verify import verify
from image_cache.cli import console
from image_cache.cli import settings as cli_settings
from image_cache.core import flags
from image_cache.core.errors import ImageCacheError, LockHeld
from image_cache.ingest.download import add_archive_arguments
from image_cache.ingest.rest import add_market_arguments, check_market
from image_cache.ingest.update import update
from image_cache.ingest.venues import series_name
from image_cache.settings import ConfigError, Settings


@dataclass
class Step:
    name: str
    result: Any = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.result is not None and bool(self.result.ok)

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "error": self.error, "result": None if self.result is None else self.result.as_dict()}

    def text(self) -> str:
        head = f"== {self.name}: {'ok' if self.ok else 'NOT OK'}"
        body = [self.result.text()] if self.result is not None else []
        return "\n".join([head, *body, *([f"error: {self.error}"] if self.error else [])])


@dataclass
class NightlyResult:
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return all(step.ok for step in self.steps)

    @property
    def error(self) -> str | None:
        failed = [step.name for step in self.steps if not step.ok]
        return f"nightly run not well: {', '.join(failed)}" if failed else None

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "seconds": round(self.seconds, 3), **{s.name: s.as_dict() for s in self.steps}}

    def text(self) -> str:
        lines = [step.text() for step in self.steps]
        lines.append(f"nightly: {'ok' if self.ok else 'NOT OK'} in {self.seconds:.1f} s")
        return "\n".join(lines)


def _step(result: NightlyResult, name: str, call: Any) -> None:
    step = Step(name)
    result.steps.append(step)
    try:
        step.result = call()
    except LockHeld:
        raise
    except ImageCacheError as exc:
        step.error = str(exc)


def nightly(settings: Settings, *, market: str = "spot", market_start: str | None = None,
            api_url: str | None = None, base_url: str = "https://data.binance.vision/", mirror: str = "mirror",
            jobs: int = 4, retry_failed: bool = False, require_checksum: bool = False, deep: bool = False,
            lock_wait: float = 30.0, verbose: bool = False, progress: Any = console.progress,
            warn: Any = console.log) -> NightlyResult:
    """Update the market, render, verify; every step's result in one summary."""
    began = time.monotonic()
    result = NightlyResult()
    # The pairs are the exchange's symbols; on a market other than spot their series carry its name.
    venue = check_market(market).venue
    drawn = replace(settings, pairs=tuple(series_name(p, venue) for p in settings.pairs))
    filters = Filters(list(drawn.pairs), list(settings.intervals))
    _step(result, "update", lambda: update(
        settings.market_db_path, symbols=list(settings.pairs), intervals=list(settings.intervals), market=market,
        start=market_start or settings.start, api_url=api_url, base_url=base_url, mirror=mirror, jobs=jobs,
        retry_failed=retry_failed, require_checksum=require_checksum, lock_wait=lock_wait, verbose=verbose,
        progress=progress, warn=warn))
    _step(result, "render", lambda: render(drawn, filters, progress=progress, warn=warn))
    _step(result, "verify", lambda: verify(drawn, filters, deep=deep, progress=progress, warn=warn))
    result.seconds = time.monotonic() - began
    return result


PROG = "python nightly.py"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = console.Parser(prog=prog, description=__doc__.split("\n")[0], parents=[console.common_flags()])
    cli_settings.add_arguments(parser)
    add_market_arguments(parser)
    add_archive_arguments(parser)
    parser.add_argument("--market-start", metavar="DATE",
                        help="first UTC date of market data for series with none yet (default: the start setting)")
    parser.add_argument("--require-checksum", action="store_true", help="reject archives without a .CHECKSUM")
    parser.add_argument("--deep", action="store_true", help="verify re-hashes every image file")
    parser.add_argument("--lock-wait", type=flags.seconds, default=30.0, metavar="SECONDS",
                        help="how long the update waits for another ingest")
    return parser


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = console.parse(build_parser(prog), argv)
    if isinstance(args, int):
        return args
    console.configure(args)
    try:
        settings = cli_settings.from_args(args)
    except ConfigError as exc:
        return console.usage_error(exc)
    return console.run(lambda: nightly(
        settings, market=args.market, market_start=args.market_start, api_url=args.api_url,
        base_url=args.base_url, mirror=args.mirror, retry_failed=args.retry_failed,
        require_checksum=args.require_checksum, deep=args.deep, lock_wait=args.lock_wait, verbose=args.verbose),
        args.json)

