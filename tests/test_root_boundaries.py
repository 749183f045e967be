"""Where the cache meets the rest of the machine: a second index on one root, links at lock paths, a folder
swapped for a link, files at paths of rows with no image, folders and pipes at image paths, a root repair
may not write (issue 23, items 1-4, 9, 12, 13).

Each test fails on the code before that issue.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import pytest
from PIL import Image

from conftest import index_rows, render_cli, run_cli, tree_digest


def other_market(folder: Path) -> None:
    """A second dataset's market beside the first: other symbols, other candles."""
    from image_cache.ingest.sample import build_sample
    build_sample(str(folder / "other-market.sqlite"), symbols=["SOLUSDT"], days=10, seed=8)


def as_other(folder: Path, command: str, *args: str):
    """`command` with the second dataset's config: its own market and index, the same image root."""
    return run_cli(folder, command, "--config", "image_cache.toml", "--market-db", "other-market.sqlite",
                   "--index-db", "other.sqlite", "--symbols", "SOLUSDT", *args)


def one_error_line(result) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


def png(colour: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (128, 128), colour).save(out, format="PNG")
    return out.getvalue()


# ------------------------------------------------------------------------------------------ item 1

def test_a_healthy_owner_is_never_taken_over(rendered: Path):
    """A second config's index on a root a healthy index owns: render, repair and repair --reindex are
    refused naming the owner, and not one of the owner's files changes (before: 508 -> 132 images)."""
    other_market(rendered)
    root = rendered / "image-cache"
    before = tree_digest(root)
    owner = str(rendered / "image_cache.sqlite")
    for command, args in (("render", ()), ("repair", ()), ("repair", ("--reindex",))):
        line = one_error_line(as_other(rendered, command, *args))
        assert f"belongs to another index, {owner}" in line, line
    assert tree_digest(root) == before
    assert json.loads((root / ".image_cache_root").read_text())["index_path"] == owner
    assert run_cli(rendered, "verify", "--config", "image_cache.toml", "--deep").returncode == 0


def test_a_gone_owner_is_taken_over_aloud_and_its_files_are_kept(rendered: Path):
    """The owner index deleted: the second render takes the root over and says so on stderr and in its
    JSON; its repair, and the first config's repair --reindex, remove none of the first index's images."""
    other_market(rendered)
    root = rendered / "image-cache"
    first = tree_digest(root)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{rendered / 'image_cache.sqlite'}{suffix}").unlink(missing_ok=True)
    result = as_other(rendered, "render", "--json")
    assert result.returncode == 0, result.stderr
    said = f"took over image root image-cache: its owner index {rendered / 'image_cache.sqlite'} no longer exists"
    assert result.stderr.count(said) == 1 and json.loads(result.stdout)["took_over"] == said
    result = as_other(rendered, "repair", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] == 0
    assert {k: v for k, v in tree_digest(root).items() if k in first} == first
    # The first config, its index lost, may not rebuild over the new owner either.
    line = one_error_line(run_cli(rendered, "repair", "--config", "image_cache.toml", "--reindex"))
    assert f"belongs to another index, {rendered / 'other.sqlite'}" in line
    assert {k: v for k, v in tree_digest(root).items() if k in first} == first
    assert as_other(rendered, "verify", "--deep").returncode == 0


def test_reindex_at_another_path_makes_the_marker_name_the_new_index(rendered: Path):
    """The owner index gone, `repair --reindex` rebuilds it at another path: the marker must name the new
    index, or a fresh index at the old path later passes for the owner "replaced at the same path" and
    takes the root over from the rebuilt one."""
    root = rendered / "image-cache"
    images = tree_digest(root)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{rendered / 'image_cache.sqlite'}{suffix}").unlink(missing_ok=True)
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--reindex", "--index-db", "new.sqlite",
                     "--json")
    assert result.returncode == 0, result.stderr
    said = f"took over image root image-cache: its owner index {rendered / 'image_cache.sqlite'} no longer exists"
    assert said in json.loads(result.stdout)["notes"]
    assert json.loads(result.stdout)["adopted"] == len(images)
    assert json.loads((root / ".image_cache_root").read_text())["index_path"] == str(rendered / "new.sqlite")
    line = one_error_line(render_cli(rendered))  # a fresh index at the old path: the rebuilt one owns the root
    assert f"belongs to another index, {rendered / 'new.sqlite'}" in line, line
    assert tree_digest(root) == images
    assert run_cli(rendered, "verify", "--config", "image_cache.toml", "--index-db", "new.sqlite",
                   "--deep").returncode == 0


