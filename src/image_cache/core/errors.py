"""The domain errors: a message shown to the user as is (one line, exit 1; a held lock exits 75)."""

from __future__ import annotations

import errno


class MarketError(Exception):
    """A domain error about market data: the message is shown to the user as is."""


class LockHeld(MarketError):
    """Another process holds a lock; `holder` says who, as recorded in the lock file."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is locked by another run ({holder or 'holder unknown'})")
        self.path = path
        self.holder = holder


# What the user can do about an OS error differs by kind: full disk, permission, I/O, damage.
_OS_KINDS = {errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EACCES: "permission denied",
             errno.EPERM: "permission denied", errno.EROFS: "read-only file system", errno.EIO: "I/O error"}


def os_error_message(action: str, path: str, exc: OSError) -> str:
    """One line for an OS error: what was being done, to which path, and what kind of failure."""
    kind = _OS_KINDS.get(exc.errno or 0)
    reason = exc.strerror or str(exc)
    return f"cannot {action} {path}: {kind} ({reason})" if kind else f"cannot {action} {path}: {reason}"
