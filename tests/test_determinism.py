"""Same market and settings give the same bytes: across runs, processes, --jobs, and render order."""

from __future__ import annotations

import shutil
from pathlib import Path

from conftest import index_rows, render_cli, tree_digest


def _render(folder: Path, *args: str) -> tuple[dict[str, str], list[tuple]]:
    result = render_cli(folder, *args)
    assert result.returncode == 0, result.stderr
    rows = [row[:8] for row in index_rows(folder / "image_cache.sqlite")]
    return tree_digest(folder / "image-cache"), rows


def test_bytes_equal_across_runs_and_jobs(workdir: Path, tmp_path_factory):
    other = tmp_path_factory.mktemp("jobs2")
    for name in ("market.sqlite", "image_cache.toml"):
        shutil.copy(workdir / name, other / name)
    one = _render(workdir, "--jobs", "1")
    two = _render(other, "--jobs", "2")
    assert one[0] and one == two


def test_order_does_not_matter(workdir: Path, tmp_path_factory):
    """Drawing ETH first then BTC, in pieces, gives the same files as one run."""
    whole = tmp_path_factory.mktemp("whole")
    for name in ("market.sqlite", "image_cache.toml"):
        shutil.copy(workdir / name, whole / name)
    expected = _render(whole)
    _render(workdir, "--symbols", "ETHUSDT", "--intervals", "4h")
    _render(workdir, "--symbols", "BTCUSDT", "--limit", "5")
    assert _render(workdir) == expected


def test_rerender_after_delete_is_identical(rendered: Path):
    before = tree_digest(rendered / "image-cache")
    shutil.rmtree(rendered / "image-cache")
    (rendered / "image_cache.sqlite").unlink()
    after, _ = _render(rendered)
    assert after == before
