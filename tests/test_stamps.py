"""Bucket stamps (cache/stamps.py, core/revisions.py): a render skips, unread, what cannot have changed,
and every kind of write to the market or the index since makes it read again what it touches."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from conftest import index_rows, tree_digest
from image_cache.cache import runner, verify
from image_cache.core import revisions
from image_cache.ingest.sample import build_sample
from image_cache.ingest.schema import connect_writer
from image_cache.settings import Settings

# 4h candles over 120 days: about five buckets of 2**31 ms each, all closed.
DAYS = 120


@pytest.fixture(scope="module")
def long_market(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long") / "market.sqlite"
    build_sample(str(path), symbols=["BTCUSDT", "ETHUSDT"], days=DAYS, seed=3)
    return path


def settings(folder: Path, **extra) -> Settings:
    values = dict(market_db_path=str(folder / "market.sqlite"), image_index_db=str(folder / "image_cache.sqlite"),
                  image_root_dir=str(folder / "image-cache"), pairs=("BTCUSDT", "ETHUSDT"), intervals=("4h",),
                  img_size_px=32, window_len=10, start="2024-01-01", jobs=1)
    return Settings(**{**values, **extra})


@pytest.fixture
def settled(tmp_path: Path, long_market: Path) -> Path:
    """A folder whose market was rendered twice: the second run found every bucket settled and stamped it."""
    shutil.copy(long_market, tmp_path / "market.sqlite")
    s = settings(tmp_path)
    assert runner.render(s).drawn > 0
    second = runner.render(s)
    assert second.attempted == 0 and second.unread == 0
    return tmp_path


def market(folder: Path) -> sqlite3.Connection:
    return sqlite3.connect(folder / "market.sqlite", isolation_level=None)


SID = "(SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id " \
      "WHERE s.symbol = 'BTCUSDT' AND i.code = '4h')"


def candle_times(folder: Path) -> list[int]:
    with market(folder) as conn:
        return [r[0] for r in conn.execute(f"SELECT open_time FROM candles WHERE series_id = {SID} ORDER BY 1")]


def same_as_a_fresh_render(folder: Path, tmp_path: Path) -> None:
    """The folder's images and ok rows equal those of one render from scratch over the same market."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with market(folder) as source, sqlite3.connect(fresh / "market.sqlite") as copy:
        source.backup(copy)  # the WAL's pages included
    runner.render(settings(fresh))
    assert tree_digest(folder / "image-cache") == tree_digest(fresh / "image-cache")
    assert index_rows(folder / "image_cache.sqlite", "WHERE status = 'ok'") == \
        index_rows(fresh / "image_cache.sqlite", "WHERE status = 'ok'")


def test_a_settled_market_is_not_read_again(settled: Path):
    s = settings(settled)
    again = runner.render(s)
    assert again.attempted == 0
    # Only the windows of the last bucket (its stamp is the newest) may be read; the rest come from stamps.
    assert again.unread > 0.7 * again.up_to_date
    dry = runner.render(s, dry_run=True)
    assert (dry.drawn, dry.up_to_date, dry.undrawable) == (0, again.up_to_date, again.undrawable)
    ok = len(index_rows(settled / "image_cache.sqlite", "WHERE status = 'ok'"))
    assert again.up_to_date == ok
    assert "settled windows counted from stamps" in again.text()


def test_an_update_by_another_writer_redraws_exactly_its_windows(settled: Path, tmp_path: Path):
    times = candle_times(settled)
    target = times[100]  # in an early bucket, long settled
    with market(settled) as conn:  # a plain SQLite write, as the upstream pipeline makes it
        conn.execute(f"UPDATE candles SET close = (high + low) / 2 WHERE series_id = {SID} AND open_time = ?",
                     (target,))
    result = runner.render(settings(settled))
    assert result.drawn == 10  # the windows of 10 candles that contain it
    same_as_a_fresh_render(settled, tmp_path)


def test_an_insert_into_a_gap_and_a_backfill_are_found(settled: Path, tmp_path: Path):
    times = candle_times(settled)
    with market(settled) as conn:
        row = conn.execute(f"SELECT * FROM candles WHERE series_id = {SID} AND open_time = ?", (times[50],)).fetchone()
        conn.execute(f"DELETE FROM candles WHERE series_id = {SID} AND open_time = ?", (times[50],))
    runner.render(settings(settled))
    runner.render(settings(settled))  # stamped again after the delete
    with market(settled) as conn:
        conn.execute(f"INSERT INTO candles VALUES ({', '.join('?' * len(row))})", row)  # the hole filled again
        conn.execute(f"INSERT INTO candles SELECT series_id, open_time - 86400000 * 30, open, high, low, close, "
                     f"volume, quote_asset_volume, trades, taker_buy_base_volume, taker_buy_quote_volume FROM candles "
                     f"WHERE series_id = {SID} AND open_time = ?", (times[0],))  # a backfill before the series
    runner.render(settings(settled))
    same_as_a_fresh_render(settled, tmp_path)


