"""The hooks libraries take so that they never print: `progress` wraps an iterable (a bar on a
terminal), `warn` logs one line. The no-op defaults serve library callers and tests; console.py
supplies the terminal versions."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypedDict, TypeVar

T = TypeVar("T")

Progress = Callable[..., Iterable[Any]]
Warn = Callable[[str], None]


class Hooks(TypedDict):
    """Both hooks, as a command line passes them on (`**hooks`) with their types kept."""
    progress: Progress
    warn: Warn


def no_progress(items: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it") -> Iterable[T]:
    return items


def no_warn(message: str) -> None:
    return None