def test_two_first_renders_cannot_both_own_a_root(tmp_path: Path):
    """The marker is created exclusively: a second claim of a fresh root by another live index is refused."""
    from image_cache.cache import index
    from image_cache.cache.root import RootError, claim, read_marker
    conns = [index.connect(str(tmp_path / f"{name}.sqlite")) for name in ("a", "b")]
    try:
        ids = [index.index_id(conn) for conn in conns]
        assert claim(str(tmp_path / "root"), ids[0], str(tmp_path / "a.sqlite")) is None
        with pytest.raises(RootError, match="belongs to another index"):
            claim(str(tmp_path / "root"), ids[1], str(tmp_path / "b.sqlite"))
        assert read_marker(str(tmp_path / "root")).index_id == ids[0]
        assert os.listdir(tmp_path / "root") == [".image_cache_root"]  # no temp file left
    finally:
        for conn in conns:
            conn.close()


def test_a_claim_waits_while_another_claims_the_root(tmp_path: Path):
    """Claims of one root take turns (an flock on its folder): two takeovers of a gone owner cannot both
    read the old marker and both win. Held by another, a claim waits; released, it goes on."""
    import fcntl
    import threading

    from image_cache.cache import index
    from image_cache.cache.root import claim, read_marker
    root = tmp_path / "root"
    root.mkdir()
    conn = index.connect(str(tmp_path / "a.sqlite"))
    held = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(held, fcntl.LOCK_EX)
        claimer = threading.Thread(target=claim, args=(str(root), index.index_id(conn), str(tmp_path / "a.sqlite")))
        claimer.start()
        claimer.join(0.3)
        assert claimer.is_alive() and read_marker(str(root)) is None  # waiting its turn, nothing written
        fcntl.flock(held, fcntl.LOCK_UN)
        claimer.join(5)
        assert not claimer.is_alive() and read_marker(str(root)).index_id == index.index_id(conn)
    finally:
        os.close(held)
        conn.close()


# ------------------------------------------------------------------------------------------ item 2

@pytest.mark.parametrize("lock, command", [("image_cache.sqlite.lock", ["render", "--config", "image_cache.toml"]),
                                           ("market.sqlite.lock", ["gaps", "--market-db", "market.sqlite"])])
def test_a_linked_lock_file_is_refused_and_its_target_untouched(rendered: Path, tmp_path_factory, lock, command):
    target = tmp_path_factory.mktemp("elsewhere") / "precious.txt"
    target.write_text("precious")
    (rendered / lock).unlink(missing_ok=True)
    (rendered / lock).symlink_to(target)
    result = run_cli(rendered, *command, module="ingest" if command[0] == "gaps" else None)
    line = one_error_line(result)
    assert "is a symbolic link" in line and lock in line
    assert target.read_text() == "precious"
    assert (rendered / lock).is_symlink()


@pytest.mark.parametrize("lock, command", [("image_cache.sqlite.lock", ["render", "--config", "image_cache.toml"]),
                                           ("market.sqlite.lock", ["gaps", "--market-db", "market.sqlite"])])
def test_a_hard_linked_lock_file_is_refused_and_its_other_name_untouched(rendered: Path, lock, command):
    """A hard link is another name of the same file: writing the holder into it would change the user's file."""
    target = rendered / "precious.txt"
    target.write_text("precious")
    (rendered / lock).unlink(missing_ok=True)
    os.link(target, rendered / lock)
    result = run_cli(rendered, *command, module="ingest" if command[0] == "gaps" else None)
    line = one_error_line(result)
    assert "has other names (hard links)" in line and lock in line
    assert target.read_text() == "precious"


