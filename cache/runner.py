"""Render orchestration: lock, plan from the index, draw in workers, write the index in batches.

The main process reads the market (one snapshot), plans, and alone writes the index; workers
(cache/work.py) draw and write files. Files are written before their rows, so a crash leaves at
most files without rows, which repair adopts.
"""

from __future__ import annotations

import contextlib
from functools import partial
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import chart
from core.hooks import Progress, no_progress, no_warn
from cache import index, market
from cache.executors import Run, chunk_windows, executor
from cache.index import BatchWriter
from cache.windows import (DueWindows, Series, due_windows, fingerprint, month_digests, touches_months,
                           window_rows)
from cache.work import Chunk, WorkerError, base_row, draw_chunk, split_months
from config import Settings
from core.db import exclusive_lock
from core.errors import LockHeld, MarketError
from core.grid import INTERVAL_MS, check_symbol, now_ms

@contextlib.contextmanager
def run_lock(settings: Settings, command: str) -> Iterator[None]:
    """One render/verify/repair at a time per index; a second one fails at once (exit 75)."""
    with exclusive_lock(settings.image_index_db + ".lock", f"image_cache {command}", wait_seconds=0):
        yield


def make_spec(settings: Settings) -> chart.Spec:
    return chart.make_spec(settings.style_name, settings.img_size_px, settings.window_len,
                           settings.style_version, settings.jkx_height)


def preset_of(spec: chart.Spec) -> dict[str, Any]:
    """The index's key columns that name a preset (independent of the drawing code's version)."""
    return {"style_name": spec.name, "img_size_px": spec.height if spec.width != spec.height else spec.width,
            "window_len": spec.window_len, "style_version": spec.version}


def preset_label(preset: dict[str, Any]) -> str:
    return "{style_name}|{img_size_px}|w{window_len}|v{style_version}".format(**preset)


@dataclass
class Filters:
    """Which series a command covers (dates are settings: `--start`, `--end`)."""

    symbols: list[str] | None = None
    intervals: list[str] | None = None


@dataclass
class SeriesPlan:
    """What one series needs: windows to draw (with a reason), rows to record as missing."""

    series: Series
    draw: np.ndarray
    draw_reason: list[str | None]
    missing: list[tuple[int, str]]
    counts: dict[str, int]
    digests: dict[int, str]
    stale_input: list[int]  # windows drawn and ok, whose candles changed since


def select_series(conn, settings: Settings, filters: Filters, warn: Callable[[str], None]) -> list[tuple[str, str, int]]:
    """The (symbol, interval, series id) to draw: configured (or filtered) and present in the market."""
    present = market.list_series(conn)
    symbols = filters.symbols or list(settings.pairs)
    intervals = filters.intervals or list(settings.intervals)
    for symbol in symbols:
        check_symbol(symbol)
    for code in intervals:
        if code not in INTERVAL_MS:
            raise MarketError(f"unknown interval code {code!r}")
    absent = sorted(s for s in symbols if not any(p[0] == s for p in present))
    if absent:
        warn(f"not in the market database, skipped: {', '.join(absent)}")
    return [(s, iv, present[(s, iv)]) for s in symbols for iv in intervals if (s, iv) in present]


