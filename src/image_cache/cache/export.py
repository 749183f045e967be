"""`export`: one dataset folder per run, in any registered format (cache/exports/registry.py).

Selects the labelled samples (cache/exports/select.py), splits them by time with purge gaps
(cache/exports/labels.py), and has the format write a temp folder next to OUT that is renamed into
place only when complete, so a failed export leaves nothing half-written. OUT must be new or empty;
`--force` replaces only an export this tool wrote, and only when it holds nothing else.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from typing import Any

from image_cache.cache.exports.base import ExportOptions, Format, Job
from image_cache.cache.exports.card import Card, balance, split_bytes
from image_cache.cache.exports.files import MARKER, MARKER_TEXT, killed_leftovers, write_sha256sums
from image_cache.cache.exports.labels import check_split_name, default_splits, purge_candles
from image_cache.cache.exports.registry import FORMATS
from image_cache.cache.exports.select import select, split_samples
from image_cache.cache.index import preset_label, run_lock
from image_cache.cache.market import Filters
from image_cache.chart import modes
from image_cache.chart.styles import ChartError
from image_cache.core.errors import ImageCacheError, storage_error
from image_cache.core.hooks import Warn, no_warn
from image_cache.settings import ConfigError, Settings, make_spec

__all__ = ["ExportOptions", "ExportResult", "export"]

ARRAY_FILES = ("npy", "dat")


@dataclass
class ExportResult:
    out: str
    format: str
    counts: dict[str, Any] = field(default_factory=dict)
    splits: list[dict[str, Any]] = field(default_factory=list)
    files: int = 0
    replaced: bool = False
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "format": self.format, "counts": self.counts, "splits": self.splits,
                "files": self.files, "replaced": self.replaced}

    def text(self) -> str:
        c = self.counts
        per = ", ".join(f"{s['name']} {s['exported']}" for s in self.splits)
        return (f"exported {c['exported']} images to {self.out} ({self.format}): {per}"
                + (" (replaced the previous export)" if self.replaced else "") + "\n"
                f"left out: {c['unlabeled']} without a label, {c['purged']} in purge gaps, "
                f"{c['outside_splits']} outside the splits, {c['stale']} stale, {c['not_ok']} not ok in the index")


def _foreign_file(out: str) -> str | None:
    """A path in an old export that its SHA256SUMS does not list (or a link), else None."""
    try:
        with open(os.path.join(out, "SHA256SUMS"), encoding="ascii") as handle:
            listed = {line.rstrip("\n").split("  ", 1)[1] for line in handle if "  " in line}
    except (OSError, UnicodeDecodeError):
        return "SHA256SUMS"
    for parent, dirs, files in os.walk(out):
        for name in dirs + files:
            path = os.path.join(parent, name)
            rel = os.path.relpath(path, out).replace(os.sep, "/")
            if os.path.islink(path) or (name in files and rel not in listed and rel != "SHA256SUMS"):
                return rel
    return None


def check_out(out: str, force: bool) -> bool:
    """Whether OUT is an old export to replace; refuses anything but a new or empty folder, or (with
    `force`) a folder that carries our marker and holds only the files its SHA256SUMS lists."""
    if not os.path.lexists(out) or (os.path.isdir(out) and not os.path.islink(out) and not os.listdir(out)):
        return False
    if not force or os.path.islink(out) or not os.path.isdir(out):
        raise ImageCacheError(f"{out} exists and is not an empty folder: choose a new OUT"
                          + ("" if force else " (--force replaces an export written by this tool)"))
    marker = os.path.join(out, MARKER)
    try:
        ours = not os.path.islink(marker) and open(marker, encoding="utf-8").read() == MARKER_TEXT
    except (OSError, UnicodeDecodeError):
        ours = False
    if not ours:
        raise ImageCacheError(f"{out} is not an export written by this tool (no {MARKER}): not replacing it")
    foreign = _foreign_file(out)
    if foreign:
        raise ImageCacheError(f"{out} holds {foreign}, which the export did not write: not replacing it")
    return True


def resolve_mode(settings: Settings, options: ExportOptions) -> tuple[str, str]:
    """The pixel mode the export writes (`--mode`, else the format's default) and the preset's own; a
    ConfigError for a mode or an option the format or preset cannot have."""
    fmt = FORMATS.get(options.format)
    if fmt is None:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {options.format!r}")
    if options.array_file not in ARRAY_FILES or (options.array_file != "npy" and fmt.name != "numpy"):
        raise ConfigError(f"--array-file {options.array_file}: one of {', '.join(ARRAY_FILES)}, numpy format only")
    spec = make_spec(settings)
    native = modes.native(spec)
    mode = options.mode or (fmt.palette_mode if native == "palette" else native)
    try:
        modes.check(mode, spec)
    except ChartError as exc:
        raise ConfigError(f"--{exc}") from None
    return mode, native


def export(settings: Settings, filters: Filters, out: str, options: ExportOptions,
           warn: Warn = no_warn, now: int | None = None) -> ExportResult:
    """Write the labelled, split samples to OUT in the chosen format, with SHA256SUMS and a dataset card."""
    fmt = FORMATS.get(options.format)
    if fmt is None:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got {options.format!r}")
    for split in options.splits or ():
        check_split_name(split.name, "split")
    mode, native = resolve_mode(settings, options)
    target = os.path.abspath(out)
    _clear_leftovers(target)
    check_out(out, options.force)
    with run_lock(settings, "export", need_index="run render first"):
        selection = select(settings, filters, options.horizons, options.label, warn, now, options.sample)
        if not selection.samples:
            raise ImageCacheError(f"nothing to export: no labelled images of preset {preset_label(selection.preset)} "
                              f"in range ({selection.counts['selected']} ok rows selected; run render first?)")
        splits = options.splits or default_splits(min(s.end_ms for s in selection.samples),
                                                  max(s.end_ms for s in selection.samples))
        counts: dict[str, Any] = {**selection.counts, "outside_splits": 0}
        purge = purge_candles(selection.preset["window_len"], selection.history, options.horizons)
        per_split = split_samples(selection.samples, splits, purge, counts)
        counts["exported"] = sum(len(group) for group in per_split.values())
        for name, group in per_split.items():
            if not group:
                warn(f"split {name} is empty (shorter than the purge of {purge} candles, or no data in it)")
        if not counts["exported"]:
            raise ImageCacheError("nothing to export: every labelled image is outside the splits or in a purge gap")
        job = Job(options, selection, splits, per_split, os.path.abspath(settings.image_root_dir), mode, native, warn)
        files, replaced = _write(target, out, job, fmt, Card(settings, job, fmt, purge, counts), options.force)
    summary = [{"name": s.name, "start": s.start_ms, "end": s.end_ms, "exported": len(per_split[s.name]),
                "purged": counts["purged_per_split"][s.name],
                "balance": balance(per_split[s.name], options.horizons, options.label.n_classes)} for s in splits]
    return ExportResult(out, options.format, counts, summary, files, replaced)


def _clear_leftovers(target: str) -> None:
    """The temp folders that exports of `target` killed before they finished left next to it: an old
    export set aside goes back into place if nothing took it, the rest is removed. Folders of exports
    still running are left alone; only folders of our names are touched, never through a link."""
    for path, kind in killed_leftovers(target):
        if not os.path.isdir(path):
            continue
        if kind == "old" and not os.path.lexists(target):
            os.rename(path, target)
        else:
            shutil.rmtree(path, ignore_errors=True)


def _write(target: str, out: str, job: Job, fmt: Format, card: Card, force: bool) -> tuple[int, bool]:
    """Fill a temp folder next to OUT, then rename it into place (setting an old export aside first)."""
    temp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.tmp")
    old = temp[:-len(".tmp")] + ".old"
    try:
        os.makedirs(temp)
        fmt.write(temp, job)
        with open(os.path.join(temp, MARKER), "w", encoding="utf-8") as handle:
            handle.write(MARKER_TEXT)
        with open(os.path.join(temp, "README.md"), "w", encoding="utf-8") as handle:
            handle.write(card.text(split_bytes(temp, job)))
        files = write_sha256sums(temp)
        replaced = check_out(out, force)  # again: OUT may have changed while we wrote
        if replaced:
            os.rename(target, old)
        os.rename(temp, target)  # replaces an empty folder; fails if OUT was filled meanwhile
    except BaseException as exc:
        shutil.rmtree(temp, ignore_errors=True)
        if os.path.isdir(old) and not os.path.lexists(target):
            os.rename(old, target)  # put the old export back
        if isinstance(exc, OSError):
            raise storage_error("write the export to", out, exc) from None
        raise
    shutil.rmtree(old, ignore_errors=True)
    return files, replaced
