"""docs/api.md and docs/export.md run as written: each page's ```python blocks, in order, in one namespace, in an
empty folder, in-process (export.md's torch and torchvision blocks where those are installed)."""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path

import pytest

from conftest import REPO

API_DOC = REPO / "docs" / "api.md"
EXPORT_DOC = REPO / "docs" / "export.md"


def blocks(doc: Path = API_DOC) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", doc.read_text(), flags=re.DOTALL | re.MULTILINE)


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


def needs_missing_package(code: str) -> str | None:
    """torch or torchvision, when the block imports one that is not installed (the test venv has neither)."""
    for name in re.findall(r"^(?:from|import) (torch|torchvision)\b", code, flags=re.MULTILINE):
        if importlib.util.find_spec(name) is None:
            return name
    return None


def test_the_export_doc_runs(tmp_path: Path, monkeypatch):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    datasets = pytest.importorskip("datasets")
    datasets.disable_progress_bars()
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")  # not the user's cache
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__export_doc__"}
    ran = 0
    for number, code in enumerate(blocks(EXPORT_DOC), 1):
        if needs_missing_package(code):
            continue
        exec(compile(code, f"{EXPORT_DOC}:block {number}", "exec"), namespace)  # noqa: S102
        ran += 1
    assert ran >= 6 and (tmp_path / "dat-out" / "train" / "images.dat").is_file()
