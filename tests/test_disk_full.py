"""A full or read-only image root stops the render with a clear error and a consistent index;
once space returns, render completes with the same bytes as an undisturbed run."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import index_rows, render_cli, run_cli, tree_digest

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)


def _mount(root: Path, options: str) -> bool:
    return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root)],
                          capture_output=True).returncode == 0


@pytest.fixture
def small_root(workdir: Path):
    """image-cache on a 200 KiB tmpfs: too small for the run."""
    root = workdir / "image-cache"
    root.mkdir()
    if not _mount(root, "size=200k"):
        pytest.skip("cannot mount a tmpfs here (needs root); test_injected_enospc covers the same path")
    yield root
    subprocess.run(["umount", str(root)], check=True)


def _reference(workdir: Path, tmp_path_factory) -> dict[str, str]:
    clean = tmp_path_factory.mktemp("clean")
    for name in ("market.sqlite", "image_cache.toml"):
        shutil.copy(workdir / name, clean / name)
    assert render_cli(clean).returncode == 0
    return tree_digest(clean / "image-cache")


def _index_is_truthful(workdir: Path) -> int:
    rows = index_rows(workdir / "image_cache.sqlite", "WHERE status = 'ok'")
    for row in rows:
        path = workdir / "image-cache" / row[3]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == row[4]
    return len(rows)


def test_disk_full_then_space_returns(workdir: Path, small_root: Path, tmp_path_factory):
    reference = _reference(workdir, tmp_path_factory)
    result = render_cli(workdir)
    assert result.returncode == 1
    assert "render stopped, a worker failed: cannot write" in result.stderr
    assert "No space left on device" in result.stderr
    assert 0 < _index_is_truthful(workdir) < len(reference)
    assert not list(small_root.rglob("*.tmp"))

    subprocess.run(["mount", "-o", "remount,size=20m", str(small_root)], check=True)
    assert render_cli(workdir).returncode == 0
    assert run_cli(workdir, "verify", "--config", "image_cache.toml", "--deep").returncode == 0
    assert tree_digest(small_root) == reference


def test_read_only_root_then_writable(workdir: Path, small_root: Path, tmp_path_factory):
    reference = _reference(workdir, tmp_path_factory)
    subprocess.run(["mount", "-o", "remount,ro,size=20m", str(small_root)], check=True)
    result = render_cli(workdir)
    assert result.returncode == 1
    assert "Read-only file system" in result.stderr
    assert _index_is_truthful(workdir) == 0
    subprocess.run(["mount", "-o", "remount,rw", str(small_root)], check=True)
    assert render_cli(workdir).returncode == 0
    assert tree_digest(small_root) == reference


INJECTOR = r"""
import errno, sys
import image_cache.cache.layout as layout
budget = [int(sys.argv[1])]
real = layout.FILE_WRITER
class Full:  # the C writer on a disk that fills up: it stops at the first file that does not fit
    SOURCE_SHA256 = real.SOURCE_SHA256
    @staticmethod
    def write_atomic(folder, names, temps, datas):
        fit = 0
        while fit < len(datas) and budget[0] >= len(datas[fit]):
            budget[0] -= len(datas[fit])
            fit += 1
        written, err = real.write_atomic(folder, names[:fit], temps[:fit], datas[:fit])
        return (written, err) if err or fit == len(datas) else (written, errno.ENOSPC)
layout.FILE_WRITER = Full
sys.argv = ["image_cache.py"] + sys.argv[2:]
from image_cache.cli.cache import main
sys.exit(main())
"""


def test_injected_enospc(workdir: Path, tmp_path_factory):
    """The same failure without a mount: writes of image files fail once a byte budget is spent. (The fake
    writer creates no temp file for the file that does not fit; the C writer's own handling of a short
    write, removing its temp file, is what test_disk_full_then_space_returns runs on a real full disk.)"""
    import sys
    reference = _reference(workdir, tmp_path_factory)
    result = subprocess.run([sys.executable, "-c", INJECTOR, "150000", "render", "--config", "image_cache.toml",
                             "--jobs", "1"], cwd=workdir, capture_output=True, text=True,
                            env={"PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src"),
                                 "PATH": "/usr/bin:/bin"})
    assert result.returncode == 1 and "No space left on device" in result.stderr
    assert 0 < _index_is_truthful(workdir) < len(reference)
    assert not list((workdir / "image-cache").rglob("*.tmp"))
    assert render_cli(workdir).returncode == 0
    assert tree_digest(workdir / "image-cache") == reference


def test_a_chunk_stops_drawing_once_a_file_cannot_be_written(tmp_path: Path, monkeypatch):
    """Files are written on a thread of their own; once one fails, the chunk stops drawing (it used to
    draw every remaining window for nothing) and reports the error with no rows."""
    import numpy as np

    from chart_windows import START_MS, trending
    from image_cache import chart
    from image_cache.cache import work
    from image_cache.cache.index import preset_of
    from image_cache.cache.windows import Series

    spec, count = chart.make_spec("mike", 64, 20), 2000
    series = Series("BTCUSDT", "15m", START_MS + 900_000 * np.arange(count, dtype=np.int64), trending(count))
    last = np.arange(spec.window_len - 1, count)
    [chunk] = work.split_months(series, last, [None] * len(last), spec, preset_of(spec), str(tmp_path),
                                max_windows=count)
    (tmp_path / "BTCUSDT").write_bytes(b"not a folder")
    drawn, real_draw = [], work.draw_window
    monkeypatch.setattr(work, "draw_window", lambda chunk, last: drawn.append(last) or real_draw(chunk, last))
    with pytest.raises(work.WorkerError, match="BTCUSDT is a link or not a folder") as caught:
        work.draw_chunk(chunk)
    assert caught.value.rows == []
    assert len(drawn) <= 64 * 6 < len(last)  # the failed batch, those queued behind it, the one being filled
