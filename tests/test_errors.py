"""One error root: every error the package raises on purpose is an ImageCacheError, one subclass per kind,
and the command lines map the kinds to exit codes in one place (cli/console.py)."""

from __future__ import annotations

import dataclasses
import errno
import importlib
import inspect
import pkgutil
from pathlib import Path

import pytest

import image_cache
from image_cache import errors
from image_cache.cache.export import ExportOptions, export
from image_cache.cache.market import Filters
from image_cache.cache.runner import render
from image_cache.cache.verify import repair, verify
from image_cache.cli import console
from image_cache.core.errors import ImageCacheError, StorageError, storage_error
from image_cache.settings import load

# Control flow inside one module, never raised to a caller: retry signals of the downloaders, the signal that
# stops a command (a KeyboardInterrupt on purpose), a pass that must start over sorted.
INTERNAL = {
    "image_cache.core.signals.Stopped", "image_cache.ingest.network.Stopped",
    "image_cache.ingest.download.Failed", "image_cache.ingest.download.NotFound",
    "image_cache.ingest.download.Transient", "image_cache.ingest.download.Unreachable",
    "image_cache.ingest.rest.RateLimited", "image_cache.ingest.rest.Transient", "image_cache.ingest.rest.Unreachable",
    "image_cache.ingest.series_check.OutOfOrder", "image_cache.ingest.series_check._NeedsSorting",
}


def _package_errors() -> list[type]:
    """Every exception class defined in the package (the command lines and the launchers aside)."""
    found = set()
    for info in pkgutil.walk_packages(image_cache.__path__, "image_cache."):
        if info.name.startswith("image_cache.cli") or info.name.endswith(("._kernel", "._files")):
            continue
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__.startswith("image_cache."):
                found.add(obj)
    return sorted(found, key=lambda c: c.__qualname__)


def test_every_public_error_is_an_image_cache_error():
    classes = _package_errors()
    names = {c.__name__ for c in classes}
    assert {"MarketError", "ConfigError", "IndexFileError", "NotAnIndex", "DamagedIndex", "RootError", "LockHeld",
            "LockFileError", "ChartError", "WorkerError", "StorageError", "RuleError"} <= names
    outside = [f"{c.__module__}.{c.__qualname__}" for c in classes
               if not issubclass(c, ImageCacheError) and f"{c.__module__}.{c.__qualname__}" not in INTERNAL]
    assert not outside, outside
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), ImageCacheError)


def test_the_kinds_are_siblings_not_market_errors():
    for kind in (errors.ConfigError, errors.IndexFileError, errors.RootError, errors.LockHeld, errors.LockFileError,
                 errors.ChartError, errors.WorkerError, errors.StorageError):
        assert not issubclass(kind, errors.MarketError), kind
    assert issubclass(errors.ChartError, ValueError)  # the kernels' input checks are still caught as ValueError


def test_an_os_error_is_kept():
    cause = OSError(errno.ENOSPC, "No space left on device")
    exc = storage_error("write", "/x/y.png", cause)
    assert isinstance(exc, StorageError) and exc.os_error is cause
    assert str(exc) == "cannot write /x/y.png: disk full (No space left on device)"


def test_the_exit_codes_of_the_kinds():
    assert console.exit_code(errors.LockHeld("x.lock", "pid 1")) == console.EXIT_LOCKED
    assert console.exit_code(errors.ConfigError("raised by the library, before any work")) == console.EXIT_USAGE
    for exc in (errors.MarketError("m"), errors.ChartError("c"), errors.WorkerError("w"), errors.RootError("r"),
                errors.StorageError("s"), errors.IndexFileError("i")):
        assert console.exit_code(exc) == console.EXIT_FAILURE


def test_a_caller_catches_one_root(workdir: Path, monkeypatch):
    """render, verify, repair and export each fail with an ImageCacheError that a caller catches as one."""
    monkeypatch.chdir(workdir)
    settings = load("image_cache.toml")
    with pytest.raises(ImageCacheError, match="market database not found"):
        render(dataclasses.replace(settings, market_db_path="no-market.sqlite"))
    for call in (verify, repair):  # nothing rendered yet: no index
        with pytest.raises(ImageCacheError):
            call(settings)
    with pytest.raises(ImageCacheError):
        export(settings, Filters(), "out", ExportOptions(format="imagefolder"))
