"""The index writer: grouped upserts keep the one-statement-per-row meaning, schema 4 keeps one index on
`images` (the key), an index written by schema 3 migrates in place with every row, and checkpoints
run beside the writer without losing or leaving anything."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest

from image_cache.cache import index, runner, verify
from image_cache.cache.index import Row
from image_cache.settings import Settings

END = 1_700_000_000_000


def settings(folder: Path) -> Settings:
    return Settings(market_db_path=str(folder / "market.sqlite"), image_index_db=str(folder / "image_cache.sqlite"),
                    image_root_dir=str(folder / "image-cache"), pairs=("BTCUSDT", "ETHUSDT"), intervals=("1h",),
                    img_size_px=64, window_len=20, start="2024-06-25", jobs=1)


def row(k: int, status: str = "ok", **values) -> Row:
    return Row(symbol="BTCUSDT", interval="1m", end_open_time_ms=END + 60_000 * k, img_size_px=64, window_len=20,
               style_version=1, style_name="mike", spec_hash="s" * 64, file_path=f"p/{k}.png", status=status,
               **values)


def by_key(conn: sqlite3.Connection) -> dict[int, sqlite3.Row]:
    return {r["end_open_time_ms"]: r for r in conn.execute("SELECT * FROM images")}


def index_shapes(db: Path) -> list[tuple[bool, list[str]]]:
    """(unique, columns) of every index on `images`."""
    with contextlib.closing(sqlite3.connect(db)) as conn:
        names = [(r[1], bool(r[2])) for r in conn.execute("PRAGMA index_list(images)")]
        return sorted((unique, [c[2] for c in conn.execute(f"PRAGMA index_info({name!r})")]) for name, unique in names)


@pytest.mark.parametrize("count", [1, index.UPSERT_GROUP - 1, index.UPSERT_GROUP, 2 * index.UPSERT_GROUP + 37])
def test_grouped_upsert_writes_every_row_by_name(tmp_path: Path, count: int):
    conn = index.connect(str(tmp_path / "i.sqlite"))
    index.upsert_rows(conn, [row(k, sha256=f"{k:064x}", file_size=k, pixel_hash_version=2) for k in range(count)])
    rows = by_key(conn)
    assert len(rows) == count
    for k in (0, count // 2, count - 1):
        got = rows[END + 60_000 * k]
        assert (got["sha256"], got["file_size"], got["file_path"], got["status"], got["pixel_hash_version"]) == \
               (f"{k:064x}", k, f"p/{k}.png", "ok", 2)
        assert got["created_utc"] == got["updated_utc"] != ""


def test_a_key_twice_ends_as_its_last_row_and_updates_keep_created(tmp_path: Path):
    conn = index.connect(str(tmp_path / "i.sqlite"))
    index.upsert_rows(conn, [row(k) for k in range(150)])
    conn.execute("UPDATE images SET created_utc = 'then'")
    # Within one grouped statement (5 then 7 in the first hundred), across a group and the rest (140),
    # and an update of a row written by an earlier call.
    again = [row(5, "stale", reason="first")] + [row(k) for k in range(200, 298)] + [row(5, "corrupt", reason="last")]
    index.upsert_rows(conn, again + [row(140, "missing", reason="gone"), row(140, "ok")])
    rows = by_key(conn)
    assert len(rows) == 150 + 98
    assert (rows[END + 60_000 * 5]["status"], rows[END + 60_000 * 5]["reason"]) == ("corrupt", "last")
    assert (rows[END + 60_000 * 140]["status"], rows[END + 60_000 * 140]["reason"]) == ("ok", None)
    assert rows[END + 60_000 * 5]["created_utc"] == "then" != rows[END + 60_000 * 5]["updated_utc"]
    assert rows[END + 60_000 * 200]["created_utc"] != "then"


def test_unknown_status_is_refused_and_the_batch_rolls_back(tmp_path: Path):
    conn = index.connect(str(tmp_path / "i.sqlite"))
    with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
        index.upsert_rows(conn, [row(k) for k in range(120)] + [row(999, "lost")])
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 0


def test_schema_4_keeps_one_index_on_images(tmp_path: Path):
    index.connect(str(tmp_path / "i.sqlite")).close()
    assert index_shapes(tmp_path / "i.sqlite") == [(True, list(index.KEY_COLUMNS))]


def test_a_v3_index_migrates_in_place_and_keeps_every_row(workdir: Path):
    s = settings(workdir)
    first = runner.render(s)
    assert first.drawn > 0
    db = workdir / "image_cache.sqlite"
    # The same rows (same ids) in a file as schema 3 writes it: migrations 1 to 3, nothing later.
    old = workdir / "v3.sqlite"
    with contextlib.closing(sqlite3.connect(old, isolation_level=None)) as conn:
        conn.executescript("".join(index.MIGRATIONS[v] for v in (1, 2, 3))
                           + f"PRAGMA user_version = 3; PRAGMA application_id = {index.APPLICATION_ID};")
        conn.execute("ATTACH ? AS new", (str(db),))
        columns = ", ".join(("id",) + index.IMAGE_COLUMNS)
        conn.executescript(f"BEGIN; INSERT INTO images ({columns}) SELECT {columns} FROM new.images; "
                           "INSERT INTO meta SELECT * FROM new.meta; INSERT INTO runs SELECT * FROM new.runs; "
                           "INSERT INTO month_digests SELECT * FROM new.month_digests; COMMIT; DETACH new;")
    os.replace(old, db)
    assert index.identify(str(db)) == "index"
    assert len(index_shapes(db)) == 3  # the key, file_path UNIQUE and images_status: really schema 3
    with contextlib.closing(sqlite3.connect(db)) as conn:
        before = conn.execute("SELECT * FROM images ORDER BY id").fetchall()
    assert len(before) == first.drawn + first.recorded

    assert runner.render(s).attempted == 0
    assert index.identify(str(db)) == "index"
    assert index_shapes(db) == [(True, list(index.KEY_COLUMNS))]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION == 5
        assert conn.execute("SELECT * FROM images ORDER BY id").fetchall() == before
    assert verify.verify(s, deep=True).ok


def test_checkpoints_run_beside_the_writer_and_are_handed_back(tmp_path: Path):
    """Past checkpoint_rows rows the WAL reaches the database file without the writer's help; close()
    leaves no thread behind and SQLite's own auto-checkpoint on again."""
    db = tmp_path / "i.sqlite"
    conn = index.connect(str(db))
    threads = threading.active_count()
    writer = index.BatchWriter(conn, max_rows=100, checkpoint_rows=1000)
    writer.add([row(k) for k in range(999)])
    assert writer.checkpointer is None and threading.active_count() == threads
    writer.add([row(k) for k in range(999, 3000)])
    assert writer.checkpointer is not None
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    writer.close()
    assert writer.checkpointer is None and threading.active_count() == threads
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == index.WAL_AUTOCHECKPOINT
    # The database file alone (no WAL) holds every row: close() waited for a last checkpoint.
    copy = tmp_path / "copy.sqlite"
    shutil.copyfile(db, copy)
    with contextlib.closing(sqlite3.connect(copy)) as alone:
        assert alone.execute("SELECT count(*) FROM images").fetchone()[0] == 3000
    assert conn.execute("SELECT count(*) FROM images").fetchone()[0] == 3000
    conn.close()


def test_a_new_index_has_8_kib_pages(tmp_path: Path):
    index.connect(str(tmp_path / "i.sqlite")).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "i.sqlite")) as conn:
        assert conn.execute("PRAGMA page_size").fetchone()[0] == index.PAGE_SIZE == 8192
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