def test_a_lock_file_names_no_holder_once_released(rendered: Path):
    assert (rendered / "image_cache.sqlite.lock").read_bytes() == b""
    assert run_cli(rendered, "verify", "--config", "image_cache.toml").returncode == 0
    assert (rendered / "image_cache.sqlite.lock").read_bytes() == b""


# ------------------------------------------------------------------------------------------ item 3

def test_removal_never_follows_a_folder_swapped_for_a_link(tmp_path: Path, monkeypatch):
    """Between the check and the unlink, the month folder becomes a link to a folder outside the root
    holding a file of the same name: that file survives (before, it was deleted)."""
    from image_cache.cache.root import Tree
    rel = "BTCUSDT/1h/2024/06/BTCUSDT_1h_2024-06-25T00-00-00_px128_w30_v1.png"
    inside, outside = tmp_path / "root" / rel, tmp_path / "outside" / os.path.basename(rel)
    inside.parent.mkdir(parents=True)
    outside.parent.mkdir()
    inside.write_bytes(b"ours")
    outside.write_bytes(b"not ours")
    real_stat, real_lstat = os.stat, os.lstat
    swapped = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            os.rename(inside.parent, inside.parent.with_name("moved"))
            os.symlink(outside.parent, inside.parent)

    monkeypatch.setattr(os, "lstat", lambda *a, **k: (swap(), real_lstat(*a, **k))[1])
    monkeypatch.setattr(os, "stat", lambda *a, **k: (swap(), real_stat(*a, **k))[1])
    with Tree(str(tmp_path / "root")) as tree:
        tree.remove(rel)
    monkeypatch.undo()
    assert swapped
    assert outside.read_bytes() == b"not ours"
    assert not (inside.parent.with_name("moved") / inside.name).exists()  # the file checked was the one removed


# ------------------------------------------------------------------------------------------ item 4

def test_a_file_where_the_index_records_no_image_is_found_and_removed(rendered: Path):
    """A render killed while drawing gap windows under --gap-policy render leaves files at the paths of
    rows recorded as having no image: verify reports each, repair removes it."""
    rows = index_rows(rendered / "image_cache.sqlite", "WHERE status = 'undrawable'")
    assert rows, "the sample market has windows without an image"
    stray = rendered / "image-cache" / rows[0][3]
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(png(7))
    result = run_cli(rendered, "verify", "--config", "image_cache.toml", "--json")
    assert result.returncode == 1
    found = json.loads(result.stdout)
    assert found["counts"]["orphan"] == 1 and found["problems"][0]["path"] == rows[0][3]
    assert f"records no image here ({rows[0][7]})" in found["problems"][0]["detail"]
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--json")
    assert result.returncode == 0 and json.loads(result.stdout)["removed"] == 1
    assert not stray.exists()
    assert index_rows(rendered / "image_cache.sqlite", "WHERE status = 'undrawable'") == rows
    assert run_cli(rendered, "verify", "--config", "image_cache.toml", "--deep").returncode == 0


# ------------------------------------------------------------------------------------------ items 12, 13

def _ok_paths(folder: Path, n: int) -> list[str]:
    return [r[3] for r in index_rows(folder / "image_cache.sqlite", "WHERE status = 'ok'")[:n]]


