"""Render orchestration: lock, plan from the index, draw in workers, write the index in batches.

The main process reads the market (one snapshot), plans, and alone writes the index; workers
(cache/work.py) draw and write files. Files are written before their rows, so a crash leaves at
most files without rows, which repair adopts.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np

from image_cache import chart
from image_cache.cache import index, market, stamps
from image_cache.cache.durable import SyncedWriter
from image_cache.cache.executors import Run, chunk_windows, executor
from image_cache.cache.index import IndexFileError, preset_label, preset_of, run_lock
from image_cache.cache.layout import temp_target
from image_cache.cache.market import Filters, select_series
from image_cache.cache.reconcile import (
    DRAW,
    DRAWABLE,
    DROP,
    ENGINE,
    GAP,
    HISTORY,
    OK,
    RECORD,
    RETIRE,
    DueRange,
    SeriesReconcile,
    reconcile_series,
    record_findings,
)
from image_cache.cache.root import Tree, claim
from image_cache.cache.windows import member_of_sorted
from image_cache.cache.work import (
    Chunk,
    WorkerError,
    base_rows,
    draw_chunk,
    image_paths,
    require_built,
    split_months,
)
from image_cache.core.errors import ConfigError, LockHeld, RootError
from image_cache.core.hooks import Progress, Warn, no_progress, no_warn
from image_cache.settings import Settings, make_spec


@dataclass
class SeriesPlan:
    """What render does for one series: windows to draw (with the reason recorded with each image),
    rows to record as having no image, files to retire."""

    rec: SeriesReconcile
    draw: np.ndarray
    draw_reason: list[str | None]
    record: list[tuple[int, str, bool]]  # (window end time, reason, whether to remove its file first)
    drop: np.ndarray  # ids of rows whose window left the market (in the run's time range)
    counts: dict[str, int]
    note: str | None = None
    stamping: stamps.Stamping | None = None


def plan_render(rec: SeriesReconcile, spec: chart.Spec, start_ms: int | None, end_ms: int) -> SeriesPlan:
    """Render's share of the reconciler's actions: draws of the due windows (its filters, range and
    stride), and the records, retirements and drops of rows in its range; the rest is left to repair."""
    series = rec.series
    ends = rec.indexed.end_ms
    in_range = (ends >= (start_ms if start_ms is not None else -(2**62))) & (ends < end_ms)
    due_rows = np.zeros(len(rec.row_action), bool)
    if rec.due_ends is not None:
        due_rows = member_of_sorted(rec.indexed.end_ms, rec.due_ends)
    new_draw = rec.new_desired == DRAWABLE
    row_draw = due_rows & (rec.row_action == DRAW)
    last = np.concatenate([rec.new_last[new_draw], rec.row_last[row_draw]])
    gaps = np.concatenate([rec.new_gap[new_draw], rec.row_gap[row_draw]])
    order = np.argsort(last, kind="stable")
    draw, gaps = last[order], gaps[order]
    reasons = ["gap" if g else None for g in gaps.tolist()]

    names = {GAP: "gap", HISTORY: "history"}
    record = [(int(t), names[int(w)], False) for t, w in zip(series.times[rec.new_last[~new_draw]],
                                                            rec.new_desired[~new_draw], strict=True)]
    for i in np.flatnonzero(in_range & np.isin(rec.row_action, (RECORD, RETIRE))).tolist():
        record.append((int(ends[i]), names[int(rec.row_desired[i])], bool(rec.row_action[i] == RETIRE)))
    state = rec.indexed.state
    settled = due_rows & (rec.row_action == 0)
    # Found stale and left for later: not the rows this run re-draws, retires or drops itself.
    handled = row_draw | (in_range & np.isin(rec.row_action, (RETIRE, DROP)))
    counts = dict(new=int(new_draw.sum()), stale=int(row_draw.sum()),
                  gap=int((rec.new_desired == GAP).sum() + (due_rows & (rec.row_desired == GAP)).sum()),
                  history=int((rec.new_desired == HISTORY).sum() + (due_rows & (rec.row_desired == HISTORY)).sum()),
                  undrawable=int((settled & (state == ENGINE)).sum()),
                  up_to_date=int((settled & (state == OK)).sum()),
                  marked_stale=int((rec.newly_stale & ~handled).sum()))
    note = None
    if len(series.times) < spec.window_len:
        note = (f"{series.symbol} {series.interval}: {len(series.times)} candles"
                f"{' from --start on' if start_ms is not None else ''}, fewer than the {spec.window_len}-candle "
                "window: no windows to draw")
    drop = rec.indexed.row_id[in_range & (rec.row_action == DROP)]
    return SeriesPlan(rec, draw, reasons, record, drop, counts, note)


def plan(settings: Settings, filters: Filters, market_conn, index_conn, spec: chart.Spec,
         warn: Warn) -> list[SeriesPlan]:
    """Each series' plan. Buckets whose stamps hold (cache/stamps.py) are skipped unread: the series
    is reconciled from the first bucket whose stamp does not, and what is then found settled is stamped."""
    due = DueRange.of(settings)
    label = preset_label(preset_of(spec))
    key = stamps.settings_key(spec.spec_hash, settings.start_ms, settings.end_ms, settings.stride,
                              settings.gap_policy)
    marks = stamps.marks(market_conn, index_conn)
    plans = []
    for symbol, interval, sid in select_series(market_conn, settings, filters, warn):
        skip = stamps.skip(market_conn, index_conn, marks, label, key, symbol, interval, sid, due.start_ms)
        rec = reconcile_series(market_conn, index_conn, spec, symbol, interval, sid, settings.gap_policy,
                               skip.start_ms, replace(due, start_ms=skip.start_ms))
        p = plan_render(rec, spec, skip.start_ms, due.end_ms)
        for name, count in skip.counts.items():
            p.counts[name] += count
        if marks is not None:
            found = stamps.settled(rec, skip, key, sid, due.now_ms, spec.window_len, spec.history)
            p.stamping = stamps.Stamping(label, symbol, interval, skip, found, marks)
        plans.append(p)
    return plans


@dataclass
class RenderResult:
    dry_run: bool
    plan: dict[str, dict[str, int]] = field(default_factory=dict)
    drawn: int = 0
    recorded: int = 0       # windows recorded as having no image (gap under skip, history)
    retired: int = 0        # images removed because their window may have none any more
    undrawable: int = 0     # windows the engine refuses (recorded once, then not re-attempted)
    refused: int = 0        # of those, refused in this run
    blocked: int = 0        # windows whose path holds a folder, pipe or link: not ours, left alone
    up_to_date: int = 0
    marked_stale: int = 0   # rows outside this run's range found stale (left to repair or a wider render)
    unread: int = 0         # settled windows counted from bucket stamps, their candles and rows not read
    notes: list[str] = field(default_factory=list)
    took_over: str | None = None  # said on stderr as it happens, and in the JSON
    lost_workers: list[str] = field(default_factory=list)  # Dask workers that left during the run
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def attempted(self) -> int:
        return self.drawn + self.recorded + self.retired + self.refused + self.blocked

    @property
    def images_per_second(self) -> float:
        return self.drawn / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "plan": self.plan, "drawn": self.drawn, "recorded": self.recorded,
                "retired": self.retired, "undrawable": self.undrawable, "refused": self.refused,
                "blocked": self.blocked, "up_to_date": self.up_to_date,
                "marked_stale": self.marked_stale, "unread": self.unread, "notes": self.notes,
                "took_over": self.took_over,
                "lost_workers": self.lost_workers, "seconds": round(self.seconds, 3),
                "images_per_second": round(self.images_per_second, 1), "error": self.error}

    def text(self) -> str:
        lines = list(self.notes)
        if self.dry_run:
            lines.append("series                new    stale    gap  history  undrawable  up-to-date")
            for name, c in self.plan.items():
                lines.append(f"{name:<20} {c['new']:>5} {c['stale']:>8} {c['gap']:>6} {c['history']:>8} "
                             f"{c['undrawable']:>11} {c['up_to_date']:>11}")
            lines.append(f"would draw {self.drawn} images (dry run: nothing written)")
        elif self.attempted == 0 and self.error is None:
            unread = f"; {self.unread} settled windows counted from stamps, not re-read" if self.unread else ""
            lines.append(f"nothing to draw: {self.up_to_date} images up to date, {self.undrawable} undrawable "
                         f"({self.seconds:.2f} s{unread})")
        else:
            lines.append(f"drawn {self.drawn}, up to date {self.up_to_date}, no image {self.recorded} "
                         f"(gaps/history), undrawable {self.undrawable}, retired {self.retired}, "
                         f"{self.seconds:.2f} s, {self.images_per_second:.1f} images/s")
        if self.blocked:
            lines.append(f"{self.blocked} images not drawn: a folder, pipe or link that is not ours holds their "
                         "path (left alone; verify lists them, and the next render draws them once it is gone)")
        if self.marked_stale:
            lines.append(f"{self.marked_stale} images outside this run's range were found stale and marked "
                         "(a render over their range, or repair, re-draws them)")
        return "\n".join(lines)


def render(settings: Settings, filters: Filters | None = None, *, dry_run: bool = False, limit: int | None = None,
           progress: Progress = no_progress, warn: Warn = no_warn) -> RenderResult:
    """Apply the reconciler's draw and record actions to the due windows of the configured preset."""
    filters = filters or Filters()
    if limit is not None and limit < 0:
        raise ConfigError(f"--limit must be 0 or more, got {limit}")
    spec = make_spec(settings)
    if not dry_run:
        require_built()  # here, not in a worker: one clear error, no window recorded as refused
    began = time.monotonic()
    result = RenderResult(dry_run=dry_run)
    # A dry run writes nothing: no lock file, and no index file where there is none yet.
    lock = contextlib.nullcontext() if dry_run else run_lock(settings, "render")
    with lock:
        market_conn = market.open_market(settings.market_db_path)
        fresh = dry_run and not os.path.exists(settings.image_index_db)
        index_conn = index.connect(":memory:" if fresh else settings.image_index_db)
        try:
            took_over = None  # a note when the root's former owner index is gone
            if not dry_run:
                took_over = claim(settings.image_root_dir, index.index_id(index_conn), settings.image_index_db)
                if took_over:
                    warn(took_over)
            plans = plan(settings, filters, market_conn, index_conn, spec, warn)
            market_conn.close()
            _limit(plans, limit)
            result.plan = {f"{p.rec.series.symbol} {p.rec.series.interval}": p.counts for p in plans}
            result.up_to_date = sum(p.counts["up_to_date"] for p in plans)
            result.undrawable = sum(p.counts["undrawable"] for p in plans)
            result.took_over = took_over
            result.notes = [p.note for p in plans if p.note]
            result.unread = sum(p.stamping.skipped.windows for p in plans if p.stamping is not None)
            if dry_run:
                result.drawn = sum(len(p.draw) for p in plans)
                result.marked_stale = sum(p.counts["marked_stale"] for p in plans)
            else:
                _write(plans, spec, settings, filters, limit, index_conn, result, began, progress, warn)
        except sqlite3.DatabaseError as exc:  # while reading both databases: whose error was it?
            if not index.is_its_error(index_conn, settings.image_index_db, exc):
                raise
            raise index.failure(settings.image_index_db, exc) from None
        finally:
            index_conn.close()
    result.seconds = time.monotonic() - began
    return result


