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
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn, Protocol, TypeVar

from tqdm import tqdm

from image_cache import __version__
from image_cache.core.errors import ConfigError, ImageCacheError, LockHeld, os_error_message
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
    """The one place that maps an error's kind to an exit code: a usage error (ConfigError: a bad flag,
    setting or combination, which the library raises before it opens or fetches anything) 2, a held lock
    75, every other error 1."""
    if isinstance(exc, ConfigError):
        return EXIT_USAGE
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


class _HelpFormatter(argparse.HelpFormatter):
    """Every flag's help names its default, unless the help already says it or there is none to say."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if (default is None or default is False or default == argparse.SUPPRESS or "default" in text
                or not action.option_strings):
            return text
        shown = ",".join(map(str, default)) if isinstance(default, list) else "%(default)s"
        return f"{text} (default: {shown})"


class Parser(argparse.ArgumentParser):
    """argparse as every command line here uses it: a usage error is one `Error:` line (exit 2) instead
    of the usage block; no abbreviations (`--symbol` must never be taken for `--symbols`); defaults in
    `--help`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        print(f"Error: {self.prog}: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """The parsed flags, or the exit code when parsing ended the command (--help 0, a usage error 2, said
    already): `main(argv)` returns it rather than raising SystemExit, so callers and tests run it in-process."""
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


def common_flags() -> Parser:
    """The flags every command has: --json and -q/--quiet."""
    common = Parser(add_help=False)  # a Parser, as the subcommands' parsers it is a parent of
    common.add_argument("--json", action="store_true", help="print the result as JSON (with a version key)")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress and no log lines on stderr; errors still")
    return common


def deprecated(old: str, new: str, action: str = "store") -> type[argparse.Action]:
    """An action for an old spelling of `new`, kept one release: it works as before and says so once."""
    base = argparse._AppendAction if action == "append" else argparse._StoreAction

    class Deprecated(base):  # type: ignore[misc, valid-type]
        def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                     option_string: str | None = None) -> None:
            if option_string == old:
                _deprecations.add(f"note: {old} is deprecated and will be removed after 0.9; use {new}")
            super().__call__(parser, namespace, values, option_string)

    return Deprecated


_deprecations: set[str] = set()
_quiet = False


def configure(args: argparse.Namespace) -> None:
    """Apply the common flags once the command line is read: -q, and the notes of old spellings."""
    global _quiet
    _quiet = bool(getattr(args, "quiet", False))
    for note in sorted(_deprecations):
        log(note)
    _deprecations.clear()


def run(command: Callable[[], Result], as_json: bool) -> int:
    """Run a command, print its result on stdout, map domain errors and signals to exit codes."""
    try:
        with stop_on_signals():
            result = command()
    except ImageCacheError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exit_code(exc)
    except OSError as exc:  # the last net: the libraries name their OS errors; one that escapes is still one line
        print(f"Error: {os_error_message('access', exc.filename or 'a file', exc)}", file=sys.stderr)
        return EXIT_FAILURE
    except Stopped as exc:  # SIGINT, SIGTERM or SIGHUP, after the command's cleanup
        with contextlib.suppress(OSError):  # after SIGHUP, stderr may be a terminal that is gone
            print(f"Error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Error: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    try:
        if as_json:
            print(json.dumps({"version": __version__, **result.as_dict()}, indent=2, sort_keys=True))
        else:
            print(result.text())
        sys.stdout.flush()
    except BrokenPipeError:
        # The reader left (`status | head`): say nothing more, and keep Python's exit-time flush of
        # stdout from failing again with a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    # A run that stopped part-way still reports what it did (stdout), and why it stopped (stderr).
    if error := getattr(result, "error", None):
        print(f"Error: {error}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILURE


# How often a run on a non-terminal stderr (cron, a log file) says how far it is.
LOG_EVERY_S = 10.0


def progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterator[T]:
    """A tqdm bar on stderr when it is a terminal; otherwise a line every LOG_EVERY_S seconds (never both:
    a log line would break the bar). Nothing with --quiet."""
    if _quiet:
        return iter(items)
    if sys.stderr.isatty():
        return iter(tqdm(items, total=total, desc=desc, unit=unit, file=sys.stderr, leave=False))
    return _logged(items, total, desc, unit)


def _logged(items: Iterable[T], total: int | None, desc: str, unit: str) -> Iterator[T]:
    said = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        if time.monotonic() - said > LOG_EVERY_S:
            log(f"{desc}: {done}/{total if total is not None else '?'} {unit}")
            said = time.monotonic()


def log(message: str) -> None:
    """A log line on stderr (progress for non-TTY runs, warnings), above any progress bar; nothing with
    --quiet."""
    if not _quiet:
        tqdm.write(message, file=sys.stderr)
        sys.stderr.flush()