@pytest.mark.parametrize("kind", ["folder", "fifo", "link"])
def test_one_unrepairable_path_never_stops_the_rest(rendered: Path, tmp_path_factory, kind: str):
    """A folder, pipe or link where one image should be: reported once, left alone (never replaced), and
    every other deleted image is still re-drawn."""
    target = tmp_path_factory.mktemp("elsewhere") / "target"
    target.write_text("outside")
    root = rendered / "image-cache"
    original = tree_digest(root)
    blocked, *others = _ok_paths(rendered, 4)
    for rel in (blocked, *others):
        (root / rel).unlink()
    {"folder": (root / blocked).mkdir, "fifo": lambda: os.mkfifo(root / blocked),
     "link": lambda: (root / blocked).symlink_to(target)}[kind]()
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--json", timeout=60)
    assert "Traceback" not in result.stderr and result.returncode == 1
    report = json.loads(result.stdout)
    assert report["redrawn"] == 3
    assert [u for u in report["unrepairable"] if blocked in u] == [f"{blocked}: a {dict(fifo='pipe').get(kind, kind)} "
                                                                  "is at its path: not ours, left alone"]
    assert blocked not in report["foreign"]
    assert {k: original[k] for k in others} == {k: tree_digest(root)[k] for k in others}
    # Render leaves it alone too; the entry is as it was.
    assert render_cli(rendered).returncode == 0
    mode = os.lstat(root / blocked).st_mode
    assert {"folder": stat.S_ISDIR, "fifo": stat.S_ISFIFO, "link": stat.S_ISLNK}[kind](mode)
    assert target.read_text() == "outside"


@pytest.fixture(params=["read-only", "full"])
def unwritable_month(rendered: Path, request):
    """BTCUSDT/1h/2024/06, the first folder repair draws into, as a read-only or a full file system (a tmpfs
    mounted over it: root writes through chmod). Its images are hidden under the mount: repair must redraw
    them and cannot."""
    import subprocess
    folder = rendered / "image-cache" / "BTCUSDT" / "1h" / "2024" / "06"
    options = "ro" if request.param == "read-only" else "size=4k"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    if request.param == "full":
        with open(folder / "filler", "wb") as handle:
            handle.write(b"\0" * 4096)
    yield folder, {"read-only": "Read-only file system", "full": "No space left on device"}[request.param]
    subprocess.run(["umount", str(folder)], check=True)


def test_an_unwritable_folder_stops_only_the_writes_into_it(rendered: Path, unwritable_month):
    """Repair used to stop every draw at the first chunk that could not write (re-drew 0, adopted 0)."""
    folder, cause = unwritable_month
    root = rendered / "image-cache"
    original = tree_digest(root)
    redraw = sorted((root / "ETHUSDT" / "4h" / "2024" / "06").glob("*.png"))[:2]
    for path in redraw:
        path.unlink()
    adopt = sorted((root / "ETHUSDT" / "1h" / "2024" / "06").glob("*.png"))[0]
    with sqlite3.connect(rendered / "image_cache.sqlite") as conn:  # a file without its row: a crash leaves it
        conn.execute("DELETE FROM images WHERE file_path = ?", (str(adopt.relative_to(root)),))
    conn.close()
    result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--json")
    assert "Traceback" not in result.stderr and result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert (report["redrawn"], report["adopted"]) == (2, 1)
    [failed] = report["unrepairable"]  # the chunk of that folder, once
    assert failed.startswith(f"cannot write {folder}/BTCUSDT_1h_2024-") and failed.endswith(f": {cause}"), failed
    assert {str(p.relative_to(root)): original[str(p.relative_to(root))] for p in redraw} == \
        {str(p.relative_to(root)): tree_digest(root)[str(p.relative_to(root))] for p in redraw}
    assert str(adopt.relative_to(root)) in {r[3] for r in index_rows(rendered / "image_cache.sqlite",
                                                                     "WHERE status = 'ok'")}


def test_a_pipe_at_a_new_image_path_is_never_replaced_by_render(workdir: Path):
    assert render_cli(workdir, "--limit", "1").returncode == 0
    rows = index_rows(workdir / "image_cache.sqlite")
    folder = workdir / "image-cache" / os.path.dirname(rows[0][3])
    shutil.rmtree(workdir / "image-cache")
    os.remove(workdir / "image_cache.sqlite")
    folder.mkdir(parents=True)
    os.mkfifo(workdir / "image-cache" / rows[0][3])
    rendered = render_cli(workdir, "--json")
    assert rendered.returncode == 0 and json.loads(rendered.stdout)["blocked"] == 1
    assert stat.S_ISFIFO(os.lstat(workdir / "image-cache" / rows[0][3]).st_mode)
    # Its window has a row that says why it has no image; verify reports the path once, as that row's problem.
    blocked = [r for r in index_rows(workdir / "image_cache.sqlite") if r[3] == rows[0][3]]
    assert [(r[6], r[7]) for r in blocked] == [("missing", "blocked: a pipe is at this path, not ours, left alone")]
    report = json.loads(run_cli(workdir, "verify", "--config", "image_cache.toml", "--json").stdout)
    mentioned = [p["path"] for p in report["problems"]] + report["foreign"]
    assert mentioned.count(rows[0][3]) == 1


