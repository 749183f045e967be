"""Stopping a run from outside: SIGINT, SIGTERM and SIGHUP stop every command cleanly within seconds,
SIGKILL leaves no process behind.

Commands run as real subprocesses (`render --jobs 2` with its forkserver pool); the processes of a run
are read from /proc, then the driver or its whole process group (as a terminal does) is signalled.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import REPO, index_rows

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                                   reason="reads the process tree from /proc")]

# 1m windows: thousands of images in chunks of a few hundred, so the run is surely still drawing when
# signalled, after its first rows are indexed.
LIMIT = 6000
ARGS = ["render", "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1m", "--start", "2024-06-22", "--size", "256",
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
                            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
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


def indexed(cwd: Path, name: str = "image_cache.sqlite") -> int:
    try:
        with sqlite3.connect(f"file:{cwd / name}?mode=ro", uri=True) as conn:
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
    (signal.SIGHUP, 129, "Error: hung up (SIGHUP)"),
])
def test_sigterm_ctrl_c_and_sighup_stop_cleanly(workdir: Path, signum: int, code: int, message: str):
    proc, processes = start_render(workdir)
    try:
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == code, stderr
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


# Small, quick runs (1,440 images of 64 px, ~1 s): 40 signals at random moments (make soak stops hundreds more).
QUICK = ["render", "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1h,15m", "--start", "2024-06-25", "--size", "64",
         "--window", "20", "--jobs", "2"]
TRIES = 40


def start_in_own_group(cwd: Path, args: list[str]) -> subprocess.Popen:
    """A run in a process group of its own, as a terminal starts a foreground command (Ctrl-C reaches
    every process of the group), with Ctrl-C at its default handling."""
    return subprocess.Popen([sys.executable, str(REPO / "image_cache.py"), *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def handles_signals(proc: subprocess.Popen) -> bool:
    """Whether the run has got past the interpreter's own start-up to its first line, which installs
    its SIGHUP handler (a signal before that ends any Python program without a word)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (signal.SIGHUP - 1) & 1)
    return False


def wait_handling(proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while not handles_signals(proc):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.002)


def test_ctrl_c_at_random_moments_always_ends_promptly(workdir: Path):
    """Ctrl-C at 40 random moments of `render --jobs 2` (start-up, pool start, planning, drawing, the end):
    every run ends within 10 s with exit 130 (or 0 when it had finished) and one line, the lock is free,
    and every row points at its complete file; repair then settles what was left."""
    from image_cache.cli.cache import main
    from image_cache.core.db import lock_is_held

    began = time.monotonic()
    calibration = start_in_own_group(workdir, QUICK + ["--index-db", "full.sqlite", "--image-root", "full"])
    assert calibration.wait() == 0, calibration.communicate()
    full = time.monotonic() - began
    rng, slowest = random.Random(23), 0.0
    for n in range(TRIES):
        where = ["--index-db", f"try{n}.sqlite", "--image-root", f"try{n}"]
        proc = start_in_own_group(workdir, QUICK + where)
        wait_handling(proc)
        time.sleep(rng.uniform(0, full * 1.1))
        signalled = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            stdout, stderr = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            pytest.fail(f"try {n}: the render was still running 10 s after Ctrl-C")
        slowest = max(slowest, time.monotonic() - signalled)
        if proc.returncode in (0, -signal.SIGINT):  # it had finished (-2: in the interpreter's last moments,
            assert stdout.startswith("drawn"), (n, stdout, stderr)  # when Python no longer handles signals)
            assert stderr == "", (n, stderr)
        else:
            assert (proc.returncode, stderr.strip()) == (130, "Error: interrupted"), (n, proc.returncode, stderr)
        assert not lock_is_held(str(workdir / f"try{n}.sqlite.lock")), n
        if not indexed(workdir, f"try{n}.sqlite"):  # stopped before its first rows
            continue
        for row in index_rows(workdir / f"try{n}.sqlite", "WHERE status = 'ok'"):
            assert hashlib.sha256((workdir / f"try{n}" / row[3]).read_bytes()).hexdigest() == row[4], (n, row[3])
        if n % 10 == 9:  # what was left, repair settles (in this process: quicker than two more runs)
            settle = ["--market-db", "market.sqlite", *QUICK[1:-2], "--jobs", "1", *where]
            with contextlib.chdir(workdir):
                assert main(["repair", *settle]) == 0, n
                assert main(["verify", "--deep", *settle]) == 0, n
    print(f"{TRIES} Ctrl-C tries: the slowest run ended {slowest:.2f} s after the signal")


