"""Outputs never overwrite: export and preview refuse an existing target unless --force, and then replace
only what they wrote (an export folder with our marker and nothing else; a sheet carrying our chunk)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import CONFIG, render_cli, run_cli, tree_digest

ARGS = ("--config", "image_cache.toml", "--start", "2024-06-22", "--horizons", "2",
        "--split", "train:..2024-06-27,test:2024-06-28..")


@pytest.fixture(scope="module")
def cache(tmp_path_factory, sample_market: Path) -> Path:
    folder = tmp_path_factory.mktemp("cache")
    shutil.copy(sample_market, folder / "market.sqlite")
    (folder / "image_cache.toml").write_text(CONFIG.replace('"ETHUSDT", ', "").replace(', "4h"', ""))
    result = render_cli(folder, "--start", "2024-06-22")
    assert result.returncode == 0, result.stderr
    return folder


def export(cache: Path, out: Path, *extra: str, process: bool = False):
    return run_cli(cache, "export", str(out), "--format", "manifest", *ARGS, *extra, process=process)


def preview(cache: Path, out: Path, *extra: str, process: bool = False):
    return run_cli(cache, "preview", str(out), "--config", "image_cache.toml", "--n", "4", *extra, process=process)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_preview_never_replaces_the_market_database(cache: Path):
    before = digest(cache / "market.sqlite")
    for extra in ((), ("--force",)):
        result = preview(cache, cache / "market.sqlite", *extra)
        assert result.returncode == 1 and "Traceback" not in result.stderr
        assert result.stderr.startswith(f"Error: {cache / 'market.sqlite'} ")
    assert "is not a preview sheet written by this tool: not replacing it" in result.stderr
    assert digest(cache / "market.sqlite") == before
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_preview_replaces_its_own_sheet_only_with_force(cache: Path, tmp_path: Path):
    sheet = tmp_path / "sheet.png"
    assert preview(cache, sheet).returncode == 0
    first = digest(sheet)
    result = preview(cache, sheet, "--n", "2")
    assert result.returncode == 1 and "exists: choose a new file name (--force replaces" in result.stderr
    assert digest(sheet) == first
    result = preview(cache, sheet, "--n", "2", "--force")
    assert result.returncode == 0, result.stderr
    assert digest(sheet) != first


@pytest.mark.parametrize("victim", ["link", "png"])
def test_preview_force_leaves_other_pngs_and_links_alone(cache: Path, tmp_path: Path, victim: str):
    target = tmp_path / "sheet.png"
    if victim == "link":
        (tmp_path / "elsewhere.png").write_bytes(b"not ours")
        target.symlink_to(tmp_path / "elsewhere.png")
    else:
        shutil.copy(next((cache / "image-cache").rglob("*.png")), target)  # a PNG, but not a sheet
    before = tree_digest(tmp_path)
    result = preview(cache, target, "--force")
    assert result.returncode == 1 and "not replacing it" in result.stderr
    assert tree_digest(tmp_path) == before and (victim != "link" or target.is_symlink())


def test_export_refuses_an_existing_folder_or_file(cache: Path, tmp_path: Path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    (tmp_path / "file").write_text("mine")
    for out in ("busy", "file"):
        result = export(cache, tmp_path / out)
        assert result.returncode == 1
        assert result.stderr == (f"Error: {tmp_path / out} exists and is not an empty folder: choose a new OUT "
                                 "(--force replaces an export written by this tool)\n")
    result = export(cache, tmp_path / "busy", "--force")
    assert result.returncode == 1 and "is not an export written by this tool" in result.stderr
    assert os.listdir(tmp_path / "busy") == ["keep.txt"] and (tmp_path / "file").read_text() == "mine"


def test_export_force_replaces_only_an_export_it_wrote(cache: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert export(cache, out).returncode == 0
    first = tree_digest(out)
    result = export(cache, out, "--horizons", "3")
    assert result.returncode == 1 and "exists and is not an empty folder" in result.stderr
    assert tree_digest(out) == first
    result = export(cache, out, "--horizons", "3", "--force")
    assert result.returncode == 0, result.stderr
    assert "(replaced the previous export)" in result.stdout and tree_digest(out) != first
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no temp or old folder left
    # A file the user put into the export: not ours, so the folder is not replaced.
    (out / "notes.txt").write_text("my notes")
    before = tree_digest(out)
    result = export(cache, out, "--force")
    assert result.returncode == 1
    assert result.stderr == f"Error: {out} holds notes.txt, which the export did not write: not replacing it\n"
    assert tree_digest(out) == before


@pytest.fixture
def full_disk(tmp_path: Path):
    """A 100 KiB tmpfs: too small for any export of the cache."""
    folder = tmp_path / "full"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100k", "tmpfs", str(folder)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.parametrize("fmt", ["numpy", "imagefolder", "parquet", "webdataset"])
def test_export_onto_a_full_disk_is_one_line_and_leaves_nothing(cache: Path, full_disk: Path, fmt: str):
    """numpy wrote through a memory map and died of SIGBUS (exit 135) leaving its temp folder; imagefolder
    blamed the cache ("run verify, then repair")."""
    out = full_disk / "out"
    result = run_cli(cache, "export", str(out), "--format", fmt, *ARGS)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    [error] = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    if fmt == "numpy":  # its size is known before it starts: refused before a byte is written
        assert error.startswith("Error: numpy: the arrays need 3.5 MB, the disk holding ") and "0.1 MB free" in error
        assert "numpy: 214 images, 3.5 MB of arrays (0.1 MB free)" in result.stderr  # said before
    else:
        assert error.startswith(f"Error: cannot write the export to {out}: disk full (")
    assert "repair" not in error
    assert os.listdir(full_disk) == []


def test_the_next_export_clears_what_killed_exports_left(cache: Path, tmp_path: Path):
    out = tmp_path / "out"
    assert export(cache, out, process=True).returncode == 0
    written = tree_digest(out)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has now: an export killed long ago
    (tmp_path / f".out.{gone.pid}.tmp").mkdir()
    (tmp_path / f".out.{gone.pid}.tmp" / "SHA256SUMS").write_text("half written")
    os.rename(out, tmp_path / f".out.{gone.pid}.old")  # killed between setting the old export aside and the rename
    running = tmp_path / f".out.{os.getpid()}.tmp"  # an export still running (this process) is left alone
    running.mkdir()

    result = export(cache, out, process=True)
    assert result.returncode == 1 and "exists and is not an empty folder" in result.stderr
    assert tree_digest(out) == written  # the old export is back in place
    assert sorted(os.listdir(tmp_path)) == sorted(["out", running.name])
    running.rmdir()
    assert export(cache, out, "--force", process=True).returncode == 0
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_the_next_preview_clears_only_the_temp_sheets_killed_previews_left(cache: Path, tmp_path: Path):
    sheet = tmp_path / "sheet.png"
    assert preview(cache, sheet, process=True).returncode == 0
    whole = sheet.read_bytes()
    sheet.unlink()
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid no process has now: a preview killed long ago
    killed = [tmp_path / f".sheet.png.{gone.pid}.tmp", tmp_path / f".sheet.png.{gone.pid + 100000}.tmp"]
    killed[0].write_bytes(whole)  # killed between the save and the link
    killed[1].write_bytes(whole[:120])  # killed while saving, past the text chunk that makes it ours
    kept = {tmp_path / f".sheet.png.{os.getpid()}.tmp": whole,  # a preview still running (this process)
            tmp_path / f".sheet.png.{gone.pid + 200000}.tmp": b"not a sheet",  # our name, not our bytes
            tmp_path / f".sheet.png.{gone.pid + 300000}.tmp": whole[:40],  # cut too short to prove it ours
            tmp_path / f".other.png.{gone.pid}.tmp": whole}  # another target's
    for path, data in kept.items():
        path.write_bytes(data)
    outside = tmp_path / "outside.png"
    outside.write_bytes(whole)
    link = tmp_path / f".sheet.png.{gone.pid + 400000}.tmp"
    link.symlink_to(outside)

    result = preview(cache, sheet, process=True)
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in killed)
    assert {path: path.read_bytes() for path in kept} == kept
    assert link.is_symlink() and outside.read_bytes() == whole


@pytest.mark.parametrize("fmt", ["manifest", "imagefolder"])
def test_export_of_an_image_path_holding_a_pipe_is_one_line_never_a_hang(cache: Path, tmp_path: Path, fmt: str):
    """A FIFO put where an `ok` row's image was: export refuses it at once (pipes never block)."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    image = sorted((copy / "image-cache").rglob("*2024-06-25T*.png"))[0]  # in the train split
    image.unlink()
    os.mkfifo(image)
    result = run_cli(copy, "export", str(tmp_path / "out"), "--format", fmt, *ARGS, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: ") and str(image) in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


def test_export_never_reads_an_image_through_a_linked_folder(cache: Path, tmp_path: Path):
    """A folder on the way to an image swapped for a link (to a copy outside the root): never followed."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    month = sorted((copy / "image-cache").rglob("*2024-06-25T*.png"))[0].parent
    outside = tmp_path / "outside"
    shutil.move(month, outside)
    month.symlink_to(outside, target_is_directory=True)
    result = run_cli(copy, "export", str(tmp_path / "out"), "--format", "imagefolder", *ARGS, timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("planted", ["pipe", "linked folder"])
def test_preview_never_reads_a_pipe_or_through_a_link(cache: Path, tmp_path: Path, planted: str):
    """A FIFO at an image path, or a folder on its way swapped for a link: one line, never a hang, never
    a file outside the root read."""
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy)
    if planted == "pipe":
        for image in (copy / "image-cache").rglob("*.png"):
            image.unlink()
            os.mkfifo(image)
    else:
        interval = copy / "image-cache" / "BTCUSDT" / "1h"
        shutil.move(interval, tmp_path / "outside")
        interval.symlink_to(tmp_path / "outside", target_is_directory=True)
    result = run_cli(copy, "preview", str(tmp_path / "sheet.png"), "--config", "image_cache.toml", "--n", "4",
                     timeout=60)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("Error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not (tmp_path / "sheet.png").exists()


def test_a_link_at_the_preview_temp_name_is_never_written_through(tmp_path: Path):
    """The sheet's temp file is created exclusively, never through a link: one planted at its name (the
    pid is guessable) is refused and what it points at keeps its bytes."""
    from PIL import Image

    from image_cache.cache.preview import _save
    from image_cache.core.errors import ImageCacheError
    target = tmp_path / "precious.txt"
    target.write_text("precious")
    out = tmp_path / "sheet.png"
    (tmp_path / f".sheet.png.{os.getpid()}.tmp").symlink_to(target)
    with pytest.raises(ImageCacheError, match="is not this preview's"):
        _save(Image.new("RGB", (4, 4)), str(out), force=False)
    assert target.read_text() == "precious" and not out.exists()
    assert (tmp_path / f".sheet.png.{os.getpid()}.tmp").is_symlink()
