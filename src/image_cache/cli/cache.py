"""Render, verify, repair and report on the chart image cache.

`image-cache <command>` installed, `python image_cache.py <command>` in a checkout.

Each command parses its arguments, calls one library function (cache/), and prints its result on
stdout (`--json` for machines); logs and progress go to stderr. Exit codes (README): 0 ok, 1 failure or
problems found, 2 usage error, 75 another run holds the lock, 129 SIGHUP, 130 Ctrl-C, 141 stdout closed,
143 SIGTERM.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from image_cache.cache.market import Filters
from image_cache.cli import console
from image_cache.cli import settings as cli_settings
from image_cache.core import flags
from image_cache.core.hooks import Hooks
from image_cache.settings import ConfigError, Settings

# How the command line was started: the checkout's launcher, or the installed console script. Named in
# usage lines and recorded in an export's dataset card.
PROG = "python image_cache.py"


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    parser = console.Parser(prog=prog, description=__doc__.split("\n")[0])
    common = console.common_flags()
    cli_settings.add_arguments(common, filters=True)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("render", parents=[common], help="draw the due windows that are not up to date")
    p.add_argument("--dry-run", action="store_true", help="print the plan per series; write nothing")
    p.add_argument("--limit", type=flags.integer(0), metavar="N", help="draw at most N images")

    p = sub.add_parser("verify", parents=[common], help="check every indexed image and the image root")
    p.add_argument("--deep", action="store_true", help="also re-hash and decode every image")

    p = sub.add_parser("repair", parents=[common], help="re-draw, adopt or remove until verify --deep passes")
    p.add_argument("--reindex", action="store_true", help="rebuild a lost or damaged index from the files")

    sub.add_parser("status", parents=[common], help="counts per series and status, bytes, last run")

    labels = console.Parser(add_help=False)
    labels.add_argument("--horizons", default="5,20", metavar="H,H",
                        help="label horizons in candles (default 5,20; the first is `label`)")
    labels.add_argument("--label", default="sign", metavar="RULE",
                        help="sign (1 if the forward return > 0, else 0) or bucket:EDGES, e.g. bucket:-0.01,0.01")
    p = sub.add_parser("export", parents=[common, labels], help="write an ML dataset: labels, time splits, format")
    p.add_argument("out", metavar="OUT", help="new (or empty) output folder")
    formats = export_formats()
    p.add_argument("--format", required=True, choices=list(formats),
                   help="; ".join(f"{name}: {fmt.help}" for name, fmt in formats.items()))
    p.add_argument("--split", metavar="SPLITS", help="NAME:START..END,... on window end times "
                   "(default: train/validation/test 70/15/15 of the range)")
    p.add_argument("--shard-size", type=int, default=10_000, metavar="N", help="webdataset: samples per shard at most")
    p.add_argument("--min-shards", type=int, default=8, metavar="N", help="webdataset: shards per split at least")
    p.add_argument("--seed", type=int, default=0, metavar="N", help="webdataset: seed of the shuffle before sharding")
    p.add_argument("--mode", choices=("rgb", "palette", "gray"),
                   help="pixels as clients get them (default: rgb, or the preset's own gray; numpy: the preset's own)")
    p.add_argument("--sample", choices=("all", "month-end"), default="all",
                   help="month-end: only the last window of each calendar month")
    p.add_argument("--array-file", choices=("npy", "dat"), default="npy",
                   help="numpy: images.npy, or dat: a headerless images.dat + images.json (the JKX layout)")
    p.add_argument("--license", default="other", metavar="ID", help="license in the dataset card")
    p.add_argument("--force", action="store_true", help="replace OUT if it is an export written by this tool")

    p = sub.add_parser("preview", parents=[common, labels], help="a contact sheet of sample images with labels")
    p.add_argument("out", metavar="OUT.png", help="PNG file to write (new)")
    p.add_argument("--n", type=int, default=16, metavar="N", help="images on the sheet")
    p.add_argument("--force", action="store_true", help="replace OUT.png if it is a sheet written by preview")
    return parser


def command(args: argparse.Namespace):
    """The library call behind each command, as a zero-argument callable."""
    settings = cli_settings.from_args(args)
    filters = cli_settings.filters_from(args, settings)
    hooks: Hooks = {"progress": console.progress, "warn": console.log}
    note = settings.jobs_note()
    if note and args.command in ("render", "verify", "repair"):  # the commands with workers
        console.log(note)
    if args.command == "render":
        from image_cache.cache.runner import render
        return lambda: render(settings, filters, dry_run=args.dry_run, limit=args.limit, **hooks)
    if args.command == "verify":
        from image_cache.cache.verify import verify
        return lambda: verify(settings, filters, deep=args.deep, **hooks)
    if args.command == "repair":
        from image_cache.cache.verify import repair
        return lambda: repair(settings, filters, reindex=args.reindex, **hooks)
    if args.command in ("export", "preview"):
        return _dataset_command(args, settings, filters)
    from image_cache.cache.status import status
    return lambda: status(settings.image_index_db, filters.symbols, filters.intervals)


def export_formats() -> dict:
    from image_cache.cache.exports.registry import FORMATS
    return FORMATS


def _dataset_command(args: argparse.Namespace, settings: Settings, filters: Filters):
    from image_cache.cache.exports.labels import parse_horizons, parse_label, parse_splits

    horizons, label = parse_horizons(args.horizons), parse_label(args.label)
    if args.command == "preview":
        from image_cache.cache.preview import preview
        if args.n < 1:
            raise ConfigError(f"--n must be at least 1, got {args.n}")
        return lambda: preview(settings, filters, args.out, args.n, horizons, label, force=args.force,
                               warn=console.log)
    from image_cache.cache.export import ExportOptions, export, resolve_mode
    for flag, value in (("--shard-size", args.shard_size), ("--min-shards", args.min_shards)):
        if value < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    options = ExportOptions(
        format=args.format, horizons=horizons, label=label,
        splits=parse_splits(args.split) if args.split else None, shard_size=args.shard_size,
        min_shards=args.min_shards, seed=args.seed, mode=args.mode, sample=args.sample, array_file=args.array_file,
        license=args.license, force=args.force,
        command=shlex.join([*shlex.split(args.prog), *args.argv]))
    resolve_mode(settings, options)  # a bad --mode or --array-file is a usage error
    return lambda: export(settings, filters, args.out, options, warn=console.log)


def main(argv: list[str] | None = None, prog: str = PROG) -> int:
    args = console.parse(build_parser(prog), argv)
    if isinstance(args, int):
        return args
    console.configure(args)
    args.argv = sys.argv[1:] if argv is None else list(argv)  # recorded by export's dataset card
    args.prog = prog
    try:
        call = command(args)
    except ConfigError as exc:
        return console.usage_error(exc)
    return console.run(call, args.json)

