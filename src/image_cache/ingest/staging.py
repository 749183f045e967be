"""Sorting a file's candles by time in bounded memory: a temporary SQLite table does the sorting.

Used when a streamed file's rows go back in time (or when a message needs the spacing of all its
rows): its rows are staged with their line numbers (and close times, for files that state them), then read back
in time order, a chunk at a time.
SQLite keeps the temporary table in its own file, so memory follows its page cache, not the file.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

import numpy as np

from image_cache.ingest.schema import CANDLE_COLUMNS, CANDLE_DTYPE

TABLE = "temp.staged_candles"
_COLUMNS = ", ".join(CANDLE_COLUMNS)
_ROW_DTYPE = np.dtype(CANDLE_DTYPE.descr + [("line", np.int64), ("close_ms", np.int64)])


class Staged:
    """A temporary table of one file's rows and their lines; dropped when the `with` block ends."""

    def __init__(self, conn: sqlite3.Connection, closes: bool = False):
        self.conn = conn
        self.closes = closes

    def __enter__(self) -> Staged:
        types = ", ".join(f"{c} {'INTEGER' if CANDLE_DTYPE[c].kind == 'i' else 'REAL'} NOT NULL"
                          for c in CANDLE_COLUMNS)
        self.conn.execute(f"CREATE TEMP TABLE staged_candles({types}, line INTEGER NOT NULL, "
                          "close_ms INTEGER NOT NULL, PRIMARY KEY(open_time, line)) WITHOUT ROWID")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.execute(f"DROP TABLE {TABLE}")

    def add(self, candles: np.ndarray, lines: np.ndarray, closes: np.ndarray | None = None) -> None:
        rows = np.zeros(len(candles), dtype=_ROW_DTYPE)
        for c in CANDLE_COLUMNS:
            rows[c] = candles[c]
        rows["line"] = lines
        if closes is not None:
            rows["close_ms"] = closes
        marks = ", ".join("?" * len(_ROW_DTYPE.names or ()))
        self.conn.executemany(f"INSERT INTO {TABLE}({_COLUMNS}, line, close_ms) VALUES ({marks})", rows.tolist())

    def in_time_order(self, rows: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None]]:
        """(candles, their lines, their close times when staged with closes) by open time, then line
        (a stable sort), `rows` at a time."""
        cursor = self.conn.execute(f"SELECT {_COLUMNS}, line, close_ms FROM {TABLE} ORDER BY open_time, line")
        for batch in iter(lambda: cursor.fetchmany(rows), []):
            staged = np.array(batch, dtype=_ROW_DTYPE)
            candles = np.empty(len(staged), dtype=CANDLE_DTYPE)
            for c in CANDLE_COLUMNS:
                candles[c] = staged[c]
            yield candles, staged["line"], staged["close_ms"] if self.closes else None

    def median_spacing(self) -> int:
        """np.median of the steps between the distinct open times (two or more), as an int."""
        count = self.conn.execute(f"SELECT COUNT(DISTINCT open_time) FROM {TABLE}").fetchone()[0]
        steps = count - 1
        middle = [row[0] for row in self.conn.execute(
            f"""SELECT step FROM (SELECT open_time - LAG(open_time) OVER (ORDER BY open_time) AS step
                                  FROM (SELECT DISTINCT open_time FROM {TABLE}))
                WHERE step IS NOT NULL ORDER BY step LIMIT ? OFFSET ?""", (2 - steps % 2, (steps - 1) // 2))]
        return int(sum(middle) / len(middle))