def _write(plans: list[SeriesPlan], spec: chart.Spec, settings: Settings, filters: Filters, limit: int | None,
           index_conn: index.IndexConnection, result: RenderResult, began: float, progress: Progress,
           warn: Warn) -> None:
    """Draw and record the plans as one run of the index. The index failing under the run (its disk
    full, its file damaged, deleted or replaced) stops it with one line: never a success without rows."""
    try:
        run_id = index.start_run(index_conn, "render", {**settings.__dict__, **filters.__dict__, "limit": limit})
        # Nothing to draw (a nightly no-op): no worker pool or cluster to start and stop.
        drawing = any(len(p.draw) for p in plans)
        with executor(settings if drawing else replace(settings, jobs=1, executor="local"), warn,
                      result.lost_workers) as run:
            _apply(plans, spec, settings, index_conn, run, result, progress, warn)
        if result.lost_workers:
            drawn = (path for p in plans for path in image_paths(
                spec, p.rec.series.symbol, p.rec.series.interval, p.rec.series.times[p.draw]))
            remove_lost_temps(settings.image_root_dir, drawn, len(result.lost_workers), warn)
        index_conn.check_file()
        result.seconds = time.monotonic() - began
        index.finish_run(index_conn, run_id, result.as_dict(), 0 if result.ok else 1)
    except sqlite3.Error as exc:
        raise index.failure(settings.image_index_db, exc) from None


