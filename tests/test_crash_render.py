"""SIGKILL a render at many moments; afterwards the index never points at a missing or partial file,
render + repair complete, verify --deep is clean, and every image equals an uninterrupted run's."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, index_rows, run_cli, tree_digest
from image_cache.chart import pixel_hash

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)

# Runs the real CLI with one main-process function wrapped so that it SIGKILLs itself at its N-th call.
CRASHER = r"""
import functools, os, signal, sys
import image_cache.cache.index as index, image_cache.cache.layout as layout, image_cache.cache.root as root
point, nth = sys.argv[1], int(sys.argv[2])
calls = [0]

def due():
    calls[0] += 1
    return calls[0] == nth

def die():
    os.kill(os.getpid(), signal.SIGKILL)

if point == "before-rename":  # temp file written, not renamed: a stray temp file
    real_write_atomic = root.write_atomic
    def write_atomic(folder_fd, names, datas):
        before = nth - 1 - calls[0]  # files of this batch written before the nth
        calls[0] += len(names)
        if before < len(names):  # what the C write leaves when killed between the nth's write and rename
            real_write_atomic(folder_fd, names[:before], datas[:before])
            temp = os.open(layout.temp_name(names[before]), os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=folder_fd)
            os.write(temp, datas[before])
            die()
        return real_write_atomic(folder_fd, names, datas)
    root.write_atomic = write_atomic
elif point == "after-rename":  # files in place, their rows not written: die once the nth is written
    real_write_many = root.Tree.write_many
    def write_many(self, files):
        result = real_write_many(self, files)
        calls[0] += result[0]
        if calls[0] >= nth:
            die()
        return result
    root.Tree.write_many = write_many
elif point == "in-commit":  # rows sent to SQLite, transaction not committed
    def upsert_rows(conn, rows):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO images (symbol, interval, end_open_time_ms, img_size_px, window_len, "
                         "style_version, style_name, spec_hash, file_path, status, created_utc, updated_utc) "
                         "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', '', '')",
                         [(r.symbol, r.interval, r.end_open_time_ms, r.img_size_px, r.window_len, r.style_version,
                           r.style_name, r.spec_hash, r.file_path) for r in rows])
        if due():
            die()
        conn.execute("ROLLBACK")
        real_upsert(conn, rows)
    real_upsert = index.upsert_rows
    index.upsert_rows = upsert_rows
elif point == "after-commit":  # a batch committed, the run not finished
    real_add = index.BatchWriter.flush
    def flush(self):
        real_add(self)
        if due():
            die()
    index.BatchWriter.flush = flush
# Small batches, so that kills land between index commits as well as inside them, and between batches
# of files (8 files each: after-rename 1, 25 and 150 stop after the 1st, 4th and 19th batch).
index.BatchWriter = functools.partial(index.BatchWriter, max_rows=40)
root.FileQueue.__init__.__defaults__ = (8, 4)
sys.argv = ["image_cache.py"] + sys.argv[3:]
from image_cache.cli.cache import main
sys.exit(main())
"""

POINTS = [("before-rename", 1), ("before-rename", 40), ("after-rename", 1), ("after-rename", 25),
          ("after-rename", 150), ("in-commit", 1), ("in-commit", 3), ("after-commit", 2)]
TIMED = [(jobs, seed) for jobs in ("1", "2") for seed in (1, 2, 3)]
ARGS = ("render", "--config", "image_cache.toml", "--size", "256")


@pytest.fixture(scope="module")
def reference(sample_market: Path, tmp_path_factory) -> Path:
    """The image tree of an uninterrupted run."""
    folder = tmp_path_factory.mktemp("reference")
    _prepare(folder, sample_market)
    assert run_cli(folder, *ARGS).returncode == 0
    return folder / "image-cache"


def _prepare(folder: Path, market: Path) -> None:
    from conftest import CONFIG
    shutil.copy(market, folder / "market.sqlite")
    (folder / "image_cache.toml").write_text(CONFIG)


def _ok_rows(folder: Path) -> list[tuple]:
    """Rows recorded as ok; a kill before the index schema was created leaves none."""
    db = folder / "image_cache.sqlite"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'images'").fetchone():
            return []
    return index_rows(db, "WHERE status = 'ok'")


def _assert_truthful_then_recovers(folder: Path, reference: Path, jobs: str) -> None:
    for row in _ok_rows(folder):
        path = folder / "image-cache" / row[3]
        assert path.is_file(), f"row without file: {row[3]}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row[4], f"row with partial file: {row[3]}"
    rerun = run_cli(folder, *ARGS, "--jobs", jobs)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    repair = run_cli(folder, "repair", "--config", "image_cache.toml", "--size", "256")
    assert repair.returncode == 0, repair.stdout + repair.stderr
    verify = run_cli(folder, "verify", "--config", "image_cache.toml", "--size", "256", "--deep")
    assert verify.returncode == 0, verify.stdout
    digest, expected = tree_digest(folder / "image-cache"), tree_digest(reference)
    assert digest == expected, _differences(folder / "image-cache", reference, [rerun, repair, verify])


def _differences(root: Path, reference: Path, runs: list[subprocess.CompletedProcess]) -> str:
    """Which files differ from the uninterrupted run's, and whether in their pixels or only their encoding."""
    digest, expected = tree_digest(root), tree_digest(reference)
    lines = []
    for path in sorted(set(digest) | set(expected)):
        if digest.get(path) == expected.get(path):
            continue
        if path not in digest or path not in expected:
            lines.append(f"{path}: {'extra' if path in digest else 'missing'}")
            continue
        same = pixel_hash((root / path).read_bytes()) == pixel_hash((reference / path).read_bytes())
        lines.append(f"{path}: sha256 {digest[path]} instead of {expected[path]}; "
                     f"{'same pixels, other encoding' if same else 'other pixels'}")
    return "\n".join(lines + [run.stdout + run.stderr for run in runs])


@pytest.mark.parametrize("point, nth", POINTS)
def test_kill_at_a_named_moment(tmp_path: Path, sample_market: Path, reference, point: str, nth: int):
    _prepare(tmp_path, sample_market)
    crashed = subprocess.run([sys.executable, "-c", CRASHER, point, str(nth), *ARGS, "--jobs", "1"],
                             cwd=tmp_path, capture_output=True, text=True,
                             env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
                             timeout=300)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    if point == "before-rename":
        assert list((tmp_path / "image-cache").rglob(".*.tmp"))
    _assert_truthful_then_recovers(tmp_path, reference, "1")


def _pngs(root: Path) -> int:
    return sum(1 for _ in root.rglob("*.png")) if root.exists() else 0


@pytest.mark.parametrize("jobs, seed", TIMED)
def test_kill_at_a_random_moment(tmp_path: Path, sample_market: Path, reference, jobs: str, seed: int):
    """Kill once a seeded number of images exist: a moment in the run's progress, whatever its speed."""
    _prepare(tmp_path, sample_market)
    target = random.Random(seed).randint(5, len(tree_digest(reference)) * 2 // 3)
    process = subprocess.Popen([sys.executable, str(REPO / "image_cache.py"), *ARGS, "--jobs", jobs],
                               cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    while process.poll() is None and _pngs(tmp_path / "image-cache") < target:
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # the main process and its workers at once
    assert process.wait() == -signal.SIGKILL, "the run finished before the kill"
    assert len(_ok_rows(tmp_path)) < len(tree_digest(reference))
    _assert_truthful_then_recovers(tmp_path, reference, jobs)
