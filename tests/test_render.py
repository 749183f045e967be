"""render through the real CLI: files, index rows, idempotence, dry run, limit, filters, errors."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import index_rows, render_cli, run_cli, tree_digest


def test_render_writes_images_and_rows(rendered: Path):
    files = tree_digest(rendered / "image-cache")
    rows = index_rows(rendered / "image_cache.sqlite", "WHERE status = 'ok'")
    assert len(files) == len(rows) > 100
    for _, _, _, path, sha, pixel_hash, _, _, fingerprint in rows:
        assert files[path] == sha
        assert len(pixel_hash) == 64 and len(fingerprint) == 64
    name = sorted(files)[0]
    assert name.startswith("BTCUSDT/1h/2024/06/BTCUSDT_1h_2024-06-")
    assert name.endswith("_px128_w30_v1.png")
    assert (rendered / "image-cache" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_render_draws_nothing(rendered: Path):
    before = tree_digest(rendered / "image-cache")
    second = render_cli(rendered, "--json")
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["drawn"] == 0 and report["recorded"] == 0 and report["up_to_date"] == len(before)
    assert tree_digest(rendered / "image-cache") == before
    assert "nothing to draw" in render_cli(rendered).stdout


def test_dry_run_writes_nothing_and_plans_exactly(workdir: Path):
    dry = render_cli(workdir, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)["plan"]
    assert set(planned) == {"BTCUSDT 1h", "BTCUSDT 4h", "ETHUSDT 1h", "ETHUSDT 4h"}
    # Nothing of ours (SQLite itself adds the market's -wal/-shm files for any WAL reader).
    assert sorted(p.name for p in workdir.iterdir() if not p.name.startswith("market.sqlite")) == \
        ["image_cache.toml"]
    real = json.loads(render_cli(workdir, "--json").stdout)
    assert real["drawn"] == sum(c["new"] + c["stale"] for c in planned.values())
    assert real["recorded"] == sum(c["gap"] + c["history"] for c in planned.values())


def test_limit_then_resume(workdir: Path):
    first = json.loads(render_cli(workdir, "--limit", "7", "--json").stdout)
    assert first["drawn"] == 7
    assert len(tree_digest(workdir / "image-cache")) == 7
    rest = json.loads(render_cli(workdir, "--json").stdout)
    assert rest["up_to_date"] == 7 and rest["drawn"] > 0


def test_filters_and_dates_select_exact_windows(workdir: Path):
    result = render_cli(workdir, "--symbols", "ETHUSDT", "--intervals", "4h", "--start", "2024-06-28",
                        "--end", "2024-06-29T12:00", "--json")
    assert result.returncode == 0, result.stderr
    rows = index_rows(workdir / "image_cache.sqlite")
    assert {(r[0], r[1]) for r in rows} == {("ETHUSDT", "4h")}
    ends = sorted(r[2] for r in rows)
    # 4h candles opening 2024-06-28T00:00 .. 2024-06-29T08:00: nine windows, every one on the grid.
    assert ends[0] == 1719532800000 and ends[-1] == 1719532800000 + 8 * 4 * 3600_000
    assert len(ends) == 9


def test_stride_keeps_a_fixed_grid(workdir: Path):
    render_cli(workdir, "--intervals", "1h", "--symbols", "BTCUSDT", "--stride", "6")
    ends = [r[2] for r in index_rows(workdir / "image_cache.sqlite")]
    assert ends and all((end // 3600_000) % 6 == 0 for end in ends)


def test_missing_market_is_a_clear_error(workdir: Path):
    (workdir / "market.sqlite").unlink()
    result = render_cli(workdir)
    assert result.returncode == 1
    assert result.stderr.strip() == "Error: market database not found: market.sqlite"
    assert not (workdir / "market.sqlite").exists()


def test_market_without_tables_is_a_clear_error(workdir: Path):
    (workdir / "market.sqlite").unlink()
    sqlite3.connect(workdir / "market.sqlite").execute("CREATE TABLE other (x)").connection.close()
    result = render_cli(workdir)
    assert result.returncode == 1
    assert "not a market database: missing table(s) symbols, intervals, series, candles" in result.stderr


def test_bad_settings_are_usage_errors(workdir: Path):
    (workdir / "bad.toml").write_text('[image_cache]\nwindow = "many"\n')
    result = run_cli(workdir, "render", "--config", "bad.toml")
    assert result.returncode == 2 and "window must be an integer" in result.stderr
    result = render_cli(workdir, "--style", "nosuch")
    assert result.returncode == 2 and result.stderr.startswith("Error: ") and "nosuch" in result.stderr


def test_absent_symbols_are_reported_not_fatal(workdir: Path):
    result = render_cli(workdir, "--symbols", "BTCUSDT,XRPUSDT", "--intervals", "4h")
    assert result.returncode == 0, result.stderr
    assert "not in the market database, skipped: XRPUSDT" in result.stderr


def test_status_reports_counts(rendered: Path):
    result = run_cli(rendered, "status", "--config", "image_cache.toml", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    ok = len(index_rows(rendered / "image_cache.sqlite", "WHERE status = 'ok'"))
    assert report["total"]["ok"] == ok
    assert report["last_run"]["command"] == "render" and report["last_run"]["exit_code"] == 0
    assert report["bytes_on_disk"] == sum(p.stat().st_size for p in (rendered / "image-cache").rglob("*.png"))


def test_the_modules_one_image_crosses_are_those_docs_architecture_names(workdir: Path):
    """Trace a render of one image (every thread) and compare the package modules whose functions ran
    with the list in docs/architecture.md, so that the walk a newcomer reads is the one the code takes."""
    import re
    import sys
    import threading

    import image_cache
    from image_cache.cache import runner

    text = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    paragraph = " ".join(text.split("**The modules one image crosses**")[1].split("\n\n")[0].split())
    documented = paragraph.split("checks this list):")[1].split(" (the command line adds")[0]
    named = re.findall(r"`([\w/]+\.py)`", documented)
    settings = image_cache.load(workdir / "image_cache.toml", flags={"market_db_path": str(workdir / "market.sqlite"),
                                "image_index_db": str(workdir / "i.sqlite"), "image_root_dir": str(workdir / "r")})
    runner.render(settings, limit=0)  # imports, lock, index, root: what any run does first
    ran: set[str] = set()

    def record(frame, event, arg):
        if event == "call" and frame.f_code.co_name != "<module>":
            ran.add(frame.f_globals.get("__name__", ""))

    threading.setprofile(record)
    sys.setprofile(record)
    try:
        result = runner.render(settings, limit=1)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert result.drawn == 1
    modules = {name.removeprefix("image_cache.").replace(".", "/") for name in ran if name.startswith("image_cache.")}
    traced = {f"{m}/__init__.py" if m == "chart" else f"{m}.py" for m in modules}
    assert traced == set(named), (sorted(traced - set(named)), sorted(set(named) - traced))
    assert f": {len(named)} (the command line adds" in paragraph


def test_after_a_lost_worker_only_temp_files_of_images_the_run_drew_are_removed(rendered: Path):
    """What a lost Dask worker leaves is the temp file of an image of the run; files that only look alike
    (another program's, another preset's) are not ours and stay, and one that cannot go is said, not fatal."""
    import subprocess

    import pytest

    from image_cache.cache.runner import remove_lost_temps

    root = rendered / "image-cache"
    rows = index_rows(rendered / "image_cache.sqlite", "WHERE status = 'ok' AND interval = '1h'")
    drawn = [row[3] for row in rows]
    folder, name = root / Path(drawn[0]).parent, Path(drawn[0]).name
    left = folder / f".{name}.4242.tmp"
    others = [folder / f".syncthing.{name}.tmp", folder / ".notes.tmp",
              folder / f".{name.replace('_px128_', '_px256_')}.99.tmp"]
    for path in [left, *others]:
        path.write_bytes(b"x")
    said: list[str] = []
    remove_lost_temps(str(root), drawn, 1, said.append)
    assert not left.exists() and all(path.exists() for path in others)
    assert said == ["removed 1 temporary file left by the lost worker"]

    # A folder the run cannot write (a read-only mount: root writes through any mode bits).
    stuck = root / "BTCUSDT" / "1h" / "2030" / "01"
    stuck.mkdir(parents=True)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(stuck)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (stuck / f".{name}.4243.tmp").write_bytes(b"x")
        subprocess.run(["mount", "-o", "remount,ro", str(stuck)], check=True)
        said.clear()
        remove_lost_temps(str(root), [f"BTCUSDT/1h/2030/01/{name}"], 2, said.append)
    finally:
        subprocess.run(["umount", str(stuck)], check=True)
    assert len(said) == 1 and said[0].startswith("a temporary file left by the lost workers stays (repair removes "
                                                 "it): cannot remove "), said
