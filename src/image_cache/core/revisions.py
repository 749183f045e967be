"""Change tracking in market.sqlite, so that a render reads only the candles that can have changed.

Shared by ingest (which installs it) and the renderer (which reads it, read-only). Three facts
together say, without reading a candle, which parts of a series changed since a given moment:

- **Inserts** (and `INSERT OR REPLACE`) get a rowid above every rowid before them, so the rows
  inserted since a moment are those above the largest rowid of that moment: a cheap rowid range.
  The row that held the largest rowid is remembered by its key, so a renumbering (VACUUM may
  renumber a table without an INTEGER PRIMARY KEY) cannot pass for "nothing new".
- **Updates** fire a trigger that gives the row's bucket (and its old bucket) a new random revision.
  Random, not a counter: a restored backup followed by other writes can never reproduce a revision.
- **Deletes** fire a trigger that counts them: a delete of the rows with the largest rowids would
  let later inserts reuse those rowids, so any delete since a moment means "anything may have changed".

A bucket is 2**31 ms of open time (about 24.9 days): an integer shift, which SQLite computes in a
trigger far more cheaply than a calendar month. Row triggers cost about 3-6 µs per row they fire for
(measured on SQLite 3.40), which is why inserts, the bulk of every ingest, carry none.

The triggers fire for every writer of the file, the upstream pipeline included. Ingest installs them
(`install`) with a new random epoch whenever any of them is missing, so that changes made while they
were absent can never be mistaken for no change. A market without them (one our ingest never opened
for writing) simply gets no skipping: the renderer reads it whole, as before.
"""

from __future__ import annotations

import secrets
import sqlite3
from dataclasses import dataclass

BUCKET_SHIFT = 31

_TABLES = """
CREATE TABLE IF NOT EXISTS candle_revisions (
    series_id INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    revision INTEGER NOT NULL,
    PRIMARY KEY (series_id, bucket)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS candle_changes (epoch INTEGER NOT NULL, deletes INTEGER NOT NULL)
"""

_BUMP = ("INSERT INTO candle_revisions VALUES ({row}.series_id, {row}.open_time >> 31, random()) "
         "ON CONFLICT DO UPDATE SET revision = excluded.revision;")

# The exact text SQLite keeps in sqlite_master: a trigger with any other text is not ours.
TRIGGERS = {
    "candle_revisions_update": "CREATE TRIGGER candle_revisions_update AFTER UPDATE ON candles BEGIN "
                               f"{_BUMP.format(row='OLD')} {_BUMP.format(row='NEW')} END",
    "candle_revisions_delete": "CREATE TRIGGER candle_revisions_delete AFTER DELETE ON candles BEGIN "
                               "UPDATE candle_changes SET deletes = deletes + 1; END",
}


@dataclass(frozen=True)
class Mark:
    """The market's change state at one moment (inside one read snapshot)."""

    epoch: int
    deletes: int
    max_rowid: int
    max_key: str  # "series_id:open_time" of the row holding max_rowid ("" when the table is empty)

    def encode(self) -> str:
        return f"{self.epoch}/{self.deletes}/{self.max_rowid}/{self.max_key}"

    @staticmethod
    def decode(text: str) -> Mark:
        epoch, deletes, max_rowid, key = text.split("/", 3)
        return Mark(int(epoch), int(deletes), int(max_rowid), key)


def _installed(conn: sqlite3.Connection) -> bool:
    found = dict(conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name IN (?, ?)",
                              tuple(TRIGGERS)).fetchall())
    has_epoch = conn.execute("SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'candle_changes'"
                             ).fetchone()[0] and conn.execute("SELECT count(*) FROM candle_changes").fetchone()[0] == 1
    return found == TRIGGERS and bool(has_epoch)


def install(conn: sqlite3.Connection) -> None:
    """Make sure the tables and triggers are in place (the caller holds the market's writer lock).
    Any missing or altered piece: all are re-created under a new epoch, in one transaction."""
    if _installed(conn):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in _TABLES.split(";"):
            conn.execute(statement)
        for name in TRIGGERS:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        for sql in TRIGGERS.values():
            conn.execute(sql)
        conn.execute("DELETE FROM candle_changes")
        conn.execute("INSERT INTO candle_changes VALUES (?, 0)", (secrets.randbits(62),))
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def mark(conn: sqlite3.Connection) -> Mark | None:
    """The market's change state now, or None when it does not track changes (no skipping then)."""
    if not _installed(conn):
        return None
    epoch, deletes = conn.execute("SELECT epoch, deletes FROM candle_changes").fetchone()
    try:
        row = conn.execute("SELECT rowid, series_id, open_time FROM candles ORDER BY rowid DESC LIMIT 1").fetchone()
    except sqlite3.OperationalError:  # a candles table WITHOUT ROWID: inserts cannot be told apart
        return None
    if row is None:
        return Mark(epoch, deletes, 0, "")
    return Mark(epoch, deletes, row[0], f"{row[1]}:{row[2]}")


def comparable(conn: sqlite3.Connection, then: Mark, now: Mark) -> bool:
    """Whether the changes between two marks can be told from rowids and revisions: same epoch, no
    delete since, and the row that held the largest rowid then still holds it under the same key."""
    if (then.epoch, then.deletes) != (now.epoch, now.deletes) or now.max_rowid < then.max_rowid:
        return False
    if then.max_rowid == 0:
        return True
    row = conn.execute("SELECT series_id, open_time FROM candles WHERE rowid = ?", (then.max_rowid,)).fetchone()
    return row is not None and f"{row[0]}:{row[1]}" == then.max_key


def inserted_buckets(conn: sqlite3.Connection, sid: int, since: Mark, now: Mark) -> set[int]:
    """Buckets of the series' rows inserted between two comparable marks."""
    return {row[0] for row in conn.execute(
        # `+`: by the rowid range (rows since the mark), never by scanning the series in the key.
        "SELECT DISTINCT open_time >> 31 FROM candles WHERE rowid > ? AND rowid <= ? AND +series_id = ?",
        (since.max_rowid, now.max_rowid, sid))}


def revisions(conn: sqlite3.Connection, sid: int) -> dict[int, int]:
    """bucket → revision of the series' buckets that ever saw an update."""
    return dict(conn.execute("SELECT bucket, revision FROM candle_revisions WHERE series_id = ?", (sid,)).fetchall())
