"""Executors: a failing worker stops the run cleanly; Dask gives the same bytes as --jobs 1."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from conftest import index_rows, render_cli, run_cli, tree_digest


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_failing_worker_reports_and_leaves_index_consistent(workdir: Path, tmp_path_factory, jobs: str):
    clean = tmp_path_factory.mktemp("clean")
    for name in ("market.sqlite", "image_cache.toml"):
        shutil.copy(workdir / name, clean / name)
    assert render_cli(clean).returncode == 0
    # A file where a month folder must go: every write into that folder fails.
    blocked = workdir / "image-cache" / "ETHUSDT" / "1h" / "2024"
    blocked.parent.mkdir(parents=True)
    blocked.write_text("in the way")

    result = render_cli(workdir, "--jobs", jobs, "--json")
    assert result.returncode == 1
    assert "Error: render stopped, a worker failed: cannot write" in result.stderr
    assert "ETHUSDT/1h/2024/06" in result.stderr
    report = json.loads(result.stdout)
    assert report["error"] and report["drawn"] > 0
    for row in index_rows(workdir / "image_cache.sqlite", "WHERE status = 'ok'"):
        assert (workdir / "image-cache" / row[3]).is_file()  # never a row without its file

    blocked.unlink()
    assert render_cli(workdir, "--jobs", jobs).returncode == 0
    assert run_cli(workdir, "repair", "--config", "image_cache.toml").returncode == 0  # adopts leftovers, if any
    verify = run_cli(workdir, "verify", "--config", "image_cache.toml", "--deep")
    assert verify.returncode == 0, verify.stdout
    assert tree_digest(workdir / "image-cache") == tree_digest(clean / "image-cache")


def test_dask_executor_matches_jobs_1(workdir: Path, tmp_path_factory):
    distributed = pytest.importorskip("distributed")
    local = tmp_path_factory.mktemp("local")
    for name in ("market.sqlite", "image_cache.toml"):
        shutil.copy(workdir / name, local / name)
    assert render_cli(local, "--jobs", "1").returncode == 0
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                                  protocol="tcp", host="127.0.0.1") as cluster:
        result = render_cli(workdir, "--executor", "dask", "--scheduler", cluster.scheduler_address, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["drawn"] > 0
    assert tree_digest(workdir / "image-cache") == tree_digest(local / "image-cache")
    strip = lambda rows: [r[:9] for r in rows]  # noqa: E731
    assert strip(index_rows(workdir / "image_cache.sqlite")) == strip(index_rows(local / "image_cache.sqlite"))


def _tasks_on_worker(_chunk: int) -> int:
    """How many tasks the worker running this one knows of (queued, running or held)."""
    import time

    from distributed import get_worker
    time.sleep(0.01)
    return len(get_worker().state.tasks)


def _slow(chunk: int) -> int:
    import time
    time.sleep(0.05)
    return chunk


def test_a_dask_cluster_left_without_workers_stops_the_run_after_worker_wait():
    """Every worker gone: Dask would wait for ever; the run stops once --worker-wait seconds pass with no
    worker, in one line (a WorkerError), and the results that came before it are kept."""
    import time

    distributed = pytest.importorskip("distributed")
    from image_cache.cache.executors import _dask_results
    from image_cache.core.errors import WorkerError
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                  protocol="tcp", host="127.0.0.1") as cluster:
        results = _dask_results(_slow, list(range(200)), cluster.scheduler_address, 2)
        got = [next(results)]
        cluster.scale(0)
        began = time.monotonic()
        with pytest.raises(WorkerError, match=r"no worker for 2 s \(--worker-wait\)"):
            got.extend(results)
        assert time.monotonic() - began < 8
    assert 1 <= len(got) < 200


def test_dask_keeps_a_bounded_number_of_chunks_in_flight():
    """Two chunks per worker thread at a time: 60 chunks never sit on the cluster at once."""
    distributed = pytest.importorskip("distributed")
    from image_cache.cache.executors import _dask_results
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None,
                                  protocol="tcp", host="127.0.0.1") as cluster:
        seen = list(_dask_results(_tasks_on_worker, list(range(60)), cluster.scheduler_address, 60))
    assert len(seen) == 60
    assert max(seen) <= 8, max(seen)  # 4 in flight, with room for tasks not yet released


def test_a_failed_chunks_rows_are_counted_by_what_they_are():
    """A chunk that stops on a write failure returns its rows so far; render once counted every one of them
    as drawn, also those recorded undrawable or blocked (issue 20: counts that count what they name)."""
    from types import SimpleNamespace

    from image_cache.cache.runner import RenderResult, tally
    result = RenderResult(dry_run=False)
    tally(result, [SimpleNamespace(status=s) for s in ("ok", "ok", "missing", "undrawable")])
    assert (result.drawn, result.blocked, result.undrawable, result.refused) == (2, 1, 1, 1)


def test_a_dask_wait_cut_by_a_signal_prints_no_traceback_of_distributeds():
    """distributed 2026.8's sync(), interrupted before it has a future, fails in its cancel callback and
    tornado logs that traceback on stderr (seen once in test_signals' SIGTERM of a Dask render): a run on
    Dask drops that one record, and only that one."""
    import logging

    distributed = pytest.importorskip("distributed")
    from image_cache.cache.executors import _dask_results

    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    tornado_log = logging.getLogger("tornado.application")
    tornado_log.addHandler(handler)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                                      protocol="tcp", host="127.0.0.1") as cluster:
            assert list(_dask_results(abs, [-3], cluster.scheduler_address, 10.0)) == [3]
        tornado_log.error("Exception in callback functools.partial(<function sync.<locals>.cancel at 0x7f>)")
        tornado_log.error("Exception in callback something else")
    finally:
        tornado_log.removeHandler(handler)
    assert seen == ["Exception in callback something else"]
