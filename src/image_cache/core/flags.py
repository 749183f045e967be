"""argparse `type=` converters both command lines and the ingest sources use: a value a domain check
refuses is a usage error (exit 2) before anything is opened."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

from image_cache.core.errors import ConfigError, ImageCacheError
from image_cache.core.grid import check_interval, check_symbol, utc_ms

T = TypeVar("T")


def _refused(message: str) -> Exception:
    """argparse's error for a refused value; argparse is imported only when a command line reads flags."""
    import argparse
    return argparse.ArgumentTypeError(message)


def flag_type(check: Callable[[str], T]) -> Callable[[str], T]:
    """An argparse `type=` from a domain check: a value it refuses is a usage error (exit 2)."""
    def convert(text: str) -> T:
        try:
            return check(text)
        except ImageCacheError as exc:
            raise _refused(str(exc)) from None
    return convert


def integer(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type=` for an integer in [low, high]."""
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _refused(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            bounds = f"at least {low}" if high is None else f"between {low} and {high}"
            raise _refused(f"must be {bounds}, got {value}")
        return value
    return convert


def seconds(text: str) -> float:
    """An argparse `type=` for a duration: a finite number of seconds, at least 0."""
    try:
        value = float(text)
    except ValueError:
        raise _refused(f"expected a number of seconds, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise _refused(f"must be a finite number of seconds, at least 0, got {text!r}")
    return value


def _list(check: Callable[[str], str]) -> Callable[[str], list[str]]:
    def parse(value: str) -> list[str]:
        items = [check(item.strip()) for item in value.split(",") if item.strip()]
        if not items:
            raise ConfigError(f"expected a comma-separated list, got {value!r}")
        return items
    return flag_type(parse)


def _date(text: str) -> str:
    utc_ms(text)
    return text


symbol = flag_type(check_symbol)
interval = flag_type(check_interval)
symbols = _list(check_symbol)
intervals = _list(check_interval)
date = flag_type(_date)
