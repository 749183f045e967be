"""The registry of ingest sources: each one a command of `python -m ingest`.

Adding a source is one new module defining `SOURCE = Source(...)` plus one line in SOURCE_MODULES.
The CLI builds a subcommand from each: `arguments` adds its flags, `run` calls its library
function with the parsed arguments and the progress/warn hooks.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from image_cache.core.hooks import Hooks

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse

SOURCE_MODULES = (
    "image_cache.ingest.archives",
    "image_cache.ingest.download",
    "image_cache.ingest.rest",
    "image_cache.ingest.ccxt_source",
    "image_cache.ingest.update",
    "image_cache.ingest.csv_source",
    "image_cache.ingest.sample",
)


@dataclass(frozen=True)
class Source:
    """One way candles come in: its command name, help line, flags and library call."""

    name: str
    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, Hooks], Any]
    # Takes --require-checksum (archive sources).
    checksums: bool = False


def sources() -> list[Source]:
    return [importlib.import_module(name).SOURCE for name in SOURCE_MODULES]


def csv_list(value: str) -> list[str]:
    return [item.strip() for item in value.split(",") if item.strip()]
