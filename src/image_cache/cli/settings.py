"""The renderer's settings as command-line flags: `--config FILE` and one flag per setting (OPTIONS)."""

from __future__ import annotations

import argparse

from image_cache.cache.market import Filters
from image_cache.cli import console
from image_cache.settings import CONFIG_ENV, CONFIG_NAME, OPTIONS, Settings, find_config, load

# Old spellings of a setting's flag, kept one release (README): the flag, and the one that replaces it.
OLD_FLAGS = {"pairs": "--pairs"}
# Old repeatable filters of the cache commands, now the settings they narrowed: dest -> (flag, setting).
OLD_FILTERS = {"symbol_filter": ("--symbol", "pairs"), "interval_filter": ("--interval", "intervals")}


def _default(defaults: Settings, option_field: str) -> str | None:
    value = getattr(defaults, option_field)
    if value is None or value is False:
        return None
    return ",".join(value) if isinstance(value, tuple) else str(value)


def add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="FILE",
                        help=f"TOML file with an [image_cache] table (default: ${CONFIG_ENV}, ./{CONFIG_NAME}, "
                             "then $XDG_CONFIG_HOME/image_cache/config.toml, the first that exists)")


def add_arguments(parser: argparse.ArgumentParser, filters: bool = False) -> None:
    """Add `--config` and one flag per setting; absent flags stay None so the file can fill them. With
    `filters`, the old repeatable `--symbol`/`--interval` too (hidden, deprecated)."""
    add_config(parser)
    by_field = {option.field: option for option in OPTIONS}
    defaults = Settings()
    for option in OPTIONS:
        default = _default(defaults, option.field)
        text = option.help if default is None or "default" in option.help else f"{option.help} (default: {default})"
        if option.metavar is None:
            parser.add_argument(option.flag, dest=option.field, action="store_const", const=True, help=text)
        else:
            parser.add_argument(option.flag, dest=option.field, metavar=option.metavar, help=text)
    for field, old in OLD_FLAGS.items():
        parser.add_argument(old, dest=field, help=argparse.SUPPRESS,
                            action=console.deprecated(old, by_field[field].flag))
    if filters:
        for dest, (old, field) in OLD_FILTERS.items():
            parser.add_argument(old, dest=dest, help=argparse.SUPPRESS,
                                action=console.deprecated(old, by_field[field].flag, "append"))


def from_args(args: argparse.Namespace) -> Settings:
    """The settings the flags and the config file give (the old filters folded into the settings)."""
    for dest, (_, field) in OLD_FILTERS.items():
        named = getattr(args, dest, None)
        if named:  # folded into the flag's own value, where filters_from reads it too
            setattr(args, field, ",".join(([getattr(args, field)] if getattr(args, field) else []) + named))
            setattr(args, dest, None)
    values = {option.field: getattr(args, option.field, None) for option in OPTIONS}
    return load(find_config(args.config), values, warn=console.log)


def filters_from(args: argparse.Namespace, settings: Settings) -> Filters:
    """A command narrowed to the symbols and intervals its flags name (those of a config file are what
    the cache holds, not a narrowing)."""
    return Filters(list(settings.pairs) if args.pairs else None,
                   list(settings.intervals) if args.intervals else None)
