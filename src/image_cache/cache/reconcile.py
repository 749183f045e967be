"""The reconciler: desired state (the market), recorded state (the index) → one action per window.

For one series and one preset it compares what the market says each window should have (an image
drawn from candles with a given input fingerprint, or no image: a gap under policy `skip`, too little
history) with the index's rows, and derives exactly one action per window. `render`, `verify` and
`repair` are thin drivers over it: render applies the draw and record actions to the windows its
filters select, verify records and reports what it finds, repair applies every action. What is on
disk (the third state) is checked by the drivers through cache/root.py.

`reconcile` is pure. Its one edge, shared by render and verify, is `reconcile_series` (read one series'
candles and index rows, reconcile them) and `record_findings` (record the rows found stale with the memo):
the desired/recorded/action logic lives in this module alone.

Input fingerprints are compared only for rows whose windows touch a month whose digest differs from
the memo; the memo may vouch only for months all of whose rows this run compared, and rows found
stale are recorded as such in the same step, so a later run can trust it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from image_cache.cache import index, market
from image_cache.cache.index import STATE_CODES, Indexed, preset_label, preset_of
from image_cache.cache.windows import (
    DueWindows,
    Series,
    due_windows,
    fingerprint,
    member_of_sorted,
    month_digests,
    touches_months,
    window_gaps,
    window_rows,
)
from image_cache.core.db import immediate
from image_cache.core.grid import month_index, now_ms, utc_now

if TYPE_CHECKING:
    from image_cache import chart
    from image_cache.cache import stamps  # stamps reads the actions: imported by name only
    from image_cache.settings import Settings

OK, STALE, CORRUPT, MISSING = (STATE_CODES[s] for s in ("ok", "stale", "corrupt", "missing"))
GAP, HISTORY, ENGINE = (STATE_CODES[s] for s in ("gap", "history", "engine"))
DRAWABLE = -1  # desired: an image (GAP and HISTORY stand for "no image, for this reason")

# Actions on indexed rows.
NOTHING = 0
DRAW = 1      # re-draw: the row is stale, corrupt, missing, or was undrawable and can be drawn now
RECORD = 2    # no image, and the row already has none: record the (new) reason
RETIRE = 3    # no image should exist (gap under skip, history): remove the file, record the reason
DROP = 4      # the window is no longer in the market: remove the file and the row
UNKNOWN = 5   # not judged: the run did not read this window's candles


@dataclass
class SeriesReconcile:
    """What one series needs for one preset. Row arrays align with `indexed` (sorted by end time)."""

    series: Series
    indexed: Indexed
    row_last: np.ndarray        # index into series of each row's window (-1: not in the market)
    row_desired: np.ndarray     # DRAWABLE, GAP or HISTORY
    row_action: np.ndarray
    row_reason: list[str | None]  # why each DRAW / RETIRE / DROP (for reports)
    newly_stale: np.ndarray     # bool per row: ok (or an engine refusal) until now, found stale in this run
    new_last: np.ndarray        # due windows without a row
    new_desired: np.ndarray     # their DRAWABLE / GAP / HISTORY
    row_gap: np.ndarray         # bool per row: drawn as is under policy render, record reason 'gap'
    new_gap: np.ndarray
    due_ends: np.ndarray | None    # end times of the due windows (None: no due range given)
    memo: dict[int, str] = field(default_factory=dict)  # month digests this run may vouch for
    from_start: bool = False    # the series was read from its first candle


def desired(series: Series, last: np.ndarray, window_len: int, history: int,
            gap_policy: str) -> tuple[np.ndarray, np.ndarray]:
    """(DRAWABLE / GAP / HISTORY, has a gap) for the windows ending at the indices `last`."""
    gap, short = window_gaps(series, last, window_len, history)
    want = np.full(len(last), DRAWABLE, dtype=np.int64)
    if gap_policy == "skip":
        want[gap] = GAP
    want[short] = HISTORY
    return want, gap


def reconcile(series: Series, from_start: bool, indexed: Indexed, memo: dict[int, str], window_len: int,
              history: int, gap_policy: str, due: DueWindows | None,
              recorded_fingerprints: Callable[[np.ndarray], dict[int, str | None]]) -> SeriesReconcile:
    """Derive the action of every indexed row, and of every due window without a row.

    `from_start`: the series was read from its first candle (else only windows whose candles were
    all read are judged). `recorded_fingerprints(row_ids)` gives the fingerprints the index holds.
    """
    times = series.times
    n = len(times)
    first_known = 0 if from_start else window_len - 1 + history
    known_from_ms = times[first_known] if first_known < n else np.iinfo(np.int64).max

    # Rows -> windows.
    end = indexed.end_ms
    pos = np.searchsorted(times, end)
    found = pos < n
    found[found] = times[pos[found]] == end[found]
    known = end >= known_from_ms
    in_range = found & known & (pos >= window_len - 1)
    row_last = np.where(in_range, pos, -1)
    row_desired = np.full(len(end), DRAWABLE, dtype=np.int64)
    row_gap = np.zeros(len(end), bool)
    if in_range.any():
        row_desired[in_range], row_gap[in_range] = desired(series, pos[in_range], window_len, history, gap_policy)
    # A window whose last candle exists but with fewer than window_len candles up to it has no image.
    short_series = found & known & (pos < window_len - 1)
    row_desired[short_series] = HISTORY

    state = indexed.state
    action = np.full(len(end), NOTHING, dtype=np.int64)
    reason: list[str | None] = [None] * len(end)
    action[~known] = UNKNOWN
    gone = known & ~found
    action[gone] = DROP
    for i in np.flatnonzero(gone).tolist():
        reason[i] = "window no longer in the market"

    judged = known & found
    no_image = judged & (row_desired != DRAWABLE)
    has_image = np.isin(state, (OK, STALE, CORRUPT, MISSING))
    retire = no_image & has_image
    action[retire] = RETIRE
    for i in np.flatnonzero(retire).tolist():
        reason[i] = "gap under policy skip" if row_desired[i] == GAP else "too little history"
    action[no_image & ~has_image & (state != row_desired)] = RECORD

    drawable = judged & (row_desired == DRAWABLE)
    # Rows not ok (or judged undrawable by the engine, or by policy before) need a drawing; ok rows
    # and engine refusals need one when their spec or their candles changed.
    action[drawable & np.isin(state, (STALE, CORRUPT, MISSING, GAP, HISTORY))] = DRAW
    spec_old = drawable & np.isin(state, (OK, ENGINE)) & ~indexed.spec_current
    action[spec_old] = DRAW
    for i in np.flatnonzero(spec_old).tolist():
        reason[i] = "drawn with another render spec"

    digests = month_digests(series)
    changed = {m for m, d in digests.items() if memo.get(m) != d}
    candidates = np.flatnonzero(drawable & np.isin(state, (OK, ENGINE)) & indexed.spec_current)
    if len(candidates) and changed:
        touched = touches_months(series, row_last[candidates], window_len, history, changed)
        candidates = candidates[touched]
        recorded = recorded_fingerprints(indexed.row_id[candidates])
        for i in candidates.tolist():
            now = fingerprint(series, window_rows(int(row_last[i]), window_len, history))
            if recorded.get(int(indexed.row_id[i])) != now:
                action[i] = DRAW
                reason[i] = "candles changed since drawn"
    # Recorded as stale with the memo, whether or not this run acts on them: the index never calls a
    # row ok once its candles changed, its window went, or its window may have no image.
    newly_stale = ((action == DRAW) & np.isin(state, (OK, ENGINE))) | (np.isin(action, (RETIRE, DROP)) & (state == OK))

    # Due windows without a row.
    if due is not None and len(due.last):
        t_due = times[due.last]
        has_row = member_of_sorted(t_due, end)
        new_last = due.last[~has_row]
        new_desired, new_gap = desired(series, new_last, window_len, history, gap_policy)
    else:
        new_last, new_desired, new_gap = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool))

    # Vouch only for months whose every window this run could judge.
    if from_start:
        vouched = digests
    else:
        boundary = month_index(int(times[first_known])) if first_known < n else None
        vouched = {m: d for m, d in digests.items() if boundary is not None and m > boundary}
    due_ends = None if due is None else times[due.last]
    return SeriesReconcile(series, indexed, row_last, row_desired, action, reason, newly_stale,
                           new_last, new_desired, row_gap, new_gap, due_ends, vouched, from_start)


@dataclass(frozen=True)
class DueRange:
    """Which windows are due: last candle closed by `now_ms`, inside [start_ms, end_ms), on the stride grid."""

    start_ms: int
    end_ms: int
    stride: int
    now_ms: int

    @staticmethod
    def of(settings: Settings) -> DueRange:
        now = now_ms()
        return DueRange(settings.start_ms, settings.end_ms or now, settings.stride, now)


def reconcile_series(market_conn: sqlite3.Connection, index_conn: sqlite3.Connection, spec: chart.Spec,
                     symbol: str, interval: str, sid: int, gap_policy: str, read_from_ms: int | None = None,
                     due: DueRange | None = None, trust_memo: bool = True) -> SeriesReconcile:
    """Read one series (from `read_from_ms` on, with the candles its first window needs; whole when
    None) and its index rows, and reconcile them; with `due`, also plan the due windows without a row.
    Without `trust_memo`, every row's fingerprint is compared, whatever the memo says (verify --deep)."""
    preset = preset_of(spec)
    need = spec.window_len + spec.history
    read_from = None if read_from_ms is None else market.read_start(market_conn, sid, read_from_ms, need)
    series = market.read_series(market_conn, symbol, interval, sid, read_from)
    windows = None if due is None else due_windows(series, spec.window_len, spec.history, due.stride,
                                                    due.start_ms, due.end_ms, due.now_ms)
    # Rows of windows before the first one whose candles were all read would only be "not judged".
    known = need - 1
    from_ms = None if read_from is None else int(series.times[known]) if known < len(series.times) else 2**62
    indexed = index.indexed_rows(index_conn, preset, symbol, interval, spec.spec_hash, from_ms)
    memo = index.read_month_digests(index_conn, preset_label(preset), symbol, interval) if trust_memo else {}
    fingerprints = lambda ids: {i: r["input_fingerprint"]  # noqa: E731
                                for i, r in index.values_by_id(index_conn, ids, ["input_fingerprint"]).items()}
    return reconcile(series, read_from is None, indexed, memo, spec.window_len, spec.history,
                               gap_policy, windows, fingerprints)


def record_findings(index_conn: sqlite3.Connection, spec: chart.Spec, rec: SeriesReconcile,
                    stamping: stamps.Stamping | None = None) -> None:
    """Record the rows found stale together with the memo that no longer re-checks them (one
    transaction: the memo never vouches for a row still called ok), and the series' bucket stamps."""
    stale = np.flatnonzero(rec.newly_stale)
    label = preset_label(preset_of(spec))
    now = utc_now()
    with immediate(index_conn):
        index_conn.executemany("UPDATE images SET status = 'stale', reason = ?, updated_utc = ? WHERE id = ?",
                               ((rec.row_reason[i], now, int(rec.indexed.row_id[i])) for i in stale.tolist()))
        index_conn.executemany(
            "INSERT INTO month_digests VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET digest = excluded.digest",
            ((label, rec.series.symbol, rec.series.interval, m, d) for m, d in rec.memo.items()))
        if stamping is not None:
            stamping.write(index_conn)
