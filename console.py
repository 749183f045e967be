"""What both command lines share: exit codes, one-line errors, JSON or text results, progress bars.

The libraries (ingest/, chart/, cache/) never print and never exit; the two CLIs
(`python -m ingest`, `python image_cache.py`) parse with `Parser` and go through `run` here.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, Protocol, TypeVar

from tqdm import tqdm

from chart import ChartError
from core.errors import LockHeld, MarketError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_LOCKED = 75
EXIT_INTERRUPTED = 128 + signal.SIGINT    # 130, as a shell reports a Ctrl-C
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE   # 141, as a shell reports `cmd | head` killing cmd
EXIT_TERMINATED = 128 + signal.SIGTERM    # 143, as a shell reports `kill`

T = TypeVar("T")


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


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread so that a run stops through the same cleanup as Ctrl-C."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


# SIGHUP: the terminal closed. Left alone where it is ignored (nohup), as the caller asked.
STOP_SIGNALS = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up (terminal closed)"}


def run(command: Callable[[], Result], as_json: bool) -> int:
    """Run a command, print its result on stdout, map domain errors and signals to exit codes."""
    caught = [s for s in STOP_SIGNALS if s == signal.SIGTERM or signal.getsignal(s) != signal.SIG_IGN]
    for signum in caught:
        signal.signal(signum, _raise_terminated)
    try:
        result = command()
    except LockHeld as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (MarketError, ChartError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except Terminated as exc:
        print(f"Error: {STOP_SIGNALS[exc.signum]}", file=sys.stderr)
        return 128 + exc.signum  # 143 for SIGTERM, 129 for SIGHUP, as a shell reports them
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        for signum in caught:
            signal.signal(signum, signal.SIG_DFL)  # from here on there is nothing to clean up
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