def test_a_restored_backup_is_not_taken_for_the_stamped_state(settled: Path, tmp_path: Path):
    times = candle_times(settled)
    with market(settled) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    backup = tmp_path / "backup.sqlite"
    shutil.copy(settled / "market.sqlite", backup)
    with market(settled) as conn:
        conn.execute(f"UPDATE candles SET volume = volume + 1 WHERE series_id = {SID} AND open_time = ?", (times[60],))
    runner.render(settings(settled))
    runner.render(settings(settled))
    # The backup comes back and gets another correction of the same candle: revisions are random, so
    # the bucket cannot carry the revision the stamp recorded.
    shutil.copy(backup, settled / "market.sqlite")
    with market(settled) as conn:
        conn.execute(f"UPDATE candles SET volume = volume + 2 WHERE series_id = {SID} AND open_time = ?", (times[60],))
    runner.render(settings(settled))
    same_as_a_fresh_render(settled, tmp_path)


def test_without_its_triggers_the_market_is_read_whole_until_ingest_reinstalls_them(settled: Path,
                                                                                     tmp_path: Path):
    times = candle_times(settled)
    with market(settled) as conn:
        conn.execute("DROP TRIGGER candle_revisions_update")
        conn.execute(f"UPDATE candles SET close = low WHERE series_id = {SID} AND open_time = ?", (times[30],))
    blind = runner.render(settings(settled))
    assert blind.unread == 0 and blind.drawn == 10
    runner.render(settings(settled))
    with market(settled) as conn:  # a change while the trigger is missing...
        conn.execute(f"UPDATE candles SET close = high WHERE series_id = {SID} AND open_time = ?", (times[31],))
    connect_writer(str(settled / "market.sqlite")).close()  # ...then ingest puts the trigger back
    with market(settled) as conn:
        assert revisions.mark(conn) is not None
    after = runner.render(settings(settled))
    assert after.unread == 0 and after.drawn == 10  # a new epoch: nothing stamped before it holds
    same_as_a_fresh_render(settled, tmp_path)


def test_index_rows_deleted_or_changed_by_hand_are_drawn_again(settled: Path, tmp_path: Path):
    with sqlite3.connect(settled / "image_cache.sqlite") as conn:
        conn.execute("DELETE FROM images WHERE id = (SELECT min(id) FROM images WHERE status = 'ok')")
    conn.close()
    assert runner.render(settings(settled)).drawn == 1
    runner.render(settings(settled))
    with sqlite3.connect(settled / "image_cache.sqlite") as conn:
        conn.execute("UPDATE images SET status = 'missing' WHERE id = (SELECT min(id) FROM images WHERE status = 'ok')")
    conn.close()
    assert runner.render(settings(settled)).drawn == 1
    same_as_a_fresh_render(settled, tmp_path)


def test_verify_findings_are_redrawn_by_the_next_render(settled: Path):
    rows = index_rows(settled / "image_cache.sqlite", "WHERE status = 'ok'")
    (settled / "image-cache" / rows[0][3]).unlink()
    assert not verify.verify(settings(settled)).ok
    assert runner.render(settings(settled)).drawn == 1
    assert verify.verify(settings(settled), deep=True).ok


def test_other_settings_do_not_use_the_stamps_and_a_dry_run_writes_none(settled: Path):
    other = runner.render(settings(settled, stride=2))
    assert other.unread == 0
    with sqlite3.connect(settled / "image_cache.sqlite") as conn:
        before = conn.execute("SELECT * FROM bucket_stamps ORDER BY 1, 2, 3, 4").fetchall()
    conn.close()
    assert runner.render(settings(settled), dry_run=True).unread == 0  # the stride run's stamps replaced them
    with sqlite3.connect(settled / "image_cache.sqlite") as conn:
        assert conn.execute("SELECT * FROM bucket_stamps ORDER BY 1, 2, 3, 4").fetchall() == before
    conn.close()


def test_a_market_our_ingest_never_wrote_is_read_whole(tmp_path: Path, long_market: Path):
    shutil.copy(long_market, tmp_path / "market.sqlite")
    with market(tmp_path) as conn:  # as the upstream pipeline leaves it: no change tracking
        conn.executescript("DROP TRIGGER candle_revisions_update; DROP TRIGGER candle_revisions_delete; "
                           "DROP TABLE candle_changes; DROP TABLE candle_revisions;")
    s = settings(tmp_path)
    first = runner.render(s)
    again = runner.render(s)
    assert again.attempted == 0 and again.unread == 0 and again.up_to_date == first.drawn
