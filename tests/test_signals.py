"""Stopping a run from outside: SIGTERM and Ctrl-C stop it cleanly, SIGKILL leaves no process behind.

`render --jobs 2` runs as a real subprocess with its forkserver pool; the processes of the run are
read from /proc while it draws, then the driver is signalled and none of them may survive 5 s.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, index_rows

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process tree from /proc")

# 1m windows: thousands of images in chunks of a few hundred, so the run is surely still drawing when
# signalled, after its first rows are indexed.
LIMIT = 6000
ARGS = ["render", "--pairs", "BTCUSDT,ETHUSDT", "--intervals", "1m", "--start", "2024-06-22", "--size", "256",
        "--window", "60", "--jobs", "2", "--limit", str(LIMIT)]


def _stat(pid: int) -> list[bytes] | None:
    """Fields of /proc/PID/stat after the command name (state first), None when gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def descendants(root: int) -> dict[int, bytes]:
    """pid -> start time of every process below `root`."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        fields = _stat(int(name)) if name.isdigit() else None
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = {}, [root]
    while todo:
        for pid in children.get(todo.pop(), []):
            fields = _stat(pid)
            if fields is not None:
                found[pid] = fields[19]
                todo.append(pid)
    return found


def alive(processes: dict[int, bytes]) -> list[int]:
    """The processes still running (the same pid and start time, and not a zombie)."""
    out = []
    for pid, started in processes.items():
        fields = _stat(pid)
        if fields is not None and fields[19] == started and fields[0] != b"Z":
            out.append(pid)
    return out


def start_render(cwd: Path) -> tuple[subprocess.Popen, dict[int, bytes]]:
    """A render drawing with two workers, and the processes of that run."""
    # As from a terminal: Ctrl-C not ignored, even when the suite itself was started in the background
    # (a shell without job control starts background commands with SIGINT ignored, and children inherit it).
    proc = subprocess.Popen([sys.executable, str(REPO / "image_cache.py"), *ARGS], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        processes = descendants(proc.pid)
        # forkserver + 2 workers (+ resource tracker), and the first chunks indexed
        if len(processes) >= 3 and indexed(cwd):
            return proc, processes
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.kill()
    pytest.fail("render did not start drawing within 120 s")


def indexed(cwd: Path) -> int:
    try:
        with sqlite3.connect(f"file:{cwd / 'image_cache.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT count(*) FROM images WHERE status = 'ok'").fetchone()[0]
    except sqlite3.OperationalError:  # not created yet
        return 0


def stop_survivors(processes: dict[int, bytes]) -> None:
    for pid in alive(processes):
        os.kill(pid, signal.SIGKILL)


def wait_gone(processes: dict[int, bytes], seconds: float = 5.0) -> list[int]:
    deadline = time.monotonic() + seconds
    while alive(processes) and time.monotonic() < deadline:
        time.sleep(0.05)
    return alive(processes)


def test_sigkill_leaves_no_process(workdir: Path):
    proc, processes = start_render(workdir)
    try:
        proc.kill()
        proc.wait(timeout=10)
        assert wait_gone(processes) == [], "worker processes outlived the killed render"
    finally:
        stop_survivors(processes)


@pytest.mark.parametrize("signum, code, message", [
    (signal.SIGTERM, 143, "Error: terminated"),
    (signal.SIGINT, 130, "Error: interrupted"),
])
def test_sigterm_and_ctrl_c_stop_cleanly(workdir: Path, signum: int, code: int, message: str):
    proc, processes = start_render(workdir)
    try:
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == code
        assert stderr.strip() == message  # one line, no traceback from the driver or a worker
        assert wait_gone(processes) == []
    finally:
        stop_survivors(processes)
    # The lock is free, and every row the index holds points at the complete file it describes.
    with open(workdir / "image_cache.sqlite.lock", "rb") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    rows = index_rows(workdir / "image_cache.sqlite", "WHERE status = 'ok'")
    assert 0 < len(rows) < LIMIT
    for row in rows:
        assert hashlib.sha256((workdir / "image-cache" / row[3]).read_bytes()).hexdigest() == row[4]
