"""The renderer's settings as command-line flags: `--config FILE` and one flag per setting (OPTIONS)."""

from __future__ import annotations

import argparse

from image_cache.settings import OPTIONS, Settings, load


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--config` and one flag per setting; absent flags stay None so the file can fill them."""
    parser.add_argument("--config", metavar="FILE", help="TOML file with an [image_cache] table")
    for option in OPTIONS:
        if option.metavar is None:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const=True, help=option.help)
        else:
            parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, help=option.help)


def from_args(args: argparse.Namespace) -> Settings:
    return load(args.config, vars(args))
