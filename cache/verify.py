"""verify and repair: compare the index with the files and the market, record what is wrong, mend it.

verify never touches an image; it records statuses in the index. repair re-draws what is missing,
corrupt or stale, adopts files that have no row when they equal a fresh render (a crash between
file and row leaves such files), removes everything else that does not belong, and rebuilds a lost
index from the files (`--reindex`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import sqlite3
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

import chart
from core.hooks import Progress, no_progress, no_warn
from cache import executors, index, market, runner
from cache.index import BatchWriter
from cache.layout import ImageName, is_temp_name, parse_relative_path
from cache.system import tune_allocator
from cache.runner import Filters, preset_of
from cache.windows import Series
from cache.work import Chunk, adopt_chunk, draw_chunk, split_months
from config import Settings
from core.errors import MarketError
from core.grid import grid_index

PROBLEMS = ("missing", "corrupt", "stale", "orphan", "temp")
FILE_STATUSES = ("ok", "corrupt", "stale", "missing")
NO_FILE_REASONS = ("gap", "history")


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
    gap_windows: int = 0
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
                "problems": [p.__dict__ for p in self.problems], "gap_windows": self.gap_windows,
                "not_rendered": self.not_rendered, "notes": self.notes, "seconds": round(self.seconds, 3),
                "ok": self.ok}

    def text(self) -> str:
        mode = "deep" if self.deep else "fast"
        lines = [f"{p.kind:8} {p.path}: {p.detail}" for p in self.problems[:50]]
        if len(self.problems) > 50:
            lines.append(f"… and {len(self.problems) - 50} more (use --json for all)")
        lines += [f"note: {note}" for note in self.notes]
        counts = ", ".join(f"{n} {k}" for k, n in self.counts().items() if n)
        lines.append(f"verify ({mode}): {self.checked} images checked, "
                     f"{counts or 'no problems'}; {self.gap_windows} windows missing because of source gaps; "
                     f"{self.not_rendered} due windows not rendered yet ({self.seconds:.2f} s)")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ file checks

def check_files(root: str, items: list[tuple], deep: bool) -> list[tuple[int, str, str | None]]:
    """(id, status, reason) for each (id, path, size, width, height, sha256); runs in workers for --deep."""
    tune_allocator()
    out = []
    for row_id, path, size, width, height, sha in items:
        full = os.path.join(root, path)
        try:
            actual = os.stat(full).st_size
            with open(full, "rb") as handle:
                data = handle.read() if deep else handle.read(33)
        except FileNotFoundError:
            out.append((row_id, "missing", "file missing"))
            continue
        except OSError as exc:
            out.append((row_id, "corrupt", f"unreadable: {exc.strerror}"))
            continue
        if actual != size:
            out.append((row_id, "corrupt", f"size {actual} bytes, indexed {size}"))
            continue
        try:
            dims = chart.png_size(data)
        except chart.ChartError as exc:
            out.append((row_id, "corrupt", str(exc)))
            continue
        if dims != (width, height):
            out.append((row_id, "corrupt", f"{dims[0]}x{dims[1]} px, indexed {width}x{height}"))
        elif deep and hashlib.sha256(data).hexdigest() != sha:
            out.append((row_id, "corrupt", "SHA-256 differs from the index"))
        elif deep and not _decodes(data):
            out.append((row_id, "corrupt", "PNG does not decode"))
        else:
            out.append((row_id, "ok", None))
    return out


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


# ------------------------------------------------------------------------------------------ verify

def _where(filters: Filters) -> tuple[str, list[Any]]:
    clauses, params = [], []
    if filters.symbols:
        clauses.append(f"symbol IN ({', '.join('?' * len(filters.symbols))})")
        params += filters.symbols
    if filters.intervals:
        clauses.append(f"interval IN ({', '.join('?' * len(filters.intervals))})")
        params += filters.intervals
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _spec_of_row(style: str, size: int, window: int, version: int) -> chart.Spec | None:
    try:
        return chart.make_spec(style, size, window, version, jkx_height=size)
    except chart.ChartError:
        return None


def _scan_root(root: str, filters: Filters) -> tuple[list[str], list[str]]:
    """Relative paths of every file under the image root (within the filters): (files, temp files)."""
    tops = [root]
    if filters.symbols:
        tops = [os.path.join(root, s) for s in filters.symbols]
        if filters.intervals:
            tops = [os.path.join(t, iv) for t in tops for iv in filters.intervals]
    files, temps = [], []
    for top in tops:
        for folder, _, names in os.walk(top):
            for name in names:
                rel = os.path.relpath(os.path.join(folder, name), root).replace(os.sep, "/")
                (temps if is_temp_name(name) else files).append(rel)
    return sorted(files), sorted(temps)


def verify_index(conn: sqlite3.Connection, settings: Settings, filters: Filters, deep: bool,
                 progress: Progress, warn: Callable[[str], None]) -> VerifyResult:
    """Check files, specs, inputs and the image root; record statuses; report every problem."""
    began = time.monotonic()
    result = VerifyResult(deep=deep)
    where, params = _where(filters)
    rows = conn.execute("SELECT id, file_path, file_size, width_px, height_px, sha256, status, reason, spec_hash, "
                        "style_name, img_size_px, window_len, style_version FROM images" + where, params).fetchall()
    by_id = {row[0]: row for row in rows}
    with_file = [row for row in rows if not (row[6] == "missing" and row[7] in NO_FILE_REASONS)]
    result.gap_windows = len(rows) - len(with_file)
    result.checked = len(with_file)
    root = settings.image_root_dir
    findings: dict[int, tuple[str, str | None]] = {}
    for row_id, status, reason in _check_all(root, [r[:6] for r in with_file], deep, settings, progress):
        findings[row_id] = (status, reason)
    specs: dict[tuple, chart.Spec | None] = {}
    for row in with_file:
        if findings[row[0]][0] != "ok":
            continue
        key = tuple(row[9:13])
        if key not in specs:
            specs[key] = _spec_of_row(*key)
        if specs[key] is None or specs[key].spec_hash != row[8]:
            findings[row[0]] = ("stale", "drawn with another render spec")
    _find_stale_inputs(conn, settings, filters, findings, result, warn)
    changes = []
    for row_id, (status, reason) in findings.items():
        row = by_id[row_id]
        if status != "ok":
            result.problems.append(Problem(status, row[1], reason or status))
        if (status, reason) != (row[6], row[7]) and not (status == "ok" and row[6] == "ok"):
            changes.append((row_id, status, reason))
    index.set_status(conn, changes)
    known = {path for (path,) in conn.execute("SELECT file_path FROM images")}
    files, temps = _scan_root(root, filters)
    result.problems += [Problem("orphan", path, "no index row") for path in files if path not in known]
    result.problems += [Problem("temp", path, "leftover temporary file") for path in temps]
    result.seconds = time.monotonic() - began
    return result


def _find_stale_inputs(conn: sqlite3.Connection, settings: Settings, filters: Filters,
                       findings: dict[int, tuple[str, str | None]], result: VerifyResult,
                       warn: Callable[[str], None]) -> None:
    """Rows of the configured preset whose candles changed since they were drawn."""
    if not os.path.isfile(settings.market_db_path):
        result.notes.append(f"market database {settings.market_db_path} not found: inputs not checked")
        return
    spec = runner.make_spec(settings)
    preset = preset_of(spec)
    market_conn = market.open_market(settings.market_db_path)
    try:
        plans = runner.plan(settings, filters, market_conn, conn, spec, warn)
    finally:
        market_conn.close()
    for p in plans:
        result.not_rendered += p.counts["new"]
        ids = index.indexed_values(conn, preset, p.series.symbol, p.series.interval,
                                   p.series.times[p.stale_input], column="id")
        for row_id in ids.values():
            if findings.get(row_id, ("ok",))[0] == "ok":
                findings[row_id] = ("stale", "candles changed since drawn")


def verify(settings: Settings, filters: Filters | None = None, *, deep: bool = False,
           progress: Progress = no_progress,
           warn: Callable[[str], None] = no_warn) -> VerifyResult:
    with runner.run_lock(settings, "verify"):
        conn = index.connect(settings.image_index_db, create=False)
        try:
            run_id = index.start_run(conn, "verify", {"deep": deep, **(filters or Filters()).__dict__})
            result = verify_index(conn, settings, filters or Filters(), deep, progress, warn)
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
    unrepairable: list[str] = field(default_factory=list)
    reindexed_from: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.unrepairable

    def as_dict(self) -> dict[str, Any]:
        return {"found": self.found, "redrawn": self.redrawn, "adopted": self.adopted, "removed": self.removed,
                "unrepairable": self.unrepairable, "reindexed_from": self.reindexed_from,
                "seconds": round(self.seconds, 3), "ok": self.ok}

    def text(self) -> str:
        lines = [f"unrepairable: {path}" for path in self.unrepairable]
        if self.reindexed_from:
            lines.append(f"damaged index moved aside to {self.reindexed_from}; rebuilt from the image files")
        found = ", ".join(f"{n} {k}" for k, n in self.found.items() if n) or "no problems"
        lines.append(f"repair: found {found}; re-drew {self.redrawn}, adopted {self.adopted}, "
                     f"removed {self.removed} files ({self.seconds:.2f} s)")
        return "\n".join(lines)


def _move_aside(path: str) -> str | None:
    if not os.path.exists(path):
        return None
    aside = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    return aside


def _spec_of_name(name: ImageName) -> chart.Spec | None:
    size = int(name.size_label.split("x")[-1])
    try:
        spec = chart.make_spec(chart.style_from_tag(name.file_tag), size, name.window_len, name.version,
                               jkx_height=size)
    except chart.ChartError:
        return None
    return spec if spec.size_label == name.size_label else None


def repair(settings: Settings, filters: Filters | None = None, *, reindex: bool = False,
           progress: Progress = no_progress,
           warn: Callable[[str], None] = no_warn) -> RepairResult:
    filters = filters or Filters()
    began = time.monotonic()
    result = RepairResult()
    with runner.run_lock(settings, "repair"):
        if reindex:
            result.reindexed_from = _move_aside(settings.image_index_db)
        elif not os.path.isfile(settings.image_index_db):
            raise MarketError(f"image index not found: {settings.image_index_db}; "
                              "run `repair --reindex` to rebuild it from the image files")
        conn = index.connect(settings.image_index_db)
        try:
            run_id = index.start_run(conn, "repair", {"reindex": reindex, **filters.__dict__})
            found = verify_index(conn, settings, filters, True, progress, warn)
            result.found = found.counts()
            for problem in found.problems:
                if problem.kind == "temp":
                    os.remove(os.path.join(settings.image_root_dir, problem.path))
                    result.removed += 1
            _redraw_and_adopt(conn, settings, filters, found, result, progress, warn)
            index.finish_run(conn, run_id, result.as_dict(), 0 if result.ok else 1)
        finally:
            conn.close()
    result.seconds = time.monotonic() - began
    return result


def _redraw_and_adopt(conn: sqlite3.Connection, settings: Settings, filters: Filters, found: VerifyResult,
                      result: RepairResult, progress: Progress, warn: Callable[[str], None]) -> None:
    where, params = _where(filters)
    clause = (where + " AND " if where else " WHERE ") + \
        "(status IN ('corrupt', 'stale') OR (status = 'missing' AND reason NOT IN ('gap', 'history')))"
    # (symbol, interval) -> spec -> [(end time, path, is orphan)]
    wanted: dict[tuple[str, str], dict[chart.Spec, list[tuple[int, str, bool]]]] = defaultdict(lambda: defaultdict(list))
    for symbol, interval, end_ms, style, size, window, version, path in conn.execute(
            "SELECT symbol, interval, end_open_time_ms, style_name, img_size_px, window_len, style_version, "
            "file_path FROM images" + clause, params):
        spec = _spec_of_row(style, size, window, version)
        if spec is None:
            result.unrepairable.append(f"{path} (unknown style {style!r})")
        else:
            wanted[(symbol, interval)][spec].append((end_ms, path, False))
    for problem in found.problems:
        if problem.kind != "orphan":
            continue
        name = parse_relative_path(problem.path)
        spec = _spec_of_name(name) if name else None
        if spec is None:
            _remove(settings, problem.path, result)
        else:
            wanted[(name.symbol, name.interval)][spec].append((name.end_open_time_ms, problem.path, True))
    if not wanted:
        return
    market_conn = market.open_market(settings.market_db_path)
    try:
        present = market.list_series(market_conn)
        draw_chunks, adopt_chunks = [], []
        for (symbol, interval), by_spec in sorted(wanted.items()):
            sid = present.get((symbol, interval))
            series = market.read_series(market_conn, symbol, interval, sid) if sid is not None else None
            for spec, items in by_spec.items():
                draw_chunks += _chunks(series, spec, [(e, p) for e, p, orphan in items if not orphan],
                                       settings, result)
                adopt_chunks += _chunks(series, spec, [(e, p) for e, p, orphan in items if orphan],
                                        settings, result, orphans=True)
    finally:
        market_conn.close()
    writer = BatchWriter(conn)
    with executors.executor(settings) as run:
        for rows in run(draw_chunk, draw_chunks):
            writer.add(rows)
            result.redrawn += sum(row.status == "ok" for row in rows)
        for rows, rejected in run(adopt_chunk, adopt_chunks):
            writer.add(rows)
            result.adopted += len(rows)
            for path in rejected:
                _remove(settings, path, result)
    writer.flush()


def _remove(settings: Settings, path: str, result: RepairResult) -> None:
    os.remove(os.path.join(settings.image_root_dir, path))
    result.removed += 1


def _chunks(series: Series | None, spec: chart.Spec, items: list[tuple[int, str]], settings: Settings,
            result: RepairResult, orphans: bool = False) -> list[Chunk]:
    """Chunks for the windows ending at the given times. A window the market cannot give any more is
    unrepairable; an orphan file of such a window is removed."""
    if not items:
        return []
    items = sorted(items)
    ends = np.array([end for end, _ in items], dtype=np.int64)
    times = series.times if series is not None else np.empty(0, np.int64)
    pos = np.searchsorted(times, ends)
    found = (pos < len(times)) & (times[np.minimum(pos, max(len(times) - 1, 0))] == ends) if len(times) \
        else np.zeros(len(ends), bool)
    first = pos - (spec.window_len - 1) - spec.history
    found &= first >= 0
    for (_, path), ok in zip(items, found):
        if ok:
            continue
        if orphans:
            _remove(settings, path, result)
        else:
            result.unrepairable.append(f"{path}: its candles are no longer in the market database")
    last = pos[found]
    if len(last) == 0:
        return []
    slots = grid_index(series.interval, times)
    gap = (slots[last] - slots[first[found]]) != (last - first[found])
    reasons = ["gap" if g else None for g in gap]
    return split_months(series, last, reasons, spec, preset_of(spec), os.path.abspath(settings.image_root_dir))
