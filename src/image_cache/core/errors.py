"""The errors: one root, `ImageCacheError`, and one subclass per kind; the message is shown to the user as is.

A caller of the library catches `ImageCacheError`; the command lines (cli/console.py) map the kinds to exit
codes in one place: ConfigError 2 (usage), LockHeld 75, any other ImageCacheError 1.
"""

from __future__ import annotations

import errno


class ImageCacheError(Exception):
    """The root of every error this package raises on purpose: the message is one line for the user."""


class ConfigError(ImageCacheError):
    """A bad setting or argument (a usage error): the message names the key (or flag) and the rule."""


class MarketError(ImageCacheError):
    """A problem with market data: a missing or foreign market database, a bad file, a rejected candle."""


class IndexFileError(ImageCacheError):
    """The file at the index path is not (or no longer) a usable image index."""


class RootError(ImageCacheError):
    """The image root is not ours, or a path would leave it."""


class LockFileError(ImageCacheError):
    """A lock file that is a link or not a regular file: refused, its target never touched."""


class ChartError(ImageCacheError, ValueError):
    """A bad spec or an undrawable window; the message is one line for the user.

    Also a ValueError, as it always was: the drawing kernels' input checks are caught as ValueError.
    """

    fingerprint: str | None = None  # the refused window's input fingerprint, set where it is drawn (cache/work.py)


class StorageError(ImageCacheError):
    """An OS or I/O failure (disk full, permission, I/O error); the OSError is kept as `os_error`."""

    def __init__(self, message: str, os_error: OSError | None = None):
        super().__init__(message)
        self.os_error = os_error


class WorkerError(ImageCacheError):
    """A chunk could not be finished (e.g. the image root is not writable, or the disk is full), or a
    worker (process or Dask worker) was lost.

    Carries the rows of the images the chunk did write, so that the driver indexes them before stopping.
    """

    def __init__(self, message: str, rows: list | None = None):
        rows = [] if rows is None else rows
        super().__init__(message, rows)
        self.message, self.rows = message, rows

    def __str__(self) -> str:
        return self.message


class LockHeld(ImageCacheError):
    """Another process holds a lock; `holder` says who, as recorded in the lock file."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is locked by another run ({holder or 'holder unknown'})")
        self.path = path
        self.holder = holder


# What the user can do about an OS error differs by kind: full disk, permission, I/O, damage.
_OS_KINDS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied", errno.EROFS: "read-only file system", errno.EIO: "I/O error"}


def storage_error(action: str, path: str, exc: OSError) -> StorageError:
    """A StorageError for an OS error, its message from `os_error_message`, the OSError kept."""
    return StorageError(os_error_message(action, path, exc), exc)


def os_error_message(action: str, path: str, exc: OSError) -> str:
    """One line for an OS error: what was being done, to which path, and what kind of failure."""
    kind = _OS_KINDS.get(exc.errno or 0)
    reason = exc.strerror or str(exc)
    return f"cannot {action} {path}: {kind} ({reason})" if kind else f"cannot {action} {path}: {reason}"