def plan_series(series: Series, indexed: index.Indexed, old_digests: dict[int, str], spec: chart.Spec,
                settings: Settings, start_ms: int, end_ms: int, now: int,
                recorded_fingerprints: Callable[[np.ndarray], dict[int, str | None]]) -> SeriesPlan:
    """Compare the due windows of a series with the index: what to draw, what to record as missing.

    Vectorised: a nightly run over a million indexed windows touches each in numpy, and computes
    input fingerprints only for windows in months whose digest changed.
    """
    due: DueWindows = due_windows(series, spec.window_len, spec.history, settings.stride, start_ms, end_ms, now)
    digests = month_digests(series)
    changed = {m for m, d in digests.items() if old_digests.get(m) != d}
    end_times = series.times[due.last]
    known = len(indexed.end_ms)
    pos = np.minimum(np.searchsorted(indexed.end_ms, end_times), max(known - 1, 0))
    has_row = (indexed.end_ms[pos] == end_times) if known else np.zeros(len(end_times), bool)
    ok = has_row & indexed.ok_current[pos] if known else has_row
    recorded_missing = has_row & indexed.gap_missing[pos] if known else has_row

    skip = due.short_history | (due.gap & (settings.gap_policy == "skip"))
    why = np.where(due.short_history, "history", "gap")
    record = skip & ~recorded_missing
    missing = list(zip(due.last[record].tolist(), why[record].tolist()))

    drawable = ~skip
    recheck = np.flatnonzero(drawable & ok & touches_months(series, due.last, spec.window_len, spec.history,
                                                            changed))
    recorded = recorded_fingerprints(end_times[recheck])
    changed_input = [i for i in recheck.tolist() if recorded.get(int(end_times[i])) !=
                     fingerprint(series, window_rows(int(due.last[i]), spec.window_len, spec.history))]
    stale_input = np.zeros(len(due.last), bool)
    stale_input[changed_input] = True
    to_draw = drawable & (~ok | stale_input)
    new = to_draw & (~has_row | recorded_missing)
    counts = dict(new=int(new.sum()), stale=int((to_draw & ~new).sum()), gap=int((skip & ~due.short_history).sum()),
                  history=int(due.short_history.sum()), up_to_date=int((drawable & ok & ~stale_input).sum()))
    draw = due.last[to_draw]
    reasons = [("gap" if g else None) for g in due.gap[to_draw].tolist()]
    return SeriesPlan(series, draw, reasons, missing, counts, digests, due.last[stale_input].tolist())


def read_margin_ms(interval: str, candles: int) -> int:
    """How far before `start` to read so that the first due window has all its candles."""
    return (candles + 1) * (31 * 86_400_000 if interval == "1mo" else INTERVAL_MS[interval])


def plan(settings: Settings, filters: Filters, market_conn, index_conn, spec: chart.Spec,
         warn: Callable[[str], None]) -> list[SeriesPlan]:
    start_ms = settings.start_ms
    now = now_ms()
    end_ms = settings.end_ms or now
    preset = preset_of(spec)
    plans = []
    for symbol, interval, sid in select_series(market_conn, settings, filters, warn):
        series = market.read_series(market_conn, symbol, interval, sid,
                                    start_ms - read_margin_ms(interval, spec.window_len + spec.history))
        indexed = index.indexed_rows(index_conn, preset, symbol, interval, spec.spec_hash)
        old = index.read_month_digests(index_conn, preset_label(preset), symbol, interval)
        plans.append(plan_series(series, indexed, old, spec, settings, start_ms, end_ms, now,
                                 partial(index.indexed_values, index_conn, preset, symbol, interval,
                                         column="input_fingerprint")))
    return plans


# ------------------------------------------------------------------------------------------ render

@dataclass
class RenderResult:
    dry_run: bool
    plan: dict[str, dict[str, int]] = field(default_factory=dict)
    drawn: int = 0
    missing: int = 0
    undrawable: int = 0
    up_to_date: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def images_per_second(self) -> float:
        return self.drawn / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "plan": self.plan, "drawn": self.drawn, "missing": self.missing,
                "undrawable": self.undrawable, "up_to_date": self.up_to_date,
                "seconds": round(self.seconds, 3), "images_per_second": round(self.images_per_second, 1),
                "error": self.error}

    def text(self) -> str:
        if self.dry_run:
            lines = ["series                new    stale    gap  history  up-to-date"]
            for name, c in self.plan.items():
                lines.append(f"{name:<20} {c['new']:>5} {c['stale']:>8} {c['gap']:>6} {c['history']:>8} "
                             f"{c['up_to_date']:>11}")
            total = sum(c["new"] + c["stale"] for c in self.plan.values())
            lines.append(f"would draw {total} images (dry run: nothing written)")
            return "\n".join(lines)
        if self.drawn == 0 and self.missing == 0 and self.error is None:
            return f"nothing to draw: {self.up_to_date} images up to date ({self.seconds:.2f} s)"
        text = (f"drawn {self.drawn}, up to date {self.up_to_date}, missing {self.missing} (gaps/history), "
                f"undrawable {self.undrawable}, {self.seconds:.2f} s, {self.images_per_second:.1f} images/s")
        return text


