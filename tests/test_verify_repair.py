"""Each kind of damage: verify finds it (exit 1, status, reason), repair undoes it with identical bytes."""

from __future__ import annotations

import io
import json
import sqlite3
from pathlib import Path

import pytest
from PIL import Image

from conftest import index_rows, run_cli, tree_digest


def _verify(folder: Path, *args: str) -> tuple[int, dict]:
    result = run_cli(folder, "verify", "--config", "image_cache.toml", "--json", *args)
    return result.returncode, json.loads(result.stdout) if result.stdout else {"stderr": result.stderr}


def _repair(folder: Path, *args: str) -> dict:
    result = run_cli(folder, "repair", "--config", "image_cache.toml", "--json", *args)
    assert result.returncode == 0, result.stderr + result.stdout
    return json.loads(result.stdout)


def _png(size: tuple[int, int], colour: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", size, colour).save(out, format="PNG")
    return out.getvalue()


def _some_image(folder: Path) -> Path:
    path = index_rows(folder / "image_cache.sqlite", "WHERE status = 'ok'")[3][3]
    return folder / "image-cache" / path


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


DAMAGE = {
    # kind: (damage, status verify --deep records, fast mode sees it too)
    "deleted": (lambda p: p.unlink(), "missing", True),
    "truncated": (lambda p: p.write_bytes(p.read_bytes()[:100]), "corrupt", True),
    "zero bytes": (lambda p: p.write_bytes(b""), "corrupt", True),
    "one byte flipped": (_flip, "corrupt", False),
    "other valid png": (lambda p: p.write_bytes(_png((128, 128), 7).ljust(p.stat().st_size, b"\0")[:p.stat().st_size]),
                        "corrupt", False),
    "wrong dimensions": (lambda p: p.write_bytes(_png((64, 32), 200)), "corrupt", True),
}


@pytest.mark.parametrize("kind", sorted(DAMAGE))
def test_file_damage_found_and_repaired(rendered: Path, kind: str):
    damage, status, fast_sees = DAMAGE[kind]
    original = tree_digest(rendered / "image-cache")
    victim = _some_image(rendered)
    damage(victim)
    code, fast = _verify(rendered)
    assert (code, fast["counts"][status] if fast_sees else 0) == ((1, 1) if fast_sees else (0, 0))
    code, deep = _verify(rendered, "--deep")
    assert code == 1 and deep["counts"][status] == 1
    assert deep["problems"][0]["path"] == str(victim.relative_to(rendered / "image-cache"))
    rows = index_rows(rendered / "image_cache.sqlite",
                      f"WHERE status = '{status}' AND reason NOT IN ('gap', 'history')")
    assert [r[3] for r in rows] == [deep["problems"][0]["path"]]
    report = _repair(rendered)
    assert report["redrawn"] == 1
    assert _verify(rendered, "--deep")[0] == 0
    assert tree_digest(rendered / "image-cache") == original


def test_orphan_matching_a_render_is_adopted(rendered: Path):
    """A crash between file and row leaves a file without a row: repair adopts it."""
    original = tree_digest(rendered / "image-cache")
    rows_before = index_rows(rendered / "image_cache.sqlite")
    victim = _some_image(rendered)
    with sqlite3.connect(rendered / "image_cache.sqlite") as conn:
        conn.execute("DELETE FROM images WHERE file_path = ?", (str(victim.relative_to(rendered / "image-cache")),))
    code, found = _verify(rendered)
    assert code == 1 and found["counts"]["orphan"] == 1
    report = _repair(rendered)
    assert report["adopted"] == 1 and report["removed"] == 0
    assert _verify(rendered, "--deep")[0] == 0
    assert tree_digest(rendered / "image-cache") == original
    assert [r[:7] for r in index_rows(rendered / "image_cache.sqlite")] == [r[:7] for r in rows_before]


def test_a_series_killed_before_its_first_rows_is_settled_with_its_temp_files(rendered: Path):
    """A render killed before it indexed a series leaves that series' files and a temp file, none with a row:
    repair adopts the files, which proves the series ours, and then removes its temp files too; verify
    agreed with repair only once it did (verify then calls the temp file ours, repair had left it as foreign;
    found by test_signals' Ctrl-C at random moments)."""
    original = tree_digest(rendered / "image-cache")
    victim = _some_image(rendered)
    symbol, interval = victim.relative_to(rendered / "image-cache").parts[:2]
    with sqlite3.connect(rendered / "image_cache.sqlite") as conn:
        conn.execute("DELETE FROM images WHERE symbol = ? AND interval = ?", (symbol, interval))
    temp = victim.parent / f".{victim.name}.123.tmp"
    temp.write_bytes(b"half")
    report = _repair(rendered)
    assert report["adopted"] > 0 and report["foreign"] == [], report
    assert not temp.exists()
    assert _verify(rendered, "--deep")[0] == 0
    assert tree_digest(rendered / "image-cache") == original


def test_our_orphans_and_temp_files_are_removed_foreign_files_kept(rendered: Path):
    """Files named as ours (an image of a preset and series the index has drawn) but not equal to a render,
    and our temp files, go; anything else, a preset the index never drew included, is reported as foreign
    and left alone, byte for byte."""
    original = tree_digest(rendered / "image-cache")
    folder = _some_image(rendered).parent
    notes = folder / "notes.txt"
    notes.write_text("not an image")
    good_name = _some_image(rendered).name
    other_preset = folder / good_name.replace("_v1.png", "_v7.png")
    other_preset.write_bytes(_png((128, 128), 3))
    wrong = rendered / "image-cache/BTCUSDT/1h/2020/01/BTCUSDT_1h_2020-01-01T00-00-00_px128_w30_v1.png"
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(_png((128, 128), 3))
    (folder / f".{good_name}.123.tmp").write_bytes(b"half")
    code, found = _verify(rendered)
    assert code == 1
    assert (found["counts"]["orphan"], found["counts"]["temp"]) == (1, 1)
    assert found["foreign"] == sorted(str(p.relative_to(rendered / "image-cache")) for p in (notes, other_preset))
    report = _repair(rendered)
    assert report["removed"] == 2 and not wrong.exists()
    assert _verify(rendered, "--deep")[0] == 0
    assert notes.read_text() == "not an image" and other_preset.read_bytes() == _png((128, 128), 3)
    notes.unlink()
    other_preset.unlink()
    assert tree_digest(rendered / "image-cache") == original


def test_deleted_index_is_rebuilt_from_files(rendered: Path):
    original = tree_digest(rendered / "image-cache")
    rows_before = [r[:7] for r in index_rows(rendered / "image_cache.sqlite", "WHERE status = 'ok'")]
    for suffix in ("", "-wal", "-shm"):
        Path(f"{rendered / 'image_cache.sqlite'}{suffix}").unlink(missing_ok=True)
    result = run_cli(rendered, "verify", "--config", "image_cache.toml")
    assert result.returncode == 1 and "image index not found" in result.stderr
    report = _repair(rendered, "--reindex")
    assert report["adopted"] == len(rows_before)
    assert _verify(rendered, "--deep")[0] == 0
    assert [r[:7] for r in index_rows(rendered / "image_cache.sqlite", "WHERE status = 'ok'")] == rows_before
    assert tree_digest(rendered / "image-cache") == original


def test_garbage_index_is_reported_then_rebuilt(rendered: Path):
    original = tree_digest(rendered / "image-cache")
    for suffix in ("-wal", "-shm"):
        Path(f"{rendered / 'image_cache.sqlite'}{suffix}").unlink(missing_ok=True)
    (rendered / "image_cache.sqlite").write_bytes(b"this is not a database" * 100)
    result = run_cli(rendered, "verify", "--config", "image_cache.toml")
    assert result.returncode == 1
    assert "damaged" in result.stderr and "repair --reindex" in result.stderr
    report = _repair(rendered, "--reindex")
    assert report["reindexed_from"].startswith("image_cache.sqlite.damaged-")
    assert _verify(rendered, "--deep")[0] == 0
    assert tree_digest(rendered / "image-cache") == original


def test_stale_spec_is_redrawn(rendered: Path):
    with sqlite3.connect(rendered / "image_cache.sqlite") as conn:
        conn.execute("UPDATE images SET spec_hash = 'old' "
                     "WHERE rowid IN (SELECT rowid FROM images WHERE status = 'ok' LIMIT 2)")
    code, found = _verify(rendered)
    assert code == 1 and found["counts"]["stale"] == 2
    assert _repair(rendered)["redrawn"] == 2
    assert _verify(rendered, "--deep")[0] == 0