def remove_lost_temps(root: str, drawn_paths: Iterable[str], lost: int, warn: Warn) -> None:
    """A Dask worker lost mid-write leaves the temp file of the image it was writing; Dask ran its chunk
    again elsewhere. Once the run's chunks are done, under the run's lock, a temp file named for an image
    this run drew is a lost worker's: removed, as repair would, so that a run that ends well leaves nothing
    verify must flag. Any other file is left alone, and one that cannot be removed is said, not fatal."""
    drawn: dict[str, set[str]] = {}  # folder -> the images this run drew there
    for path in drawn_paths:
        folder, _, name = path.rpartition("/")
        drawn.setdefault(folder, set()).add(name)
    removed, failed = 0, []
    with Tree(root) as tree:
        for kind, path in list(tree.walk(sorted(drawn))):
            folder, _, target = temp_target(path).rpartition("/")
            if kind != "temp" or target not in drawn.get(folder, ()):
                continue
            try:
                removed += tree.remove(path)
            except RootError as exc:
                failed.append(str(exc))
    workers = f"the lost worker{'s' * (lost != 1)}"
    if removed:
        warn(f"removed {removed} temporary file{'s' * (removed != 1)} left by {workers}")
    for why in failed:
        warn(f"a temporary file left by {workers} stays (repair removes it): {why}")