def render(settings: Settings, filters: Filters | None = None, *, dry_run: bool = False, limit: int | None = None,
           progress: Progress = no_progress, warn: Callable[[str], None] = no_warn) -> RenderResult:
    """Draw the due windows the index does not hold as ok with the current spec and input."""
    filters = filters or Filters()
    spec = make_spec(settings)
    began = time.monotonic()
    result = RenderResult(dry_run=dry_run)
    # A dry run writes nothing: no lock file, and no index file where there is none yet.
    lock = contextlib.nullcontext() if dry_run else run_lock(settings, "render")
    with lock, (contextlib.nullcontext(None) if dry_run else executor(settings)) as run:
        market_conn = market.open_market(settings.market_db_path)
        fresh = dry_run and not os.path.exists(settings.image_index_db)
        index_conn = index.connect(":memory:" if fresh else settings.image_index_db)
        try:
            plans = plan(settings, filters, market_conn, index_conn, spec, warn)
            market_conn.close()
            result.plan = {f"{p.series.symbol} {p.series.interval}": p.counts for p in plans}
            result.up_to_date = sum(p.counts["up_to_date"] for p in plans)
            if not dry_run:
                run_id = index.start_run(index_conn, "render", {**settings.__dict__, **filters.__dict__,
                                                                 "limit": limit})
                _draw_plans(plans, spec, settings, index_conn, run, result, limit, progress, warn)
                result.seconds = time.monotonic() - began
                index.finish_run(index_conn, run_id, result.as_dict(), 0 if result.ok else 1)
        finally:
            index_conn.close()
    result.seconds = time.monotonic() - began
    return result


def _draw_plans(plans: list[SeriesPlan], spec: chart.Spec, settings: Settings, index_conn, run: Run,
                result: RenderResult, limit: int | None, progress: Progress, warn: Callable[[str], None]) -> None:
    preset = preset_of(spec)
    # Absolute: workers (Dask ones especially) may run in another working directory.
    root = os.path.abspath(settings.image_root_dir)
    writer = BatchWriter(index_conn)
    budget = limit if limit is not None else None
    chunks: list[Chunk] = []
    complete: list[SeriesPlan] = []  # series whose whole plan runs in this render
    planned = sum(len(p.draw) for p in plans) if budget is None else min(budget, sum(len(p.draw) for p in plans))
    chunk_size = chunk_windows(planned, settings.workers)
    for p in plans:
        for last, why in p.missing:
            row = base_row(Chunk(spec, preset, root, p.series, np.empty(0, np.int64), ()), int(p.series.times[last]))
            row.reason = why
            row.input_fingerprint = fingerprint(p.series, window_rows(last, spec.window_len, spec.history))
            writer.add([row])
            result.missing += 1
        draw, reasons = p.draw, p.draw_reason
        if budget is not None:
            draw, reasons = draw[:budget], reasons[:budget]
            budget -= len(draw)
        if len(draw) == len(p.draw):
            complete.append(p)
        chunks.extend(split_months(p.series, draw, reasons, spec, preset, root, chunk_size))
    total = sum(len(c.last) for c in chunks)
    bar = iter(progress(range(total), total=total, desc="render", unit="img"))
    logged = time.monotonic()
    try:
        for rows in run(draw_chunk, chunks):
            writer.add(rows)
            for row in rows:
                next(bar, None)
                if row.status == "ok":
                    result.drawn += 1
                else:
                    result.undrawable += 1
            if time.monotonic() - logged > 10:
                warn(f"render: {result.drawn + result.undrawable}/{total} images")
                logged = time.monotonic()
    except Exception as exc:  # a failing worker: keep what is done, report the failure
        if isinstance(exc, (LockHeld, KeyboardInterrupt)):
            raise
        if isinstance(exc, WorkerError):
            writer.add(exc.rows)
            result.drawn += len(exc.rows)
        detail = str(exc) if isinstance(exc, WorkerError) else f"{type(exc).__name__}: {exc}"
        result.error = f"render stopped, a worker failed: {detail}"
        complete = []
    finally:
        writer.flush()
    for p in complete:
        index.write_month_digests(index_conn, preset_label(preset), p.series.symbol, p.series.interval, p.digests)
