"""The driver commits a row of a written file only after a syncfs that began once the row arrived.

Whether a file survives a power loss cannot be observed here, so the syncfs is replaced by one the
test holds and releases: what is observable is the order of the sync and the commit.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from image_cache.cache import durable, index
from image_cache.cache.index import Row
from image_cache.core.errors import StorageError


def _row(end: int, status: str = "ok") -> Row:
    return Row(symbol="BTCUSDT", interval="1h", end_open_time_ms=end, img_size_px=64, window_len=20,
               style_version=1, style_name="mike", spec_hash="s", file_path=f"BTCUSDT/1h/{end}.png", status=status)


def _committed(db: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT end_open_time_ms, status FROM images ORDER BY 1").fetchall()
    conn.close()
    return rows


class HeldSync:
    """A syncfs that returns only when the test says so, recording each call."""

    def __init__(self, fail: bool = False):
        self.calls: list[str] = []
        self.release = threading.Event()
        self.fail = fail

    def __call__(self, root: str) -> None:
        self.calls.append(root)
        self.release.wait(10)
        if self.fail:
            raise OSError(5, "Input/output error")


def test_rows_wait_for_the_sync_that_covers_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sync = HeldSync()
    monkeypatch.setattr(durable, "sync_tree", sync)
    db = tmp_path / "index.sqlite"
    writer = durable.SyncedWriter(index.connect(str(db)), str(tmp_path))
    writer.writer.max_rows = 1  # the batch writer would commit at once: only the sync holds rows back
    writer.add([_row(1), _row(2, "undrawable")])
    writer.add([_row(3)])
    assert _committed(db) == [(2, "undrawable")]  # a row without a file does not wait
    assert sync.calls == [str(tmp_path)]  # one sync at a time; row 3 waits for the next one
    sync.release.set()
    writer.flush()
    assert _committed(db) == [(1, "ok"), (2, "undrawable"), (3, "ok")]
    assert len(sync.calls) == 2


def test_a_failed_sync_commits_none_of_its_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    sync = HeldSync(fail=True)
    sync.release.set()
    monkeypatch.setattr(durable, "sync_tree", sync)
    db = tmp_path / "index.sqlite"
    writer = durable.SyncedWriter(index.connect(str(db)), str(tmp_path))
    writer.add([_row(1)])
    with pytest.raises(StorageError, match=f"cannot flush to disk {tmp_path}: .*Input/output error"):
        writer.flush()
    writer.writer.flush()
    assert _committed(db) == []