def test_reindex_of_a_healthy_index_keeps_it_and_says_so(rendered: Path):
    rows = index_rows(rendered / "image_cache.sqlite")
    for _ in range(2):
        result = run_cli(rendered, "repair", "--config", "image_cache.toml", "--reindex", "--json")
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["reindexed_from"] is None and "is healthy: kept, not rebuilt" in report["notes"][0]
    assert not list(rendered.glob("image_cache.sqlite.damaged*"))
    assert index_rows(rendered / "image_cache.sqlite") == rows


# ------------------------------------------------------------------------------------------ item 9

def test_a_file_repair_cannot_remove_is_counted_not_a_traceback(rendered: Path, monkeypatch):
    """unlink refused (a read-only root): each file is reported once, the rest is settled, no OSError."""
    from image_cache import settings as config
    from image_cache.cache import verify
    root = rendered / "image-cache"
    folder = root / os.path.dirname(_ok_paths(rendered, 1)[0])
    temp = folder / ".BTCUSDT_1h_2024-06-25T00-00-00_px128_w30_v1.png.99.tmp"
    temp.write_bytes(b"half")
    victim = root / _ok_paths(rendered, 2)[1]
    victim.unlink()

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.chdir(rendered)
    settings = config.load("image_cache.toml")
    monkeypatch.setattr(os, "unlink", refuse)
    result = verify.repair(settings)
    monkeypatch.undo()
    assert result.removed == 0 and result.redrawn == 1 and victim.is_file()
    assert [u for u in result.unrepairable if "could not remove" in u] == \
        [f"could not remove: cannot remove {temp}: permission denied (Permission denied)"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder: chmod cannot refuse it")
def test_repair_on_a_read_only_folder_is_one_line_exit_1(rendered: Path):
    folder = rendered / "image-cache" / os.path.dirname(_ok_paths(rendered, 1)[0])
    (folder / ".BTCUSDT_1h_2024-06-25T00-00-00_px128_w30_v1.png.99.tmp").write_bytes(b"half")
    folder.chmod(0o555)
    try:
        result = run_cli(rendered, "repair", "--config", "image_cache.toml")
    finally:
        folder.chmod(0o755)
    assert "Traceback" not in result.stderr and result.returncode == 1
    assert "could not remove" in result.stdout and "permission denied" in result.stdout


def test_a_folder_nested_thousands_deep_is_walked_not_a_traceback(rendered: Path):
    """A folder tree 1,500 deep inside the root (deeper than Python's recursion limit): verify reports the
    file at its bottom and repair leaves it, each without a traceback."""
    root = rendered / "image-cache"
    fds = [os.open(root / "BTCUSDT", os.O_RDONLY | os.O_DIRECTORY)]
    try:
        for _ in range(1500):
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fds[-1]))
        os.close(os.open("notes.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fds[-1]))
        for command in ("verify", "repair"):
            result = run_cli(rendered, command, "--config", "image_cache.toml", "--json")
            assert "Traceback" not in result.stderr and "RecursionError" not in result.stderr, result.stderr[-2000:]
            assert "notes.txt" in result.stdout, (command, result.stdout[-2000:])
        os.unlink("notes.txt", dir_fd=fds[-1])
    finally:  # removed here, bottom up: a recursive removal (pytest's of old temp folders) would fail on it
        for parent in reversed(fds[:-1]):
            with contextlib.suppress(OSError):
                os.rmdir("d", dir_fd=parent)
        for fd in fds:
            os.close(fd)