@pytest.fixture(scope="module")
def quick_cache(sample_market: Path, tmp_path_factory) -> Path:
    """A folder with the sample market and the QUICK preset rendered."""
    folder = tmp_path_factory.mktemp("quick")
    shutil.copy(sample_market, folder / "market.sqlite")
    assert start_in_own_group(folder, QUICK).wait() == 0
    return folder


MESSAGES = {signal.SIGINT: "Error: interrupted", signal.SIGTERM: "Error: terminated",
            signal.SIGHUP: "Error: hung up (SIGHUP)"}
COMMANDS = {"render": QUICK, "verify": ["verify", "--deep", *QUICK[1:]], "repair": ["repair", *QUICK[1:]],
            "export": ["export", "out", "--format", "imagefolder", *QUICK[1:]],
            "preview": ["preview", "sheet.png", *QUICK[1:]]}


def holds_lock(cwd: Path, pid: int) -> bool:
    """Whether run `pid` has taken the index lock (read from the holder's line in the lock file: taking
    the lock to test it could make the run itself find it held)."""
    with contextlib.suppress(OSError):
        return (cwd / "image_cache.sqlite.lock").read_text().startswith(f"pid {pid}:")
    return False


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: signal.Signals(s).name)
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_signal_stops_every_command(quick_cache: Path, tmp_path: Path, command: str, signum: int):
    """Each signal, sent to the whole process group as a terminal does, stops each command while it works:
    within 5 s, exit 128 + signum and one line, the lock free, no temp output left; a stopped render or
    repair leaves only what repair settles."""
    from image_cache.cli.cache import main
    from image_cache.core.db import lock_is_held

    cwd = tmp_path / "run"
    shutil.copytree(quick_cache, cwd)
    if command == "render":
        shutil.rmtree(cwd / "image-cache")
        (cwd / "image_cache.sqlite").unlink()
    if command == "repair":  # every other image gone: repair re-draws them
        for path in sorted((cwd / "image-cache").rglob("*.png"))[::2]:
            path.unlink()
    proc = start_in_own_group(cwd, COMMANDS[command])
    wait_handling(proc)
    if command == "preview":  # it takes no lock: signal it while it starts up or picks its images
        time.sleep(0.2)
    deadline = time.monotonic() + 60
    while not holds_lock(cwd, proc.pid) and command != "preview":
        assert proc.poll() is None and time.monotonic() < deadline, "the command ended before it was signalled"
        time.sleep(0.005)
    signalled = time.monotonic()
    os.killpg(proc.pid, signum)
    try:
        _, stderr = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail(f"{command} still running 10 s after {signal.Signals(signum).name}")
    assert time.monotonic() - signalled < 5
    assert (proc.returncode, stderr.strip()) == (128 + signum, MESSAGES[signum])
    assert not lock_is_held(str(cwd / "image_cache.sqlite.lock"))
    assert not [p.name for p in cwd.iterdir() if p.name.endswith(".tmp")], "a temp output was left"
    assert not (cwd / "out").exists() and not (cwd / "sheet.png").exists()
    if command == "render" and indexed(cwd):  # (repair's rows of the files deleted above do not count)
        for row in index_rows(cwd / "image_cache.sqlite", "WHERE status = 'ok'"):
            assert hashlib.sha256((cwd / "image-cache" / row[3]).read_bytes()).hexdigest() == row[4], row[3]
    if command in ("render", "repair") and indexed(cwd):
        with contextlib.chdir(cwd):
            assert main(["repair", *QUICK[1:-2], "--jobs", "1"]) == 0
            assert main(["verify", "--deep", *QUICK[1:-2], "--jobs", "1"]) == 0