def tally(result: RenderResult, rows: list) -> None:
    """Count a chunk's rows by what they are: drawn (a file), blocked (its path held by something not
    ours), or refused by the engine (undrawable)."""
    for row in rows:
        if row.status == "ok":
            result.drawn += 1
        elif row.status == "missing":
            result.blocked += 1
        else:
            result.undrawable += 1
            result.refused += 1


def _limit(plans: list[SeriesPlan], limit: int | None) -> None:
    """Keep the first `limit` windows to draw, series by series (records are cheap and always kept)."""
    if limit is None:
        return
    for p in plans:
        p.draw, p.draw_reason = p.draw[:limit], p.draw_reason[:limit]
        limit -= len(p.draw)


def _apply(plans: list[SeriesPlan], spec: chart.Spec, settings: Settings, index_conn, run: Run,
           result: RenderResult, progress: Progress, warn: Warn) -> None:
    preset = preset_of(spec)
    # Absolute: workers (Dask ones especially) may run in another working directory.
    root = os.path.abspath(settings.image_root_dir)
    tree = Tree(root)
    writer = SyncedWriter(index_conn, root)
    chunk_size = chunk_windows(sum(len(p.draw) for p in plans), settings.workers)
    chunks: list[Chunk] = []
    for p in plans:
        record_findings(index_conn, spec, p.rec, p.stamping)
        result.marked_stale += p.counts["marked_stale"]
        series = p.rec.series
        rows = base_rows(Chunk(spec, preset, root, series, np.empty(0, np.int64), ()),
                         np.array([end for end, _, _ in p.record], np.int64))
        for row, (_, why, retire) in zip(rows, p.record, strict=True):
            row.status, row.reason = "undrawable", why
            if retire:  # file first, then row: a crash in between leaves a row repair settles
                tree.remove(row.file_path)
                result.retired += 1
            else:
                result.recorded += 1
            writer.add([row])
        # Windows gone from the market: file first, then row.
        for gone in index.values_by_id(index_conn, p.drop, ["file_path"]).values():
            tree.remove(gone["file_path"])
        index.delete_rows(index_conn, p.drop.tolist())
        result.retired += len(p.drop)
        chunks.extend(split_months(series, p.draw, p.draw_reason, spec, preset, root, chunk_size))
    writer.flush()
    total = sum(len(c.last) for c in chunks)
    bar = iter(progress(range(total), total=total, desc="render", unit="img"))
    try:
        for rows in run(partial(draw_chunk, sync=settings.executor == "dask"), chunks):
            writer.add(rows)
            tally(result, rows)
            for _ in rows:
                next(bar, None)
    except Exception as exc:  # a failing worker: keep what is done, report the failure
        if isinstance(exc, (LockHeld, IndexFileError, sqlite3.Error)):  # the index failed, not a worker
            raise
        if isinstance(exc, WorkerError):
            writer.add(exc.rows)
            tally(result, exc.rows)
        detail = str(exc) if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        result.error = f"render stopped, a worker failed: {detail}"
    finally:
        writer.close()
