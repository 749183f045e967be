"""Never touch what is not ours: the image root's marker, containment, links and pipes, foreign index files.

Each case destroyed or hung on the code before ownership checks (issue "Never destroy what is not ours").
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from conftest import render_cli, run_cli, tree_digest


def everything(folder: Path) -> dict[str, str]:
    """Every entry under folder: regular files by content hash, links by target, others by kind."""
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link -> " + os.readlink(path)
        elif path.is_fifo():
            out[rel] = "fifo"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.name != ".image_cache_root" else "marker"
    return out


def no_traceback(result) -> None:
    assert "Traceback" not in result.stderr, result.stderr


def test_repair_refuses_a_folder_that_is_not_an_image_root(rendered: Path):
    """1. --image-root given the data folder by mistake: refused, nothing deleted."""
    (rendered / "notes.txt").write_text("my notes")
    before = everything(rendered)
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--image-root", ".")
    no_traceback(result)
    assert result.returncode == 1
    assert "not an image root" in result.stderr and "marker" in result.stderr
    after = everything(rendered)
    assert {k: v for k, v in after.items() if not k.startswith("image_cache.sqlite")} == \
        {k: v for k, v in before.items() if not k.startswith("image_cache.sqlite")}
    assert (rendered / "market.sqlite").is_file() and (rendered / "notes.txt").read_text() == "my notes"


def test_bad_symbol_is_refused_before_any_file_call(rendered: Path):
    """2. --symbol ../victim with a missing market never reaches the file system."""
    victim = rendered / "victim"
    victim.mkdir()
    (victim / "BTCUSDT_1h_2024-06-25T00-00-00_px128_w30_v1.png").write_bytes(b"precious")
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--symbols", "../victim",
                     "--market-db", "nope.sqlite")
    no_traceback(result)
    assert result.returncode in (1, 2) and "symbol" in result.stderr
    assert (victim / "BTCUSDT_1h_2024-06-25T00-00-00_px128_w30_v1.png").read_bytes() == b"precious"


def test_symlinked_symbol_folder_is_never_followed(rendered: Path, tmp_path_factory):
    """3. A symbol folder that is a link: reported, never entered, its target untouched."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    name = "ETHUSDT/1h/2024/06/ETHUSDT_1h_2024-06-25T00-00-00_px128_w30_v1.png"
    (elsewhere / name).parent.mkdir(parents=True)
    (elsewhere / name).write_bytes(b"not yours")
    shutil.rmtree(rendered / "image-cache" / "ETHUSDT")
    (rendered / "image-cache" / "ETHUSDT").symlink_to(elsewhere / "ETHUSDT")
    for args in ([], ["--symbols", "ETHUSDT"], ["--symbols", "ETHUSDT", "--intervals", "1h"]):
        result = run_cli(rendered, "repair", "--config", "image_cache.toml", *args)
        no_traceback(result)
        assert (elsewhere / name).read_bytes() == b"not yours"
    assert (rendered / "image-cache" / "ETHUSDT").is_symlink()


def test_index_db_pointing_at_the_market_is_refused(rendered: Path):
    """5. --index-db naming market.sqlite: no advice to reindex, and --reindex never moves it."""
    market = (rendered / "market.sqlite").read_bytes()
    result = run_cli(rendered, "verify", "--config", "image_cache.toml", "--index-db", "market.sqlite")
    no_traceback(result)
    assert result.returncode == 1 and "not an image index" in result.stderr
    assert "--reindex" not in result.stderr
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--index-db", "market.sqlite", "--reindex")
    no_traceback(result)
    assert result.returncode == 1 and "not an image index" in result.stderr
    assert (rendered / "market.sqlite").read_bytes() == market
    assert not list(rendered.glob("market.sqlite.damaged*"))


