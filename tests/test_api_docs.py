"""docs/api.md runs as written: its ```python blocks, in order, in one namespace, in an empty folder, in-process."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

API_DOC = REPO / "docs" / "api.md"


def blocks() -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", API_DOC.read_text(), flags=re.S | re.M)


def test_the_api_doc_has_examples():
    assert len(blocks()) >= 7


def test_the_api_doc_runs(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__api_doc__"}
    for number, code in enumerate(blocks(), 1):
        exec(compile(code, f"{API_DOC}:block {number}", "exec"), namespace)  # noqa: S102
    assert (tmp_path / "chart.png").read_bytes().startswith(b"\x89PNG")
    assert (tmp_path / "dataset").is_dir()


def test_the_public_api():
    import image_cache
    for name in ("Settings", "render", "verify", "repair", "status", "export", "ChartDataset", "draw_chart",
                 "__version__", "ImageCacheError"):
        assert name in image_cache.__all__ and getattr(image_cache, name) is not None, name
