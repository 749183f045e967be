"""The `binance-vision` source: local Binance Vision kline zips (files or directories).

The archive format itself (names, .CHECKSUM, zip members, the kline CSV) is binance_vision.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from image_cache.core.hooks import Hooks
from image_cache.ingest.binance_vision import ingest_paths
from image_cache.ingest.registry import IngestResult
from image_cache.ingest.sources import Source

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", metavar="PATH")


def _run(args: argparse.Namespace, hooks: Hooks) -> IngestResult:
    return ingest_paths(args.db, args.paths, require_checksum=args.require_checksum, lock_wait=args.lock_wait,
                        **hooks)


SOURCE = Source("binance-vision", "ingest local Binance Vision kline zips (files or directories)",
                _arguments, _run, checksums=True)
