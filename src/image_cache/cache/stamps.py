"""Bucket stamps: what lets a nightly render skip, unread, the parts of a series that cannot have changed.

A stamp says: for this preset and these render settings, every window of one series ending in one
bucket (2**31 ms of open time, core/revisions.py) was found settled (no action due, every candle
closed), with these counts, when the market's revisions over the candles those windows draw were
these. A render walks a series' stamps from its start and skips every bucket whose stamp still holds;
it reads candles and index rows only from the first bucket whose stamp does not hold, and stamps again
what it then finds settled.

A stamp holds while all of these do (checked without reading a candle or an index row):

- the market tracks changes (core/revisions.py) and nothing made its changes untellable since the
  series was last stamped (same epoch, no delete, the same row at the top of the rowids);
- no row inserted into the market since then falls in the buckets the stamp covers, and their
  revisions (bumped by every update) are the ones the stamp recorded;
- no index row of the series was deleted since (counted by a trigger), none of its bucket was
  updated (a trigger drops the stamp), and none was inserted into its bucket (ids above the mark).

`verify` and `repair` never use stamps; `verify --deep` compares every row with its candles.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass, field

import numpy as np

from image_cache.cache.reconcile import ENGINE, GAP, HISTORY, NOTHING, OK, SeriesReconcile
from image_cache.cache.windows import member_of_sorted
from image_cache.core import revisions
from image_cache.core.grid import close_time_ms

SHIFT = revisions.BUCKET_SHIFT
COUNTS = ("up_to_date", "undrawable", "gap", "history")


def bucket_of(ms: int) -> int:
    return int(ms) >> SHIFT


def settings_key(spec_hash: str, start_ms: int, end_ms: int | None, stride: int, gap_policy: str) -> str:
    """What a stamp's verdict depends on besides the candles: the spec and the due range's settings."""
    return f"{spec_hash}|{start_ms}|{end_ms}|{stride}|{gap_policy}"


def _stamp(key: str, sid: int, bucket: int, lo: int | None, revs: dict[int, int]) -> str:
    covered = sorted((b, r) for b, r in revs.items() if (lo is None or b >= lo) and b <= bucket)
    return hashlib.sha256(f"{key}|{sid}|{bucket}|{lo}|{covered}".encode()).hexdigest()


@dataclass
class Skip:
    """What a series' valid stamps let a render skip: windows ending before `start_ms`."""

    start_ms: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    kept: tuple[int, int] = (0, 0)  # [first, end) buckets of the stamps that held
    revs: dict[int, int] = field(default_factory=dict)

    @property
    def windows(self) -> int:
        return sum(self.counts.values())


@dataclass(frozen=True)
class Marks:
    """The market's and the index's change state at the start of a run."""

    market: revisions.Mark
    index_deletes: int
    index_max_id: int

    def index_mark(self) -> str:
        return f"{self.index_deletes}/{self.index_max_id}"


def marks(market_conn: sqlite3.Connection, index_conn: sqlite3.Connection) -> Marks | None:
    """The run's marks; None when the market does not track changes (then nothing is skipped)."""
    market = revisions.mark(market_conn)
    if market is None:
        return None
    deletes = index_conn.execute("SELECT deletes FROM image_changes").fetchone()[0]
    max_id = index_conn.execute("SELECT max(id) FROM images").fetchone()[0] or 0
    return Marks(market, deletes, max_id)


def skip(market_conn: sqlite3.Connection, index_conn: sqlite3.Connection, now: Marks | None, preset: str,
         key: str, symbol: str, interval: str, sid: int, start_ms: int) -> Skip:
    """How much of a series (from `start_ms` on) its stamps let this run skip."""
    revs = revisions.revisions(market_conn, sid) if now is not None else {}
    nothing = Skip(start_ms, revs=revs)
    if now is None:
        return nothing
    row = index_conn.execute("SELECT market_mark, index_mark FROM series_marks WHERE preset = ? AND symbol = ? "
                             "AND interval = ?", (preset, symbol, interval)).fetchone()
    if row is None:
        return nothing
    then = revisions.Mark.decode(row[0])
    deletes, max_id = (int(v) for v in row[1].split("/"))
    if deletes != now.index_deletes or not revisions.comparable(market_conn, then, now.market):
        return nothing
    inserted = sorted(revisions.inserted_buckets(market_conn, sid, then, now.market))
    indexed = {r[0] for r in index_conn.execute(
        # `+`: by the id range (rows since the mark), never by scanning the series' part of the key.
        "SELECT DISTINCT end_open_time_ms >> 31 FROM images WHERE id > ? AND +symbol = ? AND +interval = ?",
        (max_id, symbol, interval))}
    stamps = {r[0]: r for r in index_conn.execute(
        f"SELECT bucket, stamp, lo, {', '.join(COUNTS)} FROM bucket_stamps WHERE symbol = ? AND interval = ? "
        "AND preset = ? ORDER BY bucket", (symbol, interval, preset))}

    def holds(b: int) -> bool:
        if b not in stamps or b in indexed:
            return False
        lo = stamps[b][2]
        if any((lo is None or x >= lo) and x <= b for x in inserted):
            return False
        return stamps[b][1] == _stamp(key, sid, b, lo, revs)

    first = b = bucket_of(start_ms)
    counts = dict.fromkeys(COUNTS, 0)
    while holds(b):
        for k, name in enumerate(COUNTS):
            counts[name] += stamps[b][3 + k]
        b += 1
    if b == first:
        return nothing
    return Skip(max(start_ms, b << SHIFT), counts, (first, b), revs)


