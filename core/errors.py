"""The domain errors: a message shown to the user as is (one line, exit 1; a held lock exits 75)."""

from __future__ import annotations


class MarketError(Exception):
    """A domain error about market data: the message is shown to the user as is."""


class LockHeld(MarketError):
    """Another process holds a lock; `holder` says who, as recorded in the lock file."""

    def __init__(self, path: str, holder: str):
        super().__init__(f"{path} is locked by another run ({holder or 'holder unknown'})")
        self.path = path
        self.holder = holder
