"""Loading a compiled module (`make venv` builds each from its .c file), or a stand-in that fails clearly.

The build compiles the source's SHA-256 into the module; a missing build, or one made from another
version of the source, becomes a stand-in whose first use raises the caller's domain error naming the
fix, so that a checkout that skipped the build never runs code other than what its source says.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

# The fix, for both ways of having the code: a checkout builds in place, an installed copy is built by pip.
FIX = ("run `make venv` (a checkout) or reinstall with `pip install .` "
       "(both need a C compiler and the Python headers)")


class Unbuilt:
    """Stands in for the module: any use raises `error` with the reason it could not be loaded."""

    def __init__(self, reason: str, error: type[Exception]) -> None:
        self.reason, self.error = reason, error

    def __getattr__(self, name: str) -> Any:
        raise self.error(f"{self.reason}: {FIX}")


def load(module: str, what: str, source: Path, error: type[Exception]) -> ModuleType | Unbuilt:
    """The module `module` (dotted; `what` says what it is), if it was built from `source` as it is now."""
    path = module.replace(".", "/")
    try:
        loaded = importlib.import_module(module)
    except ImportError:
        return Unbuilt(f"{what} {path}.so is not built", error)
    try:
        same = loaded.SOURCE_SHA256 == hashlib.sha256(source.read_bytes()).hexdigest()
    except (AttributeError, OSError):  # a build that names no source, or a checkout without the source
        same = False
    return loaded if same else Unbuilt(f"{what} {path}.so was built from another {path}.c", error)


def require_built(*modules: ModuleType | Unbuilt) -> None:
    """Raise the error of the first of `modules` that is not built, before any work that would use it:
    a drawing kernel failing inside a window would look like a window the engine refuses."""
    for module in modules:
        if isinstance(module, Unbuilt):
            raise module.error(f"{module.reason}: {FIX}")


@functools.cache
def code_identity() -> str:
    """This copy's code: the package version and a digest of every Python and C source of the package.
    A Dask worker on another install (an older wheel, another checkout) would write other bytes under
    rows that name this run's preset, so each chunk carries the driver's identity and the worker
    compares (cache/work.py). Once a process: about 60 files."""
    from image_cache import __version__

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for p in package.rglob("*") if p.suffix in (".py", ".c")):
        digest.update(path.relative_to(package).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{__version__} (sources {digest.hexdigest()[:12]})"
