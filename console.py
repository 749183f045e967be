"""What both command lines share: exit codes, one-line errors, JSON or text results, progress bars.

The libraries (ingest/, chart/, cache/) never print and never exit; the two CLIs
(`python -m ingest`, `python image_cache.py`) go through `run` here.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar

from tqdm import tqdm

from chart import ChartError
from core.errors import LockHeld, MarketError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75

T = TypeVar("T")


class Result(Protocol):
    """What a command returns: a JSON-able dict, a human summary, and whether all was well."""

    def as_dict(self) -> dict[str, Any]: ...

    def text(self) -> str: ...

    @property
    def ok(self) -> bool: ...


def run(command: Callable[[], Result], as_json: bool) -> int:
    """Run a command, print its result on stdout, map domain errors to exit codes."""
    try:
        result = command()
    except LockHeld as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (MarketError, ChartError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return 130
    if as_json:
        print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
    else:
        print(result.text())
    # A run that stopped part-way still reports what it did (stdout), and why it stopped (stderr).
    if getattr(result, "error", None):
        print(f"Error: {result.error}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILURE


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr, shown only when stderr is a terminal."""
    return iter(tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr,
                     disable=not sys.stderr.isatty(), leave=False))


def log(message: str) -> None:
    """A log line on stderr (progress for non-TTY runs, warnings)."""
    print(message, file=sys.stderr, flush=True)
