"""A real Dask cluster (issue 19): `dask scheduler` and two `dask worker` processes started the way Dask's docs
say, as separate OS processes importing the installed package (no PYTHONPATH), from a folder that holds its own
`config.py`, `cache/` and `core/`. Renders on it equal `--jobs 1` file for file and row for row, also when a
worker is killed mid-run; with every worker gone the run stops within --worker-wait, and repair and a new
render complete it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import CONFIG, index_rows, make_user_folder, run_cli, tree_digest

pytest.importorskip("distributed")
# One install for this module and test_packaging's: both run on the same xdist worker (Makefile: loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("installed")]

# The suite's config with more, shorter windows (a run that lasts a few seconds) and chunks for 4 threads.
CLUSTER_CONFIG = (CONFIG.replace('intervals = ["1h", "4h"]', 'intervals = ["15m", "1h"]')
                  .replace('start = "2024-06-25"\n', "").replace("jobs = 1", "jobs = 4"))
START_S = 60  # a cluster on a loaded 2-core machine


def _env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "DASK_SCHEDULER_ADDRESS")}


class Cluster:
    """A scheduler and its workers, each a process group of its own (a worker is a nanny and its child)."""

    def __init__(self, venv: Path, folder: Path) -> None:
        self.venv, self.folder, self.workers = venv, folder, []
        self.file = folder / "scheduler.json"
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                     "--scheduler-file", str(self.file))
        deadline = time.monotonic() + START_S
        while not (self.file.exists() and self.file.read_text().strip()):
            assert time.monotonic() < deadline and self.scheduler.poll() is None, "the scheduler did not start"
            time.sleep(0.1)
        self.address = json.loads(self.file.read_text())["address"]

    def _start(self, *args: str) -> subprocess.Popen:
        log = open(self.folder / f"{args[0]}-{len(self.workers)}.log", "wb")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen([str(self.venv / "bin" / "python"), "-m", "dask", *args], cwd=self.folder,
                                env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def add_workers(self, count: int) -> None:
        self.workers = [worker for worker in self.workers if worker.poll() is None]
        for _ in range(count):
            self.workers.append(self._start("worker", "--scheduler-file", str(self.file), "--nthreads", "1",
                                            "--no-dashboard", "--host", "127.0.0.1"))
        from distributed import Client
        with Client(self.address, timeout=START_S) as client:
            client.wait_for_workers(len(self.workers), timeout=START_S)

    def kill_worker(self, worker: subprocess.Popen) -> None:
        """As a lost machine: the worker and its nanny at once, no goodbye to the scheduler."""
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(10)

    def close(self) -> None:
        for process in [*self.workers, self.scheduler]:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)


@pytest.fixture(scope="module")
def started(installed: Path, tmp_path_factory) -> Iterator[Cluster]:
    """One scheduler for the module, in a user's folder of its own (each Dask process costs ~1 s of CPU)."""
    running = Cluster(installed, make_user_folder(tmp_path_factory.mktemp("cluster")))
    try:
        yield running
    finally:
        running.close()


@pytest.fixture
def cluster(started: Cluster) -> Cluster:
    """The cluster with two live workers (the tests before may have killed some)."""
    started.add_workers(2 - sum(worker.poll() is None for worker in started.workers))
    return started


@pytest.fixture(scope="module")
def reference(installed: Path, tmp_path_factory) -> Path:
    """A checkout's `--jobs 1` render of a 60-day sample market (about 14,000 images)."""
    folder = tmp_path_factory.mktemp("reference")
    (folder / "image_cache.toml").write_text(CLUSTER_CONFIG)
    made = run_cli(folder, "sample", "--market-db", "market.sqlite", "--symbols", "BTCUSDT,ETHUSDT", "--days", "60",
                   "--seed", "7", module="ingest")
    assert made.returncode == 0, made.stderr
    drawn = run_cli(folder, "render", "--config", "image_cache.toml", "--jobs", "1")
    assert drawn.returncode == 0, drawn.stderr
    return folder


def _prepare(folder: Path, reference: Path) -> None:
    shutil.copy(reference / "market.sqlite", folder / "market.sqlite")
    (folder / "image_cache.toml").write_text(CLUSTER_CONFIG)


