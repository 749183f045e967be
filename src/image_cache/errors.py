"""The errors a caller of the library may see: one root, `ImageCacheError`, and one subclass per kind.

    try:
        image_cache.render(settings)
    except image_cache.ImageCacheError as exc:
        print(f"render failed: {exc}")    # one line, meant for a person

The classes live in `image_cache.core.errors` (every part may raise them); this module names them for callers.
"""

from image_cache.core.errors import (
    ChartError,
    ConfigError,
    ImageCacheError,
    IndexFileError,
    LockFileError,
    LockHeld,
    MarketError,
    RootError,
    StorageError,
    WorkerError,
)

__all__ = ["ChartError", "ConfigError", "ImageCacheError", "IndexFileError", "LockFileError", "LockHeld",
           "MarketError", "RootError", "StorageError", "WorkerError"]
