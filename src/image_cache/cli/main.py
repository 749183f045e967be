"""`image-cache`: the installed console script, one command line for every command.

    image-cache render | verify | repair | status | export | preview  ...   (the image cache)
    image-cache ingest COMMAND ...                                         (market.sqlite)
    image-cache nightly ...                                                (update, render, verify)
    image-cache --version

Only the signal handling is imported before the command is known: a signal while the drawing code
loads ends the run with one line, not a traceback.
"""

from __future__ import annotations

import sys

from image_cache import __version__
from image_cache.core import signals

PROG = "image-cache"
CACHE_COMMANDS = ("render", "verify", "repair", "status", "export", "preview")
COMMANDS = (*CACHE_COMMANDS, "ingest", "nightly")
EXIT_USAGE = 2

USAGE = f"""usage: {PROG} [--version] COMMAND [ARGS...]

Candles in market.sqlite -> a deterministic, verifiable dataset of chart images.

commands:
  render      draw the due windows that are not up to date
  verify      check every indexed image and the image root
  repair      re-draw, adopt or remove until verify --deep passes
  status      counts per series and status, bytes, last run
  export      write an ML dataset: labels, time splits, format
  preview     a contact sheet of sample images with labels
  ingest      everything that writes market.sqlite ({PROG} ingest --help)
  nightly     update the market, render, verify: one command for cron or a systemd timer

{PROG} COMMAND --help describes a command's flags.
"""


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else EXIT_USAGE
    if args[0] in ("-V", "--version"):
        print(f"{PROG} {__version__}")
        return 0
    command = args[0]
    if command not in COMMANDS:
        print(f"Error: {PROG}: unknown command {command!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return EXIT_USAGE
    if argv is None:  # the console script: until the command's own handling takes over (cli/console.py)
        signals.exit_on_signals()
    if command == "ingest":
        from image_cache.cli import ingest
        return ingest.main(args[1:], prog=f"{PROG} ingest")
    if command == "nightly":
        from image_cache.cli import nightly
        return nightly.main(args[1:], prog=f"{PROG} nightly")
    from image_cache.cli import cache
    return cache.main(args, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
