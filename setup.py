"""The two compiled modules, for setuptools (pyproject.toml holds everything else).

Each is compiled with its source's SHA-256 (`-DSOURCE_SHA256="…"`), as `make venv` does, so that
image_cache/core/compiled.py refuses a build that does not match the .c beside it.
"""

import hashlib
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).resolve().parent


def extension(name: str, source: str) -> Extension:
    digest = hashlib.sha256((HERE / source).read_bytes()).hexdigest()
    return Extension(name, [source], define_macros=[("SOURCE_SHA256", f'"{digest}"')],
                     extra_compile_args=["-O3", "-Wall", "-fno-strict-aliasing"])


setup(ext_modules=[
    extension("image_cache.chart._kernel", "src/image_cache/chart/_kernel.c"),
    extension("image_cache.cache._files", "src/image_cache/cache/_files.c"),
])