def test_sigterm_stops_a_dask_render(workdir: Path):
    """A render on a Dask cluster stops within seconds too: the futures in flight are cancelled, and a
    cluster that does not answer cannot hold the run past its grace time."""
    distributed = pytest.importorskip("distributed")
    from image_cache.core.db import lock_is_held
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                                  protocol="tcp", host="127.0.0.1") as cluster:
        proc = start_in_own_group(workdir, QUICK[:-2] + ["--executor", "dask", "--scheduler",
                                                         cluster.scheduler_address])
        wait_handling(proc)
        while not indexed(workdir):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.005)
        signalled = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
        assert time.monotonic() - signalled < 6
    assert (proc.returncode, stderr.strip()) == (143, "Error: terminated")
    assert not lock_is_held(str(workdir / "image_cache.sqlite.lock"))


HANGING_CLEANUP = """
import sys, time
from image_cache.cli import console
from image_cache.core import signals
signals.exit_on_signals()
def command():
    try:
        time.sleep(60)
    finally:
        time.sleep(60)  # a cleanup that does not end (a cluster that does not answer, a stuck disk)
sys.exit(console.run(command, False))
"""


def test_a_cleanup_that_does_not_end_is_cut_short():
    """The first signal starts the cleanup; a second (a closing shell sends SIGHUP again) does not cut it
    short, but a cleanup still running after the grace time is: the run ends in one line all the same."""
    proc = subprocess.Popen([sys.executable, "-c", HANGING_CLEANUP], stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
    wait_handling(proc)
    time.sleep(0.5)  # in the command
    signalled = time.monotonic()
    proc.send_signal(signal.SIGHUP)
    time.sleep(0.2)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=30)
    assert 4.5 < time.monotonic() - signalled < 8
    assert proc.returncode == 129
    assert stderr.splitlines() == ["Error: hung up (SIGHUP); its cleanup took over 5 s and was cut short "
                                   "(the next run, or repair, settles what it left)"]


def test_a_deferred_step_is_not_cut_when_the_signal_reaches_another_thread():
    """`deferred()` blocked the signals in its own thread only; a process-directed signal then went to
    another thread (numpy's, Dask's), and Python still ran the handler in the main thread, mid-step: Ctrl-C
    during a worker's start left the forkserver a half-sent request and a traceback (1 try in 50 here)."""
    from image_cache.core import signals

    other = threading.Thread(target=time.sleep, args=(2,), daemon=True)  # a thread that does not block them
    finished = False
    with pytest.raises(signals.Stopped) as stopped, signals.stop_on_signals():
        other.start()
        with signals.deferred():
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # many chances for a handler to run mid-step
                time.sleep(0.01)
            finished = True
    assert finished and stopped.value.signum == signal.SIGINT


def test_a_signal_inside_a_finaliser_is_not_printed_and_still_stops_the_run(capsys, monkeypatch):
    """Python drops an exception raised in a `__del__` or weakref callback and prints it with its traceback
    ("Exception ignored in ..."): a Ctrl-C that landed in one (a thread pool's weakref callback) printed that
    above the run's one line. The run still stops, as interrupted, and nothing else is printed."""
    import gc

    from image_cache.core import signals

    class Finalised:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGINT)
            deadline = time.monotonic() + 0.5
            while time.monotonic() < deadline:  # the handler runs in here
                time.sleep(0.01)

    monkeypatch.setattr(sys, "unraisablehook", sys.__unraisablehook__)  # Python's own, not pytest's
    with pytest.raises(signals.Stopped) as stopped, signals.stop_on_signals():
        Finalised()
        gc.collect()
        looped = True
    assert looped and stopped.value.signum == signal.SIGINT
    assert capsys.readouterr().err == ""
