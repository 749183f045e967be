"""Signals that end a run: SIGINT (Ctrl-C), SIGTERM (`kill`, `systemctl stop`), SIGHUP (its terminal closed).

Inside `stop_on_signals`, the first of them raises `Stopped` in the main thread, so the run stops through
the same cleanup as an error: queued work is cancelled, the rows of what is finished are written, the
lock is released. The later ones are then ignored (a closing shell sends its jobs a second SIGHUP), and
the cleanup has GRACE_S seconds: past that the process exits at once, which leaves what a crash leaves
and the next run or repair settles. Outside it (`exit_on_signals`: start-up, exit) nothing is held, so
a signal ends the process at once. A signal its starter ignored (`nohup`, `&`) stays ignored.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
GRACE_S = 5.0
# What signal.signal takes and signal.getsignal returns
Handler = Callable[[int, FrameType | None], Any] | int | signal.Handlers | None
_WHAT: dict[int, str] = {signal.SIGINT: "interrupted", signal.SIGTERM: "terminated", signal.SIGHUP: "hung up (SIGHUP)"}


class Stopped(KeyboardInterrupt):
    """One of SIGNALS, raised where the main thread was; a KeyboardInterrupt, so every `except Exception`
    lets it through as it does Ctrl-C."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum
        self.exit_code = 128 + signum  # as a shell reports a process the signal ended
        self.message = _WHAT[signum]


def _say(message: str) -> None:
    # After SIGHUP the terminal may be gone: writing to it fails, and that must not become a traceback.
    with contextlib.suppress(OSError, ValueError):
        print(f"Error: {message}", file=sys.stderr, flush=True)


def _exit_now(signum: int, *_: object) -> None:
    _say(_WHAT[signum])
    os._exit(128 + signum)


def _exit_late(signum: int) -> None:
    _say(f"{_WHAT[signum]}; its cleanup took over {GRACE_S:.0f} s and was cut short "
         "(the next run, or repair, settles what it left)")
    os._exit(128 + signum)


def _install(handler: Handler) -> dict[int, Handler]:
    """Set `handler` for each of SIGNALS not ignored; return what was there before."""
    previous: dict[int, Handler] = {signum: signal.getsignal(signum) for signum in SIGNALS}
    for signum, old in previous.items():
        if old is not signal.SIG_IGN:
            signal.signal(signum, _deferrable(handler) if callable(handler) else handler)
    return previous


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within: SIGNALS wait, and reach this process's handlers as soon as it ends: for a step a signal must
    not cut in two (starting a worker: a forkserver whose client hung up prints a traceback).

    Blocking them in this thread is not enough: a process-directed signal goes to any thread that does not
    block it (numpy's, Dask's), and Python then runs the handler in the main thread all the same. So the
    handlers themselves hold a signal that comes while a step is deferred, and it is raised again here."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    _deferring.append(True)
    try:
        yield
    finally:
        _deferring.pop()
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if not _deferring and _held:
            signum = _held[0]
            _held.clear()
            signal.raise_signal(signum)


# Steps deferring signals now (one entry each), and the signals that came meanwhile.
_deferring: list[bool] = []
_held: list[int] = []


def _deferrable(handler: Callable[[int, FrameType | None], Any]) -> Callable[[int, FrameType | None], Any]:
    def run(signum: int, frame: FrameType | None) -> None:
        if _deferring:
            _held.append(signum)
            return
        handler(signum, frame)
    return run


def exit_on_signals() -> None:
    """From now on, a signal ends the process at once with its one line (nothing is held yet)."""
    _install(_exit_now)


# The signal being obeyed, if any: Stopped raised inside a finaliser (a `__del__`, a weakref callback:
# Dask's futures have them) is printed and dropped by Python, so loops also ask `check()`.
_received: list[int] = []


def check() -> None:
    """Raise Stopped when a signal came and its Stopped has not reached this loop (it was dropped)."""
    if _received:
        raise Stopped(_received[0])


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """Within: the first signal raises Stopped, the later ones are ignored, the cleanup is bounded. A run
    that ends with a signal received, its Stopped dropped on the way, still ends as stopped."""
    deadline: list[threading.Timer] = []

    def stop(signum: int, frame: object) -> None:
        _received.append(signum)
        _install(signal.SIG_IGN)
        timer = threading.Timer(GRACE_S, _exit_late, (signum,))
        timer.daemon = True
        timer.start()
        deadline.append(timer)
        raise Stopped(signum)

    def unraisable(info: Any) -> None:
        # A Stopped raised inside a finaliser (a `__del__`, a weakref callback) is dropped by Python, which
        # printed it with its traceback: it is recorded in _received, and check() raises it again.
        if not isinstance(info.exc_value, Stopped):
            hook(info)

    previous = _install(stop)
    hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
        check()
    finally:
        sys.unraisablehook = hook
        for timer in deadline:
            timer.cancel()
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
        _received.clear()
