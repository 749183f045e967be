"""Settings of the renderer: defaults < TOML file (`[image_cache]` table) < command-line flags.

Every setting is declared once in OPTIONS; the CLI flags (`image_cache.cli.settings`), the TOML keys and
the validation all come from that one table. This module is the library's side: a plain dataclass and its
validation, importable without argparse or the command lines.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from image_cache import chart
from image_cache.core.errors import ConfigError, ImageCacheError
from image_cache.core.grid import check_interval, check_symbol, utc_ms
from image_cache.core.hooks import Warn, no_warn


@dataclass(frozen=True)
class Settings:
    market_db_path: str = "market.sqlite"
    image_index_db: str = "image_cache.sqlite"
    image_root_dir: str = "image-cache"
    pairs: tuple[str, ...] = ("BTCUSDT", "ETHUSDT", "DOGEUSDT", "XLMUSDT", "XRPUSDT", "LTCUSDT",
                              "DOTUSDT", "SHIBUSDT", "BNBUSDT")
    intervals: tuple[str, ...] = ("15m", "30m", "1h", "4h", "12h", "1d", "1w")
    img_size_px: int = 1280
    window_len: int = 150
    style_name: str = "mike"
    style_version: int = 1
    jkx_height: int = 64
    start: str = "2019-01-01"
    end: str | None = None
    stride: int = 1
    gap_policy: str = "skip"
    jobs: int = 0  # 0: one worker per core
    jobs_over_cores: bool = False
    executor: str = "local"
    scheduler: str | None = None
    worker_wait: int = 180  # seconds a Dask run waits while its cluster has no worker

    def __post_init__(self) -> None:
        # Built directly (the API) as well as by load(): a URL never becomes a local folder named `s3:`.
        for name in ("market_db_path", "image_index_db", "image_root_dir"):
            _refuse_url(name, getattr(self, name))

    @property
    def start_ms(self) -> int:
        return utc_ms(self.start)

    @property
    def end_ms(self) -> int | None:
        return utc_ms(self.end)

    @property
    def workers(self) -> int:
        """Local worker processes: `jobs`, or one per core (0). Never more than the cores present unless
        `jobs_over_cores`: each worker draws flat out, so more only share the cores and add start-up and
        memory (`--jobs 48` on 2 cores took 21 s for 250 images instead of 0.3 s)."""
        cores = cores_present()
        if self.executor != "local" or self.jobs_over_cores:
            return self.jobs or cores
        return min(self.jobs or cores, cores)

    def jobs_note(self) -> str | None:
        """The one line saying that `--jobs` was capped, when it was."""
        if self.jobs <= self.workers:
            return None
        return (f"--jobs {self.jobs}: {self.workers} worker processes, one per core present "
                "(--jobs-over-cores allows more)")


def cores_present() -> int:
    """The cores this process may run on (its affinity, as os.process_cpu_count gives from Python 3.13)."""
    if hasattr(os, "process_cpu_count"):
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


# A config file is a few hundred bytes; anything far larger is not one (and is not read whole).
MAX_CONFIG_BYTES = 1 << 20


def _at_least(low: int) -> Callable[[str, int], int]:
    def check(name: str, value: int) -> int:
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value}")
        return value
    return check


_positive = _at_least(1)


def _names(parse: Callable[[str], str]) -> Callable[[str, Any], tuple[str, ...]]:
    def check(name: str, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(f"{name} must be a non-empty list")
        try:
            return tuple(parse(str(item).strip()) for item in items)
        except ImageCacheError as exc:
            raise ConfigError(f"{name}: {exc}") from None
    return check


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def check(name: str, value: Any) -> str:
        if value not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
        return value
    return check


def _date(name: str, value: Any) -> str | None:
    if value is None:
        return None
    try:
        utc_ms(str(value))
    except ImageCacheError as exc:
        raise ConfigError(f"{name}: {exc}") from None
    return str(value)


def _int(check: Callable[[str, int], int] | None = None) -> Callable[[str, Any], int]:
    def convert(name: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{name} must be an integer, got {value!r}") from None
        return check(name, number) if check else number
    return convert


def _switch(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{name} must be a non-empty string")
    return value


# `scheme://…`: s3://, gs://, az://, http://, file://, ...
URL_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _refuse_url(name: str, value: Any) -> None:
    if isinstance(value, str) and URL_RE.match(value):
        scheme = value.split(":", 1)[0]
        raise ConfigError(f"{name} {value!r} is a URL: {scheme}:// is not supported; the image root, the index and "
                          "the market must be on a local or mounted file system (mount the bucket, e.g. with "
                          "s3fs or gcsfuse, and give that folder)")


def _path(name: str, value: Any) -> str:
    if "\0" in _text(name, value):
        raise ConfigError(f"{name} must not contain a NUL character")
    _refuse_url(name, value)
    return value


@dataclass(frozen=True)
class Option:
    field: str
    flag: str
    help: str
    convert: Callable[[str, Any], Any]
    metavar: str | None = None  # None: a switch, a flag without a value

    @property
    def key(self) -> str:
        """The config file's key: the flag's name (`--market-db` is `market_db`)."""
        return self.flag.lstrip("-").replace("-", "_")


OPTIONS: tuple[Option, ...] = (
    Option("market_db_path", "--market-db", "market database (render, verify and export open it read-only)", _path,
           "PATH"),
    Option("image_index_db", "--index-db", "image index database", _path, "PATH"),
    Option("image_root_dir", "--image-root", "folder the images are written under", _path, "DIR"),
    Option("pairs", "--symbols", "comma-separated symbols", _names(check_symbol), "SYMS"),
    Option("intervals", "--intervals", "comma-separated interval codes to draw", _names(check_interval), "IVS"),
    Option("img_size_px", "--size", "image edge in pixels (square presets)", _int(_positive), "PX"),
    Option("window_len", "--window", "candles per image", _int(_positive), "N"),
    Option("style_name", "--style", chart.STYLES_USAGE, _text, "STYLE"),
    Option("style_version", "--style-version", "your version number of the style, part of file names",
           _int(_positive), "N"),
    Option("jkx_height", "--jkx-height", "jkx image height for window lengths other than 5, 20, 60",
           _int(_positive), "PX"),
    Option("start", "--start", "first window end, UTC date", _date, "DATE"),
    Option("end", "--end", "window ends before this UTC date (default: now)", _date, "DATE"),
    Option("stride", "--stride", "draw every N-th window on the interval grid", _int(_positive), "N"),
    Option("gap_policy", "--gap-policy", "skip: no image for a window with a gap; render: draw it anyway",
           _choice("skip", "render"), "POLICY"),
    Option("jobs", "--jobs", "worker processes; 0 (the default): one per core; at most one per core present",
           _int(_at_least(0)), "N"),
    Option("jobs_over_cores", "--jobs-over-cores", "allow --jobs above the cores present", _switch),
    Option("executor", "--executor", "local process pool, or dask", _choice("local", "dask"), "NAME"),
    Option("scheduler", "--scheduler", "Dask scheduler address (with --executor dask)", _text, "ADDRESS"),
    Option("worker_wait", "--worker-wait", "seconds a Dask run waits while its cluster has no worker, then "
           "stops (default 180)", _int(_positive), "S"),
)
_BY_FIELD = {option.field: option for option in OPTIONS}
_BY_KEY = {option.key: option for option in OPTIONS}
# Where a config file is looked for when none is named: the environment, the working folder, the user's.
CONFIG_ENV = "IMAGE_CACHE_CONFIG"
CONFIG_NAME = "image_cache.toml"


def find_config(named: str | None = None) -> str | None:
    """The config file a command reads: the one named (`--config`), else $IMAGE_CACHE_CONFIG, else
    ./image_cache.toml, else $XDG_CONFIG_HOME/image_cache/config.toml (~/.config when unset), the
    first that exists; None when there is none (defaults and flags only)."""
    if named:
        return named
    if os.environ.get(CONFIG_ENV):
        return os.environ[CONFIG_ENV]
    if os.path.isfile(CONFIG_NAME):
        return CONFIG_NAME
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    user = os.path.join(xdg, "image_cache", "config.toml")
    return user if os.path.isfile(user) else None


def market_db_in(config_file: str | None) -> str | None:
    """The market database a config file names (`market_db`, or the older `market_db_path`), for the ingest
    commands: they write the market the renderer reads, and take nothing else from the file."""
    if not config_file:
        return None
    market_db = _BY_KEY["market_db"]
    for key, value in read_toml(config_file).items():
        if _option(key) is market_db:
            return market_db.convert(key, value)
    return None


def _option(name: str) -> Option | None:
    """The option a config key or a `flags` name means: the flag's name (`market_db`, `market-db`), or the
    older field name (`market_db_path`)."""
    return _BY_KEY.get(name.replace("-", "_")) or _BY_FIELD.get(name)


def read_toml(path: str) -> dict[str, Any]:
    """The [image_cache] table of a TOML file; anything else (a folder, a pipe, a binary file) is refused."""
    try:
        # Non-blocking: opening a named pipe must not wait for a writer; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"config file {path} is not a regular file")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"config file {path} is {info.st_size} bytes: not a config file "
                              f"(at most {MAX_CONFIG_BYTES})")
        data = b"".join(iter(lambda: os.read(fd, 1 << 16), b""))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    finally:
        os.close(fd)
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a TOML file: byte {exc.start} is not UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    table = document.get("image_cache")
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: no [image_cache] table")
    return table


def _dask_scheduler_address() -> str:
    """Dask's own convention for a client: DASK_SCHEDULER_ADDRESS, then `scheduler-address` in Dask's
    config files (~/.config/dask/*.yaml, DASK_CONFIG); read here, not by Client(), which would start a
    local cluster when neither is set."""
    address = os.environ.get("DASK_SCHEDULER_ADDRESS", "").strip()
    if address:
        return address
    try:
        import dask.config
    except ImportError:  # the executor says which extra to install
        return ""
    return str(dask.config.get("scheduler-address", default="") or "").strip()


def load(config_file: str | None = None, flags: dict[str, Any] | None = None, warn: Warn = no_warn) -> Settings:
    """Settings from defaults, then the TOML file, then the non-None `flags`; every value validated. A
    file's keys and the `flags` are named as the command line's flags (`market_db`, `symbols`, `size`); the
    field names (`market_db_path`, `pairs`, `img_size_px`) work too, in a file with a note on `warn` (they
    are deprecated there). A name that is neither is a ConfigError, never silently ignored."""
    values: dict[str, Any] = {}
    if config_file:
        old: dict[str, str] = {}
        for key, value in read_toml(config_file).items():
            option = _option(key)
            if option is None:
                raise ConfigError(f"{config_file}: unknown key {key!r} in [image_cache] "
                                  f"(known: {', '.join(_BY_KEY)})")
            if key.replace("-", "_") != option.key:
                old[key] = option.key
            values[option.field] = option.convert(key, value)
        if old:
            keys = f"the keys {', '.join(old)} are" if len(old) > 1 else f"the key {next(iter(old))} is"
            warn(f"note: {config_file}: {keys} deprecated and will be removed after 0.9; "
                 f"use {', '.join(old.values())}")
    for name, value in (flags or {}).items():
        option = _option(name)
        if option is None:
            raise ConfigError(f"unknown option {name!r} (known: {', '.join(_BY_KEY)})")
        if value is not None:
            values[option.field] = option.convert(option.flag, value)
    settings = dataclasses.replace(Settings(), **values)
    if settings.executor == "dask" and not settings.scheduler:
        address = _dask_scheduler_address()
        if not address:
            raise ConfigError("--executor dask needs --scheduler ADDRESS (or DASK_SCHEDULER_ADDRESS in the "
                              "environment, or scheduler-address in Dask's config)")
        settings = dataclasses.replace(settings, scheduler=address)
    if settings.end_ms is not None and settings.end_ms <= settings.start_ms:
        raise ConfigError(f"end {settings.end} is not after start {settings.start}")
    try:
        # The style, size and window must make a drawable spec: a usage error for every command.
        make_spec(settings)
    except chart.ChartError as exc:
        raise ConfigError(str(exc)) from None
    return settings


def make_spec(settings: Settings) -> chart.Spec:
    return chart.make_spec(settings.style_name, settings.img_size_px, settings.window_len,
                           settings.style_version, settings.jkx_height)


def check_filters(symbols: list[str] | None, intervals: list[str] | None) -> None:
    """`--symbol` and `--interval` filters: refused as usage errors like the settings they narrow."""
    if symbols:
        _names(check_symbol)("--symbol", symbols)
    if intervals:
        _names(check_interval)("--interval", intervals)
