"""What one run's requests share: a stop flag, and per host, when to stop asking it.

A host that fails to connect a few times in a row (refused, no route, no DNS answer, connect timeout)
with no answer in between is down for the rest of the run: every later request to it fails at once
instead of being retried archive after archive while the network is out. Any answer, even a 404,
proves the host up. Download threads also stop at the stop flag (a signal in the main thread sets
it), between reads and before each request, and open their temp files through `open_temp` so that a
stopping run can remove the ones its abandoned threads leave.
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import threading
import urllib.error
import urllib.parse
from collections.abc import Callable
from typing import BinaryIO

from image_cache.core.errors import MarketError
from image_cache.core.hooks import no_warn

_NO_ROUTE = (errno.ENETUNREACH, errno.EHOSTUNREACH, errno.ENETDOWN, errno.EHOSTDOWN)
# Connection failures in a row that make a host down for the run.
TRIES = 3


class Stopped(Exception):
    """Raised in a download thread once the run is stopping."""


class HostDown(MarketError):
    """The host of this request is down for the rest of the run (a MarketError: one line wherever it ends)."""


def unreachable(exc: BaseException) -> OSError | None:
    """The reason when `exc` means no connection could be made, else None.

    urllib wraps in URLError only what fails before an answer (DNS, connect, sending the request);
    a failure while reading an answer is the server's or the link's trouble, not a host gone.
    """
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
    if isinstance(reason, (socket.gaierror, ConnectionError, TimeoutError)) or (
            isinstance(reason, OSError) and reason.errno in _NO_ROUTE):
        return reason
    return None


def _describe(reason: OSError) -> str:
    text = reason.strerror or str(reason) or type(reason).__name__
    return text[:1].lower() + text[1:]


class Network:
    def __init__(self, warn: Callable[[str], None] = no_warn, tries: int = TRIES):
        self.warn = warn
        self.tries = tries
        self.stop = threading.Event()
        self.down: dict[str, str] = {}  # host -> the line that said so
        self._failures: dict[str, int] = {}
        self._lock = threading.Lock()
        self._temps: set[str] = set()

    def check_stop(self) -> None:
        if self.stop.is_set():
            raise Stopped()

    def check(self, url: str) -> None:
        """Raise Stopped or HostDown instead of a request that must not be made."""
        self.check_stop()
        host = urllib.parse.urlsplit(url).netloc
        if host in self.down:
            raise HostDown(self.down[host])

    def answered(self, url: str) -> None:
        with self._lock:
            self._failures.pop(urllib.parse.urlsplit(url).netloc, None)

    def failed(self, url: str, reason: OSError) -> None:
        """Count a connection failure; the one that makes the host down says so, once."""
        host = urllib.parse.urlsplit(url).netloc
        with self._lock:
            count = self._failures[host] = self._failures.get(host, 0) + 1
            if count < self.tries or host in self.down:
                return
            line = self.down[host] = (f"network: {host} unreachable ({_describe(reason)}) after {count} tries; "
                                      "stopping downloads from it")
        self.warn(line)

    def sleep(self, seconds: float) -> None:
        """A backoff that a stopping run cuts short."""
        if self.stop.wait(seconds):
            raise Stopped()

    def open_temp(self, path: str) -> BinaryIO:
        with self._lock:
            self.check_stop()
            f = open(path, "wb")
            self._temps.add(path)
        return f

    def drop_temp(self, path: str) -> None:
        with self._lock:
            self._temps.discard(path)
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)

    def abandon(self) -> None:
        """Stop, and remove the temp files of threads still running (they may never get to)."""
        self.stop.set()
        with self._lock:
            for path in self._temps:
                with contextlib.suppress(FileNotFoundError):
                    os.remove(path)
            self._temps.clear()
