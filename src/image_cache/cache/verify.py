"""verify and repair: thin drivers over the reconciler, plus the checks of what is on disk.

verify never touches an image: it records what it finds in the index (stale, corrupt, missing) and
reports it, so that a second verify reports exactly the same. repair applies every action: it re-draws
what is stale, corrupt or missing, removes images whose window may have none any more, adopts files
that have no row when they equal a fresh render (a crash between file and row leaves such files),
removes our temp files and our other files, and rebuilds a lost index from the files (`--reindex`).
Files that are not ours (other names, links, pipes) are reported and never touched.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from image_cache import chart
from image_cache.cache import executors, index, market, reconcile
from image_cache.cache.durable import SyncedWriter
from image_cache.cache.index import ENGINE_PREFIX, preset_label, preset_of
from image_cache.cache.layout import ImageName, parse_relative_path, temp_target
from image_cache.cache.market import Filters
from image_cache.cache.reconcile import DRAW, DRAWABLE, DROP, GAP, HISTORY, RECORD, RETIRE, SeriesReconcile
from image_cache.cache.root import (
    MARKER,
    Marker,
    RootError,
    Tree,
    check_owned,
    check_part,
    claim,
    owner_gone,
    read_marker,
)
from image_cache.cache.system import tune_allocator
from image_cache.cache.windows import Series, window_gaps
from image_cache.cache.work import adopt_chunk, require_built, settle_chunk, split_months
from image_cache.core.db import connect_readonly
from image_cache.core.errors import ImageCacheError
from image_cache.core.hooks import Progress, Warn, no_progress, no_warn
from image_cache.settings import Settings, make_spec

PROBLEMS = ("missing", "corrupt", "stale", "orphan", "temp")
NO_IMAGE = {GAP: "gap", HISTORY: "history"}


@dataclass
class Problem:
    kind: str
    path: str
    detail: str


@dataclass
class VerifyResult:
    deep: bool
    checked: int = 0
    problems: list[Problem] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)  # not ours: reported, never touched, not a failure
    no_image: dict[str, int] = field(default_factory=dict)  # undrawable windows by reason: counts
    not_rendered: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def counts(self) -> dict[str, int]:
        found = {kind: 0 for kind in PROBLEMS}
        for problem in self.problems:
            found[problem.kind] += 1
        return found

    def as_dict(self) -> dict[str, Any]:
        return {"deep": self.deep, "checked": self.checked, "counts": self.counts(),
                "problems": [p.__dict__ for p in self.problems], "foreign": self.foreign,
                "no_image": self.no_image, "not_rendered": self.not_rendered, "notes": self.notes,
                "seconds": round(self.seconds, 3), "ok": self.ok}

    def text(self) -> str:
        mode = "deep" if self.deep else "fast"
        lines = [f"{p.kind:8} {p.path}: {p.detail}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"… and {len(self.problems) - 50} more (use --json for all)")
        lines += [f"foreign  {path}: not ours, left alone" for path in self.foreign[:20]]
        if len(self.foreign) > 20:
            lines.append(f"… and {len(self.foreign) - 20} more foreign entries")
        lines += [f"note: {note}" for note in self.notes]
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items() if n)
        no_image = ", ".join(f"{n} {k}" for k, n in sorted(self.no_image.items()) if n) or "none"
        lines.append(f"verify ({mode}): {self.checked} images checked, {counts or 'no problems'}; "
                     f"windows without an image: {no_image}; {self.not_rendered} due windows not rendered yet "
                     f"({self.seconds:.2f} s)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ file checks

def check_files(root: str, items: list[tuple], deep: bool) -> list[tuple[int, str, str | None]]:
    """(id, status, reason) for each (id, path, size, width, height, sha256); runs in workers for --deep."""
    tune_allocator()
    out = []
    with Tree(root) as tree:
        for row_id, path, size, width, height, sha in items:
            out.append((row_id, *_check_file(tree, path, size, width, height, sha, deep)))
    return out


def _check_file(tree: Tree, path: str, size: int, width: int, height: int, sha: str,
                deep: bool) -> tuple[str, str | None]:
    """(status, reason) of one indexed file."""
    try:
        actual, data = tree.read(path, None if deep else 33)
    except FileNotFoundError:
        return "missing", "file missing"
    except (OSError, ImageCacheError) as exc:
        return "corrupt", f"unreadable: {getattr(exc, 'strerror', None) or exc}"
    if actual != size:
        return "corrupt", f"size {actual} bytes, indexed {size}"
    try:
        dims = chart.png_size(data)
    except chart.ChartError as exc:
        return "corrupt", str(exc)
    if dims != (width, height):
        return "corrupt", f"{dims[0]}x{dims[1]} px, indexed {width}x{height}"
    if deep and hashlib.sha256(data).hexdigest() != sha:
        return "corrupt", "SHA-256 differs from the index"
    if deep and not _decodes(data):
        return "corrupt", "PNG does not decode"
    return "ok", None


def _decodes(data: bytes) -> bool:
    try:
        chart.decode(data)
        return True
    except chart.ChartError:
        return False


def _check_all(root: str, items: list[tuple], deep: bool, settings: Settings,
               progress: Progress) -> Iterable[tuple[int, str, str | None]]:
    size = 2000
    batches = [items[i:i + size] for i in range(0, len(items), size)]
    # Fast mode is bound by stat and open: workers would only add start-up time.
    where = settings if deep and len(batches) > 1 else dataclasses.replace(settings, jobs=1, executor="local")
    with executors.executor(where) as run:
        for found in progress(run(partial(check_files, root, deep=deep), batches),
                              total=len(batches), desc="verify", unit="batch"):
            yield from found


# ------------------------------------------------------------------------------------------ inspection

def spec_of_preset(preset: dict[str, Any]) -> chart.Spec | None:
    try:
        return chart.make_spec(preset["style_name"], preset["img_size_px"], preset["window_len"],
                               preset["style_version"], jkx_height=preset["img_size_px"])
    except chart.ChartError:
        return None


@dataclass
class Inspection:
    """What verify found, and what repair needs to act on it."""

    result: VerifyResult
    series: dict[tuple[str, str], Series] = field(default_factory=dict)
    redraw: dict[tuple[str, str, chart.Spec | None], list[int]] = field(default_factory=lambda: defaultdict(list))
    retire: list[tuple[int, str, str]] = field(default_factory=list)  # (row id, path, reason)
    drop: list[tuple[int, str]] = field(default_factory=list)  # (row id, path)
    orphans: list[str] = field(default_factory=list)  # ours: adopted when equal to a fresh render, else removed
    unclaimed: list[str] = field(default_factory=list)  # our names, of no preset and series of this index: adopted
    # when equal to a fresh render (the proof they are ours), else left alone
    temps: list[str] = field(default_factory=list)
    unclaimed_temps: list[str] = field(default_factory=list)  # our temp names, for series of no row yet: removed
    # once adoption proves the series ours, else left alone
    unrepairable: list[str] = field(default_factory=list)
    inspected: set[tuple[str, str, chart.Spec]] = field(default_factory=set)


def check_filters(filters: Filters) -> None:
    """Symbols and intervals become path components: validated before any file-system call."""
    for symbol in filters.symbols or []:
        check_part("symbol", symbol)
    for interval in filters.intervals or []:
        check_part("interval", interval)


def inspect(conn: sqlite3.Connection, settings: Settings, filters: Filters, deep: bool,
            progress: Progress, warn: Warn) -> Inspection:
    """Reconcile every preset of the index with the market and the files; record what is found."""
    began = time.monotonic()
    found = Inspection(VerifyResult(deep=deep))
    result = found.result
    where, params = index.series_where(filters.symbols, filters.intervals)
    market_conn = None
    if os.path.isfile(settings.market_db_path):
        market_conn = market.open_market(settings.market_db_path)
        present = market.list_series(market_conn)
    else:
        result.notes.append(f"market database {settings.market_db_path} not found: inputs not checked")
        present = {}
    try:
        configured = _configured_preset(settings)
        for preset in index.presets(conn, filters.symbols, filters.intervals):
            _inspect_preset(conn, market_conn, present, preset, settings, filters, found, preset == configured,
                            deep)
        if market_conn is not None and configured is not None:
            _count_not_rendered(conn, market_conn, settings, filters, found, warn)
    finally:
        if market_conn is not None:
            market_conn.close()

    _check_indexed_files(conn, settings, where, params, deep, progress, found)
    _scan_root(conn, settings.image_root_dir, filters, where, params, found)
    result.problems.sort(key=lambda p: (p.path, p.kind))
    result.foreign.sort()
    result.seconds = time.monotonic() - began
    return found


def _check_indexed_files(conn: sqlite3.Connection, settings: Settings, where: str, params: list, deep: bool,
                         progress: Progress, found: Inspection) -> None:
    """The files of `ok` rows the reconciler left alone: recorded `corrupt` or `missing` when they fail."""
    result = found.result
    and_where = where + " AND" if where else " WHERE"
    settled = {pid for pid, *_ in found.retire} | {pid for pid, _ in found.drop} | \
        {pid for ids in found.redraw.values() for pid in ids}
    with_file = [row for row in conn.execute("SELECT id, file_path, file_size, width_px, height_px, sha256 "
                                             f"FROM images{and_where} status = 'ok'", params)
                 if row["id"] not in settled]
    # Every row that has (or should have) a file, whatever this run found: the same figure twice.
    result.checked = conn.execute(f"SELECT count(*) FROM images{and_where} status != 'undrawable'",
                                  params).fetchone()[0]
    changes = []
    by_id = {row["id"]: row for row in with_file}
    for row_id, status, reason in _check_all(settings.image_root_dir, [tuple(r) for r in with_file], deep,
                                             settings, progress):
        if status != "ok":
            changes.append((row_id, status, reason))
            result.problems.append(Problem(status, by_id[row_id]["file_path"], reason or status))
    index.set_status(conn, changes)
    keys = index.values_by_id(conn, (row_id for row_id, _, _ in changes),
                              ["symbol", "interval", *index.PRESET_COLUMNS])
    specs: dict[tuple, chart.Spec | None] = {}
    for row_id, _, _ in changes:
        row = keys[row_id]
        preset = tuple(row[c] for c in index.PRESET_COLUMNS)
        if preset not in specs:
            specs[preset] = spec_of_preset(dict(zip(index.PRESET_COLUMNS, preset, strict=True)))
        found.redraw[(row["symbol"], row["interval"], specs[preset])].append(row_id)


def _scan_root(conn: sqlite3.Connection, root: str, filters: Filters, where: str, params: list,
               found: Inspection) -> None:
    """Each entry without a row of an image gets one judgment. Ours (orphans, temp files): named as an image
    of a preset and series this index has rows of, or at the path of a row that records no image. Unclaimed:
    named as an image of another preset or series (another index's, maybe): left alone unless proven ours.
    Anything else is foreign. Entries at the paths of image rows are judged by their rows' file checks."""
    result = found.result
    drawn, no_image = set(), {}
    for row in conn.execute("SELECT file_path, status, reason FROM images" + where, params):
        if row["status"] == "undrawable":
            no_image[row["file_path"]] = row["reason"]
        else:
            drawn.add(row["file_path"])
    owned = _owned_series(conn, where, params)
    for kind, path in Tree(root).walk(list(filters.symbols or [""])):
        parts = path.split("/")
        if (filters.intervals and (len(parts) < 2 or parts[1] not in filters.intervals)) or path in drawn:
            continue
        if kind == "temp" and (path.startswith(MARKER + ".") or _owned(owned, temp_target(path))):
            found.temps.append(path)
            result.problems.append(Problem("temp", path, "leftover temporary file"))
        elif kind == "file" and path in no_image:
            found.orphans.append(path)
            result.problems.append(Problem("orphan", path, f"the index records no image here ({no_image[path]})"))
        elif kind == "file" and _owned(owned, path):
            found.orphans.append(path)
            result.problems.append(Problem("orphan", path, "no index row"))
        else:
            if kind == "file" and parse_relative_path(path) is not None:
                found.unclaimed.append(path)
            elif kind == "temp" and parse_relative_path(temp_target(path)) is not None:
                found.unclaimed_temps.append(path)
            result.foreign.append(path)


def _owned_series(conn: sqlite3.Connection, where: str = "", params: list | None = None) -> set[tuple]:
    """(symbol, interval, preset columns) of every series and preset the index has rows of."""
    return {tuple(row) for row in conn.execute(
        f"SELECT DISTINCT symbol, interval, {', '.join(index.PRESET_COLUMNS)} FROM images" + where, params or [])}


def _owned(owned: set[tuple], path: str) -> bool:
    """Whether `path` is named as an image of a preset and series the index has rows of."""
    name = parse_relative_path(path)
    if name is None:
        return False
    spec = _spec_of_name(name)
    return spec is not None and (name.symbol, name.interval, *preset_of(spec).values()) in owned


def _configured_preset(settings: Settings) -> dict[str, Any] | None:
    try:
        return preset_of(make_spec(settings))
    except chart.ChartError:
        return None


def _inspect_preset(conn: sqlite3.Connection, market_conn, present: dict, preset: dict[str, Any],
                    settings: Settings, filters: Filters, found: Inspection, configured: bool, deep: bool) -> None:
    result = found.result
    spec = spec_of_preset(preset)
    label = preset_label(preset)
    for symbol, interval in index.indexed_series(conn, preset):
        if (filters.symbols and symbol not in filters.symbols) or \
                (filters.intervals and interval not in filters.intervals):
            continue
        if spec is None:
            for row in conn.execute("SELECT file_path FROM images WHERE symbol = ? AND interval = ? AND "
                                    "style_name = ? AND status != 'undrawable'", (symbol, interval,
                                                                                 preset["style_name"])):
                found.unrepairable.append(f"{row['file_path']} (unknown style {preset['style_name']!r})")
            continue
        sid = present.get((symbol, interval))
        if sid is None:
            if market_conn is not None:
                result.notes.append(f"{symbol} {interval} is not in the market database: {label} inputs not checked")
            continue
        # The configured preset's due windows without a row are counted as not rendered yet.
        due = reconcile.DueRange.of(settings) if configured else None
        # --deep trusts no memo: every row's input fingerprint is compared with the market's candles.
        rec = reconcile.reconcile_series(market_conn, conn, spec, symbol, interval, sid, settings.gap_policy, None, due,
                                      trust_memo=not deep)
        result.not_rendered += int((rec.new_desired == DRAWABLE).sum())
        found.series.setdefault((symbol, interval), rec.series)
        found.inspected.add((symbol, interval, spec))
        reconcile.record_findings(conn, spec, rec)
        _collect(conn, spec, rec, found)


def _collect(conn: sqlite3.Connection, spec: chart.Spec, rec: SeriesReconcile, found: Inspection) -> None:
    """Turn one series' actions into problems to report and work for repair."""
    result = found.result
    series = rec.series
    action = rec.row_action
    interesting = np.flatnonzero(action != 0)
    details = index.values_by_id(conn, rec.indexed.row_id[interesting], ["file_path", "status", "reason"])
    records = []
    for i in interesting.tolist():
        row_id = int(rec.indexed.row_id[i])
        row = details[row_id]
        if action[i] == DRAW:
            if row["status"] == "undrawable" and not (row["reason"] or "").startswith(ENGINE_PREFIX):
                result.not_rendered += 1  # a gap filled, or history grown: drawable now
                continue
            found.redraw[(series.symbol, series.interval, spec)].append(row_id)
            kind = row["status"] if row["status"] in ("corrupt", "missing") else "stale"
            result.problems.append(Problem(kind, row["file_path"], rec.row_reason[i] or row["reason"] or kind))
        elif action[i] == RETIRE:
            found.retire.append((row_id, row["file_path"], NO_IMAGE[int(rec.row_desired[i])]))
            result.problems.append(Problem("stale", row["file_path"], f"image should not exist: {rec.row_reason[i]}"))
        elif action[i] == DROP:
            found.drop.append((row_id, row["file_path"]))
            result.problems.append(Problem("stale", row["file_path"], rec.row_reason[i] or "stale"))
        elif action[i] == RECORD:
            records.append((row_id, "undrawable", NO_IMAGE[int(rec.row_desired[i])]))
    index.set_status(conn, records)
    for reason, count in conn.execute(
            "SELECT CASE WHEN reason LIKE ? THEN 'engine' ELSE reason END, count(*) FROM images "
            "WHERE status = 'undrawable' AND symbol = ? AND interval = ? AND style_name = ? AND img_size_px = ? "
            "AND window_len = ? AND style_version = ? GROUP BY 1",
            (ENGINE_PREFIX + "%", series.symbol, series.interval, *preset_of(spec).values())):
        result.no_image[reason] = result.no_image.get(reason, 0) + count


def _count_not_rendered(conn: sqlite3.Connection, market_conn, settings: Settings, filters: Filters,
                        found: Inspection, warn: Warn) -> None:
    """Due windows of the configured preset in series the index has no row of yet: a count, never a failure."""
    spec = make_spec(settings)
    for symbol, interval, sid in market.select_series(market_conn, settings, filters, warn):
        if (symbol, interval, spec) in found.inspected:
            continue
        rec = reconcile.reconcile_series(market_conn, conn, spec, symbol, interval, sid, settings.gap_policy,
                                      settings.start_ms, reconcile.DueRange.of(settings))
        found.result.not_rendered += int((rec.new_desired == DRAWABLE).sum())


# ------------------------------------------------------------------------------------------ verify

def open_owned(settings: Settings, create: bool = False) -> index.IndexConnection:
    """The index, and proof that the image root is the one it belongs to."""
    try:
        conn = index.connect(settings.image_index_db, create=create)
    except index.DamagedIndex as exc:
        # Advise a rebuild only where it is right: the image root names this file as its index.
        marker = read_marker(settings.image_root_dir) if os.path.isdir(settings.image_root_dir) else None
        if marker is not None and marker.index_path == os.path.abspath(settings.image_index_db):
            raise index.DamagedIndex(f"{exc}; the image root {settings.image_root_dir} names it as its "
                                     "index: run `repair --reindex` to rebuild it from the image files") from None
        raise
    try:
        check_owned(settings.image_root_dir, index.index_id(conn))
    except BaseException:
        conn.close()
        raise
    return conn


def verify(settings: Settings, filters: Filters | None = None, *, deep: bool = False,
           progress: Progress = no_progress, warn: Warn = no_warn) -> VerifyResult:
    filters = filters or Filters()
    check_filters(filters)
    with index.run_lock(settings, "verify", need_index="run render first"):
        conn = open_owned(settings)
        try:
            with index.guarded(conn, settings.image_index_db):
                run_id = index.start_run(conn, "verify", {"deep": deep, **filters.__dict__})
                result = inspect(conn, settings, filters, deep, progress, warn).result
                index.finish_run(conn, run_id, result.counts(), 0 if result.ok else 1)
            return result
        finally:
            conn.close()


# ------------------------------------------------------------------------------------------ repair

@dataclass
class RepairResult:
    found: dict[str, int] = field(default_factory=dict)
    redrawn: int = 0
    adopted: int = 0
    removed: int = 0
    retired: int = 0
    foreign: list[str] = field(default_factory=list)
    unrepairable: list[str] = field(default_factory=list)
    reindexed_from: str | None = None
    notes: list[str] = field(default_factory=list)
    lost_workers: list[str] = field(default_factory=list)  # Dask workers that left during the run
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unrepairable

    def as_dict(self) -> dict[str, Any]:
        return {"found": self.found, "redrawn": self.redrawn, "adopted": self.adopted, "removed": self.removed,
                "retired": self.retired, "foreign": self.foreign, "unrepairable": self.unrepairable,
                "reindexed_from": self.reindexed_from, "notes": self.notes, "lost_workers": self.lost_workers,
                "seconds": round(self.seconds, 3),
                "ok": self.ok}

    def text(self) -> str:
        lines = [f"unrepairable: {path}" for path in self.unrepairable]
        lines += [f"foreign: {path} (not ours, left alone)" for path in self.foreign[:20]]
        if self.reindexed_from:
            lines.append(f"damaged index moved aside to {self.reindexed_from}; rebuilt from the image files")
        lines += [f"note: {note}" for note in self.notes]
        found = ", ".join(f"{n} {k}" for k, n in self.found.items() if n) or "no problems"
        lines.append(f"repair: found {found}; re-drew {self.redrawn}, adopted {self.adopted}, "
                     f"retired {self.retired}, removed {self.removed} files ({self.seconds:.2f} s)")
        return "\n".join(lines)


def _move_aside(settings: Settings, marker: Marker, notes: list[str]) -> str | None:
    """Move a damaged index aside for --reindex, only when it provably is (or was) our index; a healthy
    one stays where it is (its files without rows are adopted as by any repair)."""
    path = settings.image_index_db
    kind = index.identify(path)
    if kind == "other-sqlite":
        raise index.NotAnIndex(f"{path} is an SQLite database but not an image index: --reindex will not "
                               "move it; pass the index path with --index-db")
    if owner_gone(marker, path) is None:
        raise RootError(f"image root {settings.image_root_dir} belongs to another index, {marker.index_path}: "
                        "--reindex will not take it over; pass that index with --index-db")
    if kind == "absent":
        return None
    if kind == "index" and _healthy(path):
        notes.append(f"index {path} is healthy: kept, not rebuilt; files without rows were checked for adoption")
        return None
    if kind != "index" and marker.index_path != os.path.abspath(path):
        raise index.NotAnIndex(f"{path} is not an image index, and the image root's marker does not name it "
                               "as its index: --reindex will not move it")
    aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside


def _healthy(path: str) -> bool:
    conn = connect_readonly(path)
    try:
        return conn.execute("PRAGMA quick_check").fetchone()[0] == "ok"
    except sqlite3.Error:
        return False
    finally:
        conn.close()


def repair(settings: Settings, filters: Filters | None = None, *, reindex: bool = False,
           progress: Progress = no_progress, warn: Warn = no_warn) -> RepairResult:
    filters = filters or Filters()
    check_filters(filters)
    require_built()  # before anything is moved aside or redrawn
    began = time.monotonic()
    result = RepairResult()
    need = None if reindex else "run `repair --reindex` to rebuild it from the image files"
    with index.run_lock(settings, "repair", need_index=need):
        if reindex:
            _prepare_reindex(settings, result)
        conn = open_owned(settings)
        try:
            with index.guarded(conn, settings.image_index_db):
                run_id = index.start_run(conn, "repair", {"reindex": reindex, **filters.__dict__})
                found = inspect(conn, settings, filters, True, progress, warn)
                result.found = found.result.counts()
                result.foreign = found.result.foreign
                result.unrepairable = list(found.unrepairable)
                _apply(conn, settings, found, result, warn)
                index.finish_run(conn, run_id, result.as_dict(), 0 if result.ok else 1)
        finally:
            conn.close()
    result.seconds = time.monotonic() - began
    return result


def _prepare_reindex(settings: Settings, result: RepairResult) -> None:
    """For --reindex: move a damaged index aside, give the index at the index path the root's index id
    when it has no rows (a new one), and have the marker name it (claim): the owner the marker named may
    have been at another path, gone now."""
    marker = check_owned(settings.image_root_dir, None)
    result.reindexed_from = _move_aside(settings, marker, result.notes)
    conn = index.connect(settings.image_index_db)
    try:
        with index.guarded(conn, settings.image_index_db):
            if conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0:
                index.set_index_id(conn, marker.index_id)
            took_over = claim(settings.image_root_dir, index.index_id(conn), settings.image_index_db)
    finally:
        conn.close()
    if took_over:
        result.notes.append(took_over)


def _apply(conn: index.IndexConnection, settings: Settings, found: Inspection, result: RepairResult,
           warn: Warn) -> None:
    """Apply every action. A path that cannot be settled (a folder, pipe or link where an image should be; a
    file that cannot be removed) is reported once in `unrepairable` and never stops the rest."""
    root = os.path.abspath(settings.image_root_dir)
    with Tree(root) as tree:
        _apply_in(conn, settings, found, result, tree, root, warn)


def _apply_in(conn: index.IndexConnection, settings: Settings, found: Inspection, result: RepairResult, tree: Tree,
              root: str, warn: Warn) -> None:
    remove = partial(_remove, tree, result)
    for path in found.temps:
        result.removed += bool(remove(path))
    # File first, then row: a row is changed only where its file is gone.
    retired = [(row_id, "undrawable", reason) for row_id, path, reason in found.retire if remove(path) is not None]
    index.set_status(conn, retired)
    result.retired = len(retired)
    dropped = [row_id for row_id, path in found.drop if remove(path) is not None]
    index.delete_rows(conn, dropped)
    result.removed += len(dropped)

    draw_chunks, adopt_chunks = [], []
    for (symbol, interval, spec), ids in sorted(found.redraw.items(), key=lambda kv: kv[0][:2]):
        series = found.series.get((symbol, interval))
        rows = index.values_by_id(conn, ids, ["end_open_time_ms", "file_path"])
        items = sorted((rows[i]["end_open_time_ms"], rows[i]["file_path"]) for i in ids)
        if spec is None or series is None:
            result.unrepairable += [f"{path}: its candles are not in the market database" for _, path in items]
            continue
        draw_chunks += _chunks(series, spec, [end for end, path in items if _replaceable(tree, path, result)], root)
    by_series: dict[tuple[str, str, chart.Spec], list[int]] = defaultdict(list)
    unclaimed = set(found.unclaimed)
    for path in found.orphans + found.unclaimed:
        name = parse_relative_path(path)
        assert name is not None  # both lists hold files found by their image names
        spec = _spec_of_name(name)
        series = found.series.get((name.symbol, name.interval)) if spec else None
        if series is None and spec is not None and os.path.isfile(settings.market_db_path):
            series = _read_whole(settings, name.symbol, name.interval)
            if series is not None:
                found.series[(name.symbol, name.interval)] = series
        if series is not None and spec is not None and _drawable(series, spec, name.end_open_time_ms,
                                                                 settings.gap_policy):
            by_series[(name.symbol, name.interval, spec)].append(name.end_open_time_ms)
        elif path not in unclaimed:
            result.removed += bool(remove(path))
    for (symbol, interval, spec), ends in by_series.items():
        adopt_chunks += _chunks(found.series[(symbol, interval)], spec, sorted(ends), root)
    writer = SyncedWriter(conn, root)
    adopted: set[str] = set()
    try:
        with executors.executor(settings, warn, result.lost_workers) as run:
            for rows, failed in run(partial(settle_chunk, sync=settings.executor == "dask"), draw_chunks):
                writer.add(rows)
                result.redrawn += sum(row.status == "ok" for row in rows)
                if failed is not None:  # e.g. a folder that cannot be written, a full disk: the rest goes on
                    result.unrepairable.append(failed)
            for rows, rejected in run(adopt_chunk, adopt_chunks):
                writer.add(rows)
                result.adopted += len(rows)
                adopted.update(row.file_path for row in rows)
                result.removed += sum(bool(remove(path)) for path in rejected if path not in unclaimed)
        result.foreign = [path for path in result.foreign if path not in adopted]  # proven ours
    finally:
        writer.close()
    # Files named as images of a series and preset that adoption has just proven ours, yet unequal to a
    # fresh render: orphans of ours now, as the next verify would call them. Their temp files too (a
    # render killed before it indexed the series leaves them).
    owned = _owned_series(conn)
    ours = {path for path in found.unclaimed if path not in adopted and _owned(owned, path)}
    ours |= {path for path in found.unclaimed_temps if _owned(owned, temp_target(path))}
    result.removed += sum(bool(remove(path)) for path in sorted(ours))
    result.foreign = [path for path in result.foreign if path not in ours]


def _remove(tree: Tree, result: RepairResult, path: str) -> bool | None:
    """Tree.remove; None, the failure reported, when the file could not be removed."""
    try:
        return tree.remove(path)
    except RootError as exc:
        result.unrepairable.append(f"could not remove: {exc}")
        return None


def _replaceable(tree: Tree, path: str, result: RepairResult) -> bool:
    """Whether a redrawn image may be written at `path`: nothing there, or a regular file. A folder, pipe or
    link is never replaced: reported and left alone."""
    try:
        what = tree.entry(path)
    except (RootError, OSError) as exc:
        result.unrepairable.append(f"{path}: {getattr(exc, 'strerror', None) or exc}")
        return False
    if what in (None, "file"):
        return True
    result.unrepairable.append(f"{path}: {what} is at its path: not ours, left alone")
    return False


def _spec_of_name(name: ImageName) -> chart.Spec | None:
    size = int(name.size_label.split("x")[-1])
    try:
        spec = chart.make_spec(chart.style_from_tag(name.file_tag), size, name.window_len, name.version,
                               jkx_height=size)
    except chart.ChartError:
        return None
    return spec if spec.size_label == name.size_label else None


def _read_whole(settings: Settings, symbol: str, interval: str) -> Series | None:
    conn = market.open_market(settings.market_db_path)
    try:
        sid = market.list_series(conn).get((symbol, interval))
        return None if sid is None else market.read_series(conn, symbol, interval, sid)
    finally:
        conn.close()


def _drawable(series: Series, spec: chart.Spec, end_ms: int, gap_policy: str) -> bool:
    """Whether the window ending at `end_ms` exists and may have an image."""
    pos = int(np.searchsorted(series.times, end_ms))
    if pos >= len(series.times) or series.times[pos] != end_ms or pos < spec.window_len - 1 + spec.history:
        return False
    gap, _ = window_gaps(series, np.array([pos]), spec.window_len, spec.history)
    return not (gap[0] and gap_policy == "skip")


def _chunks(series: Series, spec: chart.Spec, ends: list[int], root: str):
    """Chunks for the windows ending at the given times (each present in `series`)."""
    times = series.times
    last = np.searchsorted(times, np.array(ends, dtype=np.int64))
    ok = (last < len(times)) & (times[np.minimum(last, len(times) - 1)] == np.array(ends)) if len(times) else \
        np.zeros(len(ends), bool)
    last = last[ok & (last >= spec.window_len - 1)]
    if len(last) == 0:
        return []
    gap, _ = window_gaps(series, last, spec.window_len, spec.history)
    reasons = ["gap" if g else None for g in gap.tolist()]
    return split_months(series, last, reasons, spec, preset_of(spec), root)