def _render(venv: Path, folder: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([str(venv / "bin" / "image-cache"), "render", "--config", "image_cache.toml",
                             "--executor", "dask", "--json", *args], cwd=folder, env={**_env(), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _when_images_appear(folder: Path, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_S
    while not any((folder / "image-cache").rglob("*.png")):
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _same_as(folder: Path, reference: Path) -> None:
    assert tree_digest(folder / "image-cache") == tree_digest(reference / "image-cache")
    assert index_rows(folder / "image_cache.sqlite") == index_rows(reference / "image_cache.sqlite")


def test_a_cluster_of_dasks_own_commands_renders_the_bytes_of_jobs_1_also_when_a_worker_dies(
        installed: Path, cluster: Cluster, reference: Path, user_folder: Path):
    folder = user_folder
    _prepare(folder, reference)
    # The scheduler named by Dask's own config file (DASK_CONFIG), not by a flag.
    (folder / "dask.yaml").write_text(f"scheduler-address: {cluster.address}\n")
    render = _render(installed, folder, env={"DASK_CONFIG": str(folder / "dask.yaml")})
    _when_images_appear(folder, render)
    lost = cluster.workers[0]
    cluster.kill_worker(lost)
    # What a worker killed mid-write leaves (it happened here 1 run in ~10): the temp file of its image.
    last = sorted(tree_digest(reference / "image-cache"))[-1]
    left = folder / "image-cache" / Path(last).parent / f".{Path(last).name}.99999.tmp"
    left.parent.mkdir(parents=True, exist_ok=True)
    left.write_bytes(b"half a png")
    out, err = render.communicate(timeout=300)
    assert render.returncode == 0, err
    assert re.search(r"removed \d+ temporary files? left by the lost worker\n", err), err
    report = json.loads(out)
    assert len(report["lost_workers"]) == 1 and report["error"] is None, (report, err)
    address = report["lost_workers"][0]
    assert f"Dask worker {address} left the cluster during the run" in err
    _same_as(folder, reference)


def test_a_cluster_left_without_workers_stops_in_one_line_and_repair_and_a_render_complete_it(
        installed: Path, cluster: Cluster, reference: Path, user_folder: Path):
    folder = user_folder
    _prepare(folder, reference)
    render = _render(installed, folder, "--worker-wait", "3", env={"DASK_SCHEDULER_ADDRESS": cluster.address})
    _when_images_appear(folder, render)
    for worker in cluster.workers:
        cluster.kill_worker(worker)
    stopped = time.monotonic()
    out, err = render.communicate(timeout=60)
    assert time.monotonic() - stopped < 3 + 10  # the wait, a poll, and the driver's own stop
    assert render.returncode == 1
    errors = [line for line in err.splitlines() if line.startswith("Error:")]
    assert errors == [f"Error: render stopped, a worker failed: the Dask cluster at {cluster.address} has had no "
                      "worker for 3 s (--worker-wait): stopped; repair adopts the files already written"], err
    assert "Traceback" not in err
    report = json.loads(out)
    assert report["drawn"] < 14_000 and len(report["lost_workers"]) == 2, (report, err)
    # A truthful index: every row it has names its file.
    for row in index_rows(folder / "image_cache.sqlite", "WHERE status = 'ok'"):
        assert (folder / "image-cache" / row[3]).is_file()

    repaired = subprocess.run([str(installed / "bin" / "image-cache"), "repair", "--config", "image_cache.toml",
                               "--json"], cwd=folder, env=_env(), capture_output=True, text=True, timeout=300)
    assert repaired.returncode == 0, repaired.stderr
    assert report["drawn"] + json.loads(repaired.stdout)["adopted"] > 0  # what the workers wrote is kept
    cluster.add_workers(2)
    resumed = _render(installed, folder, "--scheduler", cluster.address)
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    assert json.loads(out)["drawn"] > 0
    _same_as(folder, reference)


def test_a_worker_on_other_code_is_refused(installed: Path, cluster: Cluster, reference: Path, user_folder: Path):
    """A worker whose install differs from the driver's (here: the driver is the checkout, one changed source
    file away) would write other bytes under the same preset: its chunks are refused, in one line."""
    folder = user_folder
    _prepare(folder, reference)
    checkout = shutil.copytree(Path(__file__).resolve().parents[1] / "src", folder / "driver-src",
                               ignore=shutil.ignore_patterns("__pycache__"))
    with open(checkout / "image_cache" / "cache" / "status.py", "a") as changed:
        changed.write("\n# a local change\n")
    driver = subprocess.run([str(installed / "bin" / "python"), "-c",
                             "import sys; from image_cache.cli.main import main; sys.exit(main(sys.argv[1:]))",
                             "render", "--config", "image_cache.toml", "--executor", "dask",
                             "--scheduler", cluster.address],
                            cwd=folder, env={**_env(), "PYTHONPATH": str(checkout)}, capture_output=True, text=True,
                            timeout=300)
    assert driver.returncode == 1
    assert "install the same build on every worker" in driver.stderr, driver.stderr
    assert "Traceback" not in driver.stderr