def settled(rec: SeriesReconcile, skipped: Skip, key: str, sid: int, now_ms: int, window_len: int,
            history: int) -> list[tuple]:
    """Stamps (bucket, stamp, lo, counts...) of the buckets this reconcile judged and found settled:
    from the bucket where the run's judged windows begin (`skipped.start_ms`) to the bucket of the
    last candle."""
    from_ms = skipped.start_ms
    times = rec.series.times
    if len(times) == 0:
        return []
    from_start = rec.from_start
    # From the run's start on, empty buckets before the first candle included: a chain of stamps
    # that holds must begin at the bucket where the run begins.
    first_bucket = bucket_of(from_ms)
    last_bucket = bucket_of(int(times[-1]))
    if last_bucket < first_bucket:
        return []
    edges = np.arange(first_bucket, last_bucket + 2, dtype=np.int64) << SHIFT
    ends = rec.indexed.end_ms
    unsettled_rows = np.bincount(np.searchsorted(edges, ends[rec.row_action != NOTHING], side="right"),
                                 minlength=len(edges) + 1)[1:len(edges)]
    unsettled_new = np.bincount(np.searchsorted(edges, times[rec.new_last], side="right"),
                                minlength=len(edges) + 1)[1:len(edges)]
    due = np.zeros(len(ends), bool) if rec.due_ends is None else member_of_sorted(ends, rec.due_ends)
    settled_due = due & (rec.row_action == NOTHING)
    per = {
        "up_to_date": settled_due & (rec.indexed.state == OK),
        "undrawable": settled_due & (rec.indexed.state == ENGINE),
        "gap": due & (rec.row_desired == GAP),
        "history": due & (rec.row_desired == HISTORY),
    }
    row_bucket = np.searchsorted(edges, ends, side="right") - 1
    counts = {name: np.bincount(row_bucket[mask & (row_bucket >= 0)], minlength=len(edges))
              for name, mask in per.items()}
    candle_pos = np.searchsorted(times, edges)  # first candle at or after each bucket's start
    out = []
    for k in range(len(edges) - 1):
        b = first_bucket + k
        if unsettled_rows[k] or unsettled_new[k]:
            continue
        lo_idx, hi_idx = int(candle_pos[k]), int(candle_pos[k + 1])
        begin = max(lo_idx, int(np.searchsorted(times, from_ms)))
        if hi_idx > lo_idx:
            if close_time_ms(rec.series.interval, int(times[hi_idx - 1])) > now_ms:
                continue  # a candle still open: its window becomes due later
            j = begin - (window_len - 1) - history
            if j <= 0 and from_start:
                lo = None
            elif j < 0:
                continue  # not enough candles read to know what the bucket's windows draw
            else:
                lo = bucket_of(int(times[j]))
        else:
            lo = b
        out.append((b, _stamp(key, sid, b, lo, skipped.revs), lo, *(int(counts[n][k]) for n in COUNTS)))
    return out


@dataclass(frozen=True)
class Stamping:
    """What a render records about one series after planning it: the stamps that held (kept), the new
    ones, and the marks they were checked against."""

    preset: str
    symbol: str
    interval: str
    skipped: Skip
    stamps: list[tuple]
    now: Marks

    def write(self, conn: sqlite3.Connection) -> None:
        """Inside the caller's transaction: keep the stamps that held, replace the rest, and mark the
        series as stamped now (a stamp this run did not check is dropped: the new mark would no longer
        see the inserts made before it)."""
        first, end = self.skipped.kept
        series = (self.symbol, self.interval, self.preset)
        conn.execute("DELETE FROM bucket_stamps WHERE symbol = ? AND interval = ? AND preset = ? "
                     "AND NOT (bucket >= ? AND bucket < ?)", (*series, first, end))
        conn.executemany(f"INSERT INTO bucket_stamps VALUES (?, ?, ?, ?, ?, ?, {', '.join('?' * len(COUNTS))})",
                         ((self.symbol, self.interval, b, self.preset, *rest) for b, *rest in self.stamps))
        conn.execute("INSERT INTO series_marks VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET "
                     "market_mark = excluded.market_mark, index_mark = excluded.index_mark",
                     (self.preset, self.symbol, self.interval, self.now.market.encode(), self.now.index_mark()))
