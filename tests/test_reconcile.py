"""Regressions of the reconciler issue: every state settles, verify is truthful and repeatable,
every preset is covered. Each case failed on the code before the reconciler."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from image_cache.cache import index, runner, verify
from image_cache.cache.market import Filters
from image_cache.settings import Settings

HOUR = 3_600_000


def settings(folder: Path, **extra) -> Settings:
    values = dict(market_db_path=str(folder / "market.sqlite"), image_index_db=str(folder / "image_cache.sqlite"),
                  image_root_dir=str(folder / "image-cache"), pairs=("BTCUSDT", "ETHUSDT"), intervals=("1h", "4h"),
                  img_size_px=64, window_len=20, start="2024-06-25", jobs=1)
    return Settings(**{**values, **extra})


def _market(folder: Path, sql: str, *args) -> int:
    with sqlite3.connect(folder / "market.sqlite") as conn:
        count = conn.execute(sql, args).rowcount
    conn.close()
    return count


SERIES = """(SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
             WHERE s.symbol = ? AND i.code = ?)"""


def correct(folder: Path, symbol: str, interval: str, open_time: int) -> None:
    assert _market(folder, f"UPDATE candles SET close = (high + low) / 2, volume = volume + 1 "
                           f"WHERE series_id = {SERIES} AND open_time = ?", symbol, interval, open_time) == 1


def rows(folder: Path, where: str = "") -> list[tuple]:
    with sqlite3.connect(folder / "image_cache.sqlite") as conn:
        out = conn.execute(f"SELECT end_open_time_ms, status, reason, style_name FROM images {where} "
                           "ORDER BY style_name, end_open_time_ms").fetchall()
    conn.close()
    return out


def ok_ends(folder: Path, symbol="BTCUSDT", interval="1h") -> list[int]:
    return [r[0] for r in rows(folder, f"WHERE symbol = '{symbol}' AND interval = '{interval}' AND status = 'ok'")]


@pytest.mark.parametrize("partial", [{"end": "2024-06-26"}, {"stride": 5}, {"start": "2024-06-30T12:00"}])
def test_partial_run_never_hides_a_change(workdir: Path, partial: dict):
    """1. A render limited by --end/--stride/--start must not vouch for windows it did not compare."""
    s = settings(workdir)
    runner.render(s)
    ends = ok_ends(workdir)
    target = ends[-25]  # in the last days: outside `end`, off most of the stride grid, before a late start
    correct(workdir, "BTCUSDT", "1h", target)
    part = runner.render(dataclasses.replace(s, **partial))
    full = runner.render(s)
    assert part.drawn + full.drawn == 20, (part.as_dict(), full.as_dict())
    result = verify.verify(s, deep=True)
    assert result.ok, result.as_dict()


def test_verify_is_repeatable_and_repair_settles(workdir: Path):
    """2. verify reports a correction the same every time; repair re-draws; then verify is clean."""
    s = settings(workdir)
    runner.render(s)
    correct(workdir, "BTCUSDT", "1h", ok_ends(workdir)[40])
    first, second = verify.verify(s), verify.verify(s)
    assert first.counts()["stale"] == second.counts()["stale"] == 20
    assert [p.path for p in first.problems] == [p.path for p in second.problems]
    report = verify.repair(s)
    assert report.redrawn == 20
    assert verify.verify(s, deep=True).ok


def test_deep_verify_trusts_no_memo(workdir: Path):
    """A row whose recorded input fingerprint does not match its window's candles is stale, even in a
    month the memo vouches for: plain verify trusts the memo, --deep compares every row."""
    s = settings(workdir)
    runner.render(s)
    assert verify.verify(s).ok  # a whole-series pass: the memo now vouches for every month
    end = ok_ends(workdir)[30]
    with sqlite3.connect(workdir / "image_cache.sqlite") as conn:
        conn.execute("UPDATE images SET input_fingerprint = 'drawn-from-other-candles' WHERE symbol = 'BTCUSDT' "
                     "AND interval = '1h' AND end_open_time_ms = ?", (end,))
    conn.close()
    assert verify.verify(s).ok
    deep = verify.verify(s, deep=True)
    assert [(p.kind, p.detail) for p in deep.problems] == [("stale", "candles changed since drawn")]
    assert verify.repair(s).redrawn == 1
    assert verify.verify(s, deep=True).ok


def _flatten(folder: Path, start: int, count: int) -> None:
    for k in range(count):
        _market(folder, f"UPDATE candles SET open = 10, high = 10, low = 10, close = 10 "
                        f"WHERE series_id = {SERIES} AND open_time = ?", "BTCUSDT", "1h", start + k * HOUR)


def test_undrawable_windows_settle(workdir: Path):
    """3. A flat window under jkx is recorded once as undrawable: render stops re-attempting it, the
    dry run agrees, verify and repair count it without failing."""
    s = settings(workdir, style_name="jkx", window_len=5, pairs=("BTCUSDT",), intervals=("1h",))
    _flatten(workdir, 1719446400000, 12)  # 2024-06-27T00:00Z, 12 flat hours
    first = runner.render(s)
    assert first.undrawable > 0
    again = runner.render(s)
    assert first.refused == first.undrawable
    assert again.attempted == 0 and again.undrawable == first.undrawable and again.refused == 0
    assert "nothing to draw" in again.text()
    plan = runner.render(s, dry_run=True)
    assert plan.drawn == 0
    result = verify.verify(s, deep=True)
    assert result.ok and result.no_image.get("engine") == first.undrawable
    assert verify.repair(s).redrawn == 0
    assert verify.verify(s, deep=True).ok
    # A correction of a flat candle makes its windows drawable again.
    correct(workdir, "BTCUSDT", "1h", 1719446400000 + 11 * HOUR)
    assert runner.render(s).drawn > 0


def test_verify_covers_every_preset(workdir: Path):
    """4. Staleness from changed candles is found for every preset in the index, not only the configured one."""
    mike = settings(workdir, pairs=("BTCUSDT",), intervals=("1h",))
    jkx = dataclasses.replace(mike, style_name="jkx", window_len=20)
    runner.render(mike)
    runner.render(jkx)
    correct(workdir, "BTCUSDT", "1h", ok_ends(workdir)[60])
    result = verify.verify(mike)
    stale_styles = {r[3] for r in rows(workdir, "WHERE status = 'stale'")}
    assert stale_styles == {"mike", "jkx"}
    assert result.counts()["stale"] == 20 + 39  # jkx draws 20 candles with 19 of history
    verify.repair(mike)
    assert verify.verify(jkx, deep=True).ok


def _delete(folder: Path, open_time: int) -> None:
    assert _market(folder, f"DELETE FROM candles WHERE series_id = {SERIES} AND open_time = ?",
                   "BTCUSDT", "1h", open_time) == 1


def test_gap_policy_switch_leaves_nothing_unreported(workdir: Path):
    """5. Images drawn over a gap under policy render go when the policy becomes skip."""
    hole = 1719446400000 + 5 * HOUR
    _delete(workdir, hole)
    drawn = settings(workdir, pairs=("BTCUSDT",), intervals=("1h",), gap_policy="render")
    runner.render(drawn)
    gap_images = rows(workdir, "WHERE status = 'ok' AND reason = 'gap'")
    assert len(gap_images) == 19
    skip = dataclasses.replace(drawn, gap_policy="skip")
    found = verify.verify(skip)
    assert found.counts()["stale"] == 19
    result = runner.render(skip)
    assert result.retired == 19
    assert not any((workdir / "image-cache" / p.path).exists() for p in found.problems)
    assert verify.verify(skip, deep=True).ok
    assert len(rows(workdir, "WHERE status = 'undrawable' AND reason = 'gap'")) == 19


def test_window_after_start_whose_history_crosses_a_gap_is_recorded(workdir: Path):
    """6. The first window after --start is judged even when a gap lies in the candles before it."""
    start = 1719532800000  # 2024-06-28T00:00Z
    _delete(workdir, start - 3 * HOUR)
    s = settings(workdir, pairs=("BTCUSDT",), intervals=("1h",), start="2024-06-28")
    runner.render(s)
    first = rows(workdir, f"WHERE end_open_time_ms = {start}")
    assert first == [(start, "undrawable", "gap", "mike")]


def test_series_shorter_than_the_window_says_why(workdir: Path):
    """7. A series with fewer candles than the window draws nothing and says so."""
    s = settings(workdir, pairs=("BTCUSDT",), intervals=("4h",), window_len=150, img_size_px=450)
    result = runner.render(s)
    assert result.drawn == 0
    assert any("fewer than the 150-candle window" in note for note in result.notes), result.notes
    assert "fewer than the 150-candle window" in result.text()


def test_nothing_to_draw_only_when_nothing_was_attempted(workdir: Path):
    hole = 1719446400000 + 5 * HOUR
    _delete(workdir, hole)
    s = settings(workdir, pairs=("BTCUSDT",), intervals=("1h",))
    first = runner.render(s)
    assert first.recorded == 19 and "nothing to draw" not in first.text()
    assert "nothing to draw" in runner.render(s).text()


def test_limit_and_dry_run_agree(workdir: Path):
    s = settings(workdir, pairs=("BTCUSDT",), intervals=("1h",))
    assert runner.render(s, dry_run=True, limit=7).drawn == 7
    assert runner.render(s, limit=7).drawn == 7
    with pytest.raises(Exception, match="--limit"):
        runner.render(s, limit=-1)


def test_old_index_migrates_in_place(workdir: Path):
    """An index written by the previous version (schema 1) opens, migrates, and keeps its rows."""
    s = settings(workdir, pairs=("BTCUSDT",), intervals=("1h",))
    runner.render(s)
    db = workdir / "image_cache.sqlite"
    with sqlite3.connect(db) as conn:  # make it look like a version-1 index
        conn.executescript("""
            PRAGMA application_id = 0; PRAGMA user_version = 1; DROP TABLE meta;
            DROP TRIGGER images_update_stamps; DROP TRIGGER images_delete_count;
            DROP TABLE bucket_stamps; DROP TABLE series_marks; DROP TABLE image_changes;
            ALTER TABLE images DROP COLUMN pixel_hash_version;
            CREATE TABLE images_v1 AS SELECT * FROM images; DROP TABLE images;
            ALTER TABLE images_v1 RENAME TO images;
            UPDATE images SET status = 'missing', reason = 'gap' WHERE status = 'undrawable';""")
    conn.close()
    (workdir / "image-cache" / ".image_cache_root").unlink()
    before = rows(workdir, "WHERE status = 'ok'")
    assert runner.render(s).attempted == 0
    assert rows(workdir, "WHERE status = 'ok'") == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == index.SCHEMA_VERSION
    conn.close()
    assert verify.verify(s, deep=True).ok


def test_filters_are_validated_before_any_file_call(workdir: Path, tmp_path: Path):
    s = settings(workdir)
    runner.render(dataclasses.replace(s, pairs=("BTCUSDT",), intervals=("1h",)))
    victim = workdir / "victim"
    victim.mkdir()
    (victim / "keep.png").write_bytes(b"x")
    with pytest.raises(Exception, match="invalid symbol"):
        verify.repair(s, Filters(symbols=["../victim"]))
    assert (victim / "keep.png").read_bytes() == b"x"
