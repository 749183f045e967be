"""docs/cli.md, the command-line reference, generated from the parsers themselves so that it cannot drift:
`python -m image_cache.cli.reference > docs/cli.md` (`make docs`); tests/test_cli_reference.py checks it."""

from __future__ import annotations

import argparse
import os
import sys

from image_cache.cli import cache, ingest, main, nightly

WIDTH = "100"  # argparse wraps help to $COLUMNS: fixed, so the text is the same on every terminal

HEAD = """# Command-line reference

Generated from the parsers by `python -m image_cache.cli.reference > docs/cli.md` (`make docs`);
`tests/test_cli_reference.py` fails when this file and the code disagree. The installed console script is
`image-cache`; in a checkout the same commands are `python image_cache.py …`, `python -m ingest …` and
`python nightly.py …`. Exit codes, the configuration file and the old spellings kept for one release: README.
"""


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _section(title: str, parser: argparse.ArgumentParser) -> str:
    return f"## `{title}`\n\n```\n{parser.format_help().rstrip()}\n```\n"


def reference() -> str:
    """The whole reference, one section per command, in the order `image-cache --help` lists them."""
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = [HEAD, f"## `{main.PROG}`\n\n```\n{main.USAGE.rstrip()}\n```\n"]
        for name, parser in subcommands(cache.build_parser(main.PROG)).items():
            parts.append(_section(f"{main.PROG} {name}", parser))
        prog = f"{main.PROG} ingest"
        for name, parser in subcommands(ingest.build_parser(prog)).items():
            parts.append(_section(f"{prog} {name}", parser))
        parts.append(_section(f"{main.PROG} nightly", nightly.build_parser(f"{main.PROG} nightly")))
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(reference())
