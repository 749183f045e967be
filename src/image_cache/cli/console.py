"""What both command lines share: exit codes, one-line errors, JSON or text results, progress bars.

The libraries (ingest/, chart/, cache/) never print and never exit; the two CLIs
(`python -m ingest`, `python image_cache.py`) parse with `Parser` and go through `run` here.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, Protocol, TypeVar

from tqdm import tqdm

from image_cache.core.errors import ConfigError, ImageCacheError, LockHeld
from image_cache.core.signals import Stopped, stop_on_signals

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 128 + signal.SIGINT    # 130, as a shell reports a Ctrl-C
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE   # 141, as a shell reports `cmd | head` killing cmd
# SIGTERM 143, SIGHUP 129: core/signals.py

T = TypeVar("T")


def exit_code(exc: ImageCacheError) -> int:
    """The one place that maps an error's kind to an exit code: a held lock 75, every other error 1.

    A usage error (ConfigError) found while the command line is read exits 2 (`usage_error`); once the
    command runs, it is a failure like any other (1), as it always was.
    """
    return EXIT_LOCKED if isinstance(exc, LockHeld) else EXIT_FAILURE


def usage_error(exc: ConfigError) -> int:
    """A bad flag or setting, found before the command runs: one `Error:` line, exit 2."""
    print(f"Error: {exc}", file=sys.stderr)
    return EXIT_USAGE


class Result(Protocol):
    """What a command returns: a JSON-able dict, a human summary, and whether all was well."""

    def as_dict(self) -> dict[str, Any]: ...

    def text(self) -> str: ...

    @property
    def ok(self) -> bool: ...


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one `Error:` line (exit 2) instead of the usage block."""

    def error(self, message: str) -> NoReturn:
        print(f"Error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def run(command: Callable[[], Result], as_json: bool) -> int:
    """Run a command, print its result on stdout, map domain errors and signals to exit codes."""
    try:
        with stop_on_signals():
            result = command()
    except ImageCacheError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except Stopped as exc:  # SIGINT, SIGTERM or SIGHUP, after the command's cleanup
        with contextlib.suppress(OSError):  # after SIGHUP, stderr may be a terminal that is gone
            print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        if as_json:
            print(json.dumps(result.as_dict(), indent=2, sort_keys=True))
        else:
            print(result.text())
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`status | head`): say nothing more, and keep Python's exit-time flush of
        # stdout from failing again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
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