def test_named_pipe_in_the_tree_never_blocks(rendered: Path):
    """6. A FIFO inside the image tree: verify and repair finish, report it, and leave it."""
    folder = next((rendered / "image-cache" / "BTCUSDT" / "1h").rglob("*.png")).parent
    fifo = folder / "BTCUSDT_1h_2024-06-25T00-00-00_px128_w30_v9.png"
    os.mkfifo(fifo)
    for command in (["verify"], ["verify", "--deep"], ["repair"]):
        result = run_cli(rendered, *command, "--config", "image_cache.toml", timeout=60)
        no_traceback(result)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "foreign" in result.stdout
    assert fifo.is_fifo()


def test_a_pipe_where_an_image_should_be_is_corrupt_not_a_hang(rendered: Path):
    image = next((rendered / "image-cache" / "BTCUSDT" / "1h").rglob("*.png"))
    image.unlink()
    os.mkfifo(image)
    result = run_cli(rendered, "verify", "--config", "image_cache.toml", "--deep", "--json", timeout=60)
    no_traceback(result)
    assert result.returncode == 1 and '"corrupt": 1' in result.stdout


def test_render_refuses_a_non_empty_folder_that_is_not_ours(workdir: Path):
    (workdir / "data").mkdir()
    (workdir / "data" / "notes.txt").write_text("mine")
    result = render_cli(workdir, "--image-root", "data")
    no_traceback(result)
    assert result.returncode == 1 and "not ours" in result.stderr
    assert everything(workdir / "data") == {"notes.txt": tree_digest(workdir / "data")["notes.txt"]}


def test_a_root_belongs_to_one_index(rendered: Path):
    result = run_cli(rendered, "verify", "--config", "image_cache.toml", "--index-db", "other.sqlite")
    assert result.returncode == 1 and "not found" in result.stderr
    assert not (rendered / "other.sqlite.lock").exists()  # no stray lock file for want of an index
    result = render_cli(rendered, "--index-db", "other.sqlite", "--intervals", "4h")
    assert result.returncode == 1 and f"belongs to another index, {rendered / 'image_cache.sqlite'}" in result.stderr
    assert run_cli(rendered, "verify", "--config", "image_cache.toml").returncode == 0


@pytest.mark.slow
def test_foreign_files_survive_every_command(workdir: Path, tmp_path_factory):
    """Image root and index next to other files: a market, notes, a link to elsewhere, a named pipe.
    After render, verify, repair and repair --reindex every foreign entry is byte for byte as it was."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    (elsewhere / "target.txt").write_text("outside")
    root = workdir / "image-cache"
    assert render_cli(workdir).returncode == 0
    folder = next((root / "BTCUSDT" / "1h").rglob("*.png")).parent
    foreign = {
        folder / "notes.txt": "notes", root / "README": "readme", root / "BTCUSDT" / "x.csv": "1,2",
    }
    for path, text in foreign.items():
        path.write_text(text)
    (folder / "link.png").symlink_to(elsewhere / "target.txt")
    (root / "ETHUSDT" / "elsewhere").symlink_to(elsewhere)
    os.mkfifo(folder / "pipe")
    shutil.copy(workdir / "market.sqlite", folder / "copy-of-market.sqlite")
    (workdir / "notes.txt").write_text("beside the index")
    before_root = {k: v for k, v in everything(root).items() if not k.endswith(".png") or "link" in k}
    before_outside = everything(elsewhere)
    for command in (["render"], ["verify"], ["verify", "--deep"], ["repair"], ["repair", "--reindex"]):
        result = run_cli(workdir, *command, "--config", "image_cache.toml", timeout=120)
        no_traceback(result)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        after_root = {k: v for k, v in everything(root).items() if not k.endswith(".png") or "link" in k}
        assert after_root == before_root, command
        assert everything(elsewhere) == before_outside
        assert (workdir / "notes.txt").read_text() == "beside the index"
    assert run_cli(workdir, "verify", "--config", "image_cache.toml", "--deep").returncode == 0


def test_reindex_refuses_garbage_the_root_does_not_name(rendered: Path):
    """A file at the index path that is neither an index nor named by the root's marker stays put."""
    other = rendered / "other.sqlite"
    other.write_bytes(b"my own file, not a database")
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--index-db", "other.sqlite", "--reindex")
    no_traceback(result)
    assert result.returncode == 1
    assert other.read_bytes() == b"my own file, not a database"
