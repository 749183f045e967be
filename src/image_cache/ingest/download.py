"""Fetch Binance Vision kline archives into a local mirror, then ingest them.

The plan (which files, at which URLs, under which mirror paths) is pure. Fetching is urllib in a
thread pool: the `.CHECKSUM` first, so that a mirror file with a matching hash is not downloaded
again; the zip streamed to a dot-prefixed temp file in its folder and renamed into place, so the
mirror never holds a partial file. Transient failures (5xx, 408/429, resets, timeouts, short
bodies) are retried with exponential backoff, a bounded number of times; a host that cannot be
reached a few times in a row is given up for the run (ingest/network.py). A 404 is not an error:
"not published yet" for a recent period, "missing" for an old one.

A signal stops the run at once: queued archives are never started, running ones stop at their next
read, and threads still blocked on a silent server are left behind (daemon threads) with their temp
files removed, so that nothing half-fetched is ever taken for an archive.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import queue
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from image_cache.core import flags
from image_cache.core.db import open_readonly
from image_cache.core.errors import MarketError
from image_cache.core.grid import add_months, check_interval, check_symbol, now_ms, utc_day
from image_cache.core.hooks import Hooks, no_progress, no_warn
from image_cache.ingest.binance_vision import CHECKSUM_RE, ingest_paths
from image_cache.ingest.dates import END_FLAG, check_date, resolve_date
from image_cache.ingest.network import HostDown, Network, unreachable
from image_cache.ingest.registry import IngestResult, period_days
from image_cache.ingest.sources import Source

if TYPE_CHECKING:  # the flags are read by cli/ingest.py; the library never imports argparse
    import argparse

T = TypeVar("T")

MARKET_ROOTS = {"spot": "data/spot", "um": "data/futures/um", "cm": "data/futures/cm"}
# Binance Vision publishes these only as monthly files.
MONTHLY_ONLY = frozenset({"3d", "1w", "1mo"})
# How long after its period a file may still legitimately be unpublished (daily: next day;
# monthly: early in the next month).
DAILY_LAG = timedelta(days=2)
MONTHLY_LAG = timedelta(days=10)
CHUNK = 1 << 20
# How long a stopping run waits for its running downloads to notice before leaving them behind.
GRACE_S = 2.0


# ---------------------------------------------------------------------------------------- plan (pure)

@dataclass(frozen=True)
class Archive:
    """One archive to fetch: `path` is relative to the base URL and to the mirror root alike."""

    symbol: str
    interval: str
    kind: str  # "monthly" or "daily"
    period: str  # YYYY-MM or YYYY-MM-DD

    @property
    def file_name(self) -> str:
        return f"{self.symbol}-{self.interval}-{self.period}.zip"

    def path(self, market: str) -> str:
        return f"{MARKET_ROOTS[market]}/{self.kind}/klines/{self.symbol}/{self.interval}/{self.file_name}"


def _days(first: date, stop: date) -> Iterator[date]:
    day = first
    while day < stop:
        yield day
        day += timedelta(days=1)


def plan_interval(symbol: str, interval: str, start: date, end: date) -> list[Archive]:
    """Archives covering [start, end): monthly files for whole months, daily files for the rest.

    Intervals published only monthly get every month that overlaps the range.
    """
    archives: list[Archive] = []
    month = start.replace(day=1)
    while month < end:
        following = add_months(month, 1)
        whole = start <= month and following <= end
        if whole or interval in MONTHLY_ONLY:
            archives.append(Archive(symbol, interval, "monthly", month.strftime("%Y-%m")))
        else:
            archives.extend(Archive(symbol, interval, "daily", day.isoformat())
                            for day in _days(max(month, start), min(following, end)))
        month = following
    return archives


def plan(symbols: list[str], intervals: list[str], start: date, end: date) -> list[Archive]:
    return [a for symbol in symbols for interval in intervals for a in plan_interval(symbol, interval, start, end)]


def daily_fallback(archive: Archive, start: date, end: date) -> list[Archive]:
    """Daily files standing in for an unpublished monthly file (none for monthly-only intervals)."""
    if archive.kind != "monthly" or archive.interval in MONTHLY_ONLY:
        return []
    first, after = period_days(archive.period)
    return [Archive(archive.symbol, archive.interval, "daily", day.isoformat())
            for day in _days(max(first, start), min(after, end))]


def is_recent(archive: Archive, today: date) -> bool:
    """True when a 404 for this archive may just mean "not published yet"."""
    lag = DAILY_LAG if archive.kind == "daily" else MONTHLY_LAG
    return today < period_days(archive.period)[1] + lag


# ---------------------------------------------------------------------------------------- fetching

class Transient(Exception):
    """Worth retrying: a 5xx, a reset or refused connection, a timeout, a short body."""


class Unreachable(Transient):
    """No connection: retried without a word, since the host's Network count speaks for all of them."""


class NotFound(Exception):
    pass


class Failed(Exception):
    """Not worth retrying, or retried enough."""


@dataclass(frozen=True)
class Fetch:
    base_url: str
    mirror: str
    market: str
    timeout: float = 30.0
    retries: int = 4
    backoff: float = 0.5
    warn: Callable[[str], None] = no_warn
    network: Network = field(default_factory=Network)

    def url(self, archive: Archive, suffix: str = "") -> str:
        return self.base_url.rstrip("/") + "/" + archive.path(self.market) + suffix

    def local(self, archive: Archive) -> str:
        return os.path.abspath(os.path.join(self.mirror, *archive.path(self.market).split("/")))


def _open(fetch: Fetch, url: str) -> http.client.HTTPResponse:
    fetch.network.check(url)
    try:
        response = urllib.request.urlopen(url, timeout=fetch.timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        fetch.network.answered(url)
        if exc.code == 404:
            raise NotFound(url) from None
        if exc.code >= 500 or exc.code in (408, 429):
            raise Transient(f"HTTP {exc.code}") from None
        raise Failed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, FileNotFoundError):  # file:// base URLs
            raise NotFound(url) from None
        if (reason := unreachable(exc)) is not None:
            fetch.network.failed(url, reason)
            raise Unreachable(str(reason)) from None
        raise Transient(str(exc.reason)) from None
    except (OSError, http.client.HTTPException) as exc:
        raise Transient(str(exc) or type(exc).__name__) from None
    fetch.network.answered(url)
    return response


def _read_into(fetch: Fetch, response: http.client.HTTPResponse, sink: Callable[[bytes], Any]) -> int:
    """Stream the body into `sink`; a body shorter than its Content-Length is transient.

    read1 returns what has arrived, so that a stop is seen between reads however slow the link.
    """
    expected = response.headers.get("Content-Length")
    size = 0
    try:
        while chunk := response.read1(CHUNK):
            fetch.network.check_stop()
            sink(chunk)
            size += len(chunk)
    except (OSError, http.client.HTTPException) as exc:
        raise Transient(f"connection lost after {size} bytes ({exc or type(exc).__name__})") from None
    if expected is not None and expected.isdigit() and size != int(expected):
        raise Transient(f"short body: {size} of {expected} bytes")
    return size


def _retrying(fetch: Fetch, url: str, attempt: Callable[[], T]) -> tuple[T, int]:
    """(result, attempts) of `attempt` (a GET of `url`), retrying Transient errors with exponential backoff."""
    tries = 0
    while True:
        tries += 1
        try:
            return attempt(), tries
        except Transient as exc:
            if tries > fetch.retries:
                raise Failed(f"{exc} (gave up after {tries} attempts)") from None
            delay = fetch.backoff * 2 ** (tries - 1)
            if isinstance(exc, Unreachable):
                fetch.network.check(url)  # no backoff for a host given up just now
            else:
                fetch.warn(f"{url}: {exc}; retrying in {delay:g}s ({tries}/{fetch.retries})")
            fetch.network.sleep(delay)


def _get_bytes(fetch: Fetch, url: str) -> bytes:
    def attempt() -> bytes:
        parts: list[bytes] = []
        with _open(fetch, url) as response:
            _read_into(fetch, response, parts.append)
        return b"".join(parts)
    return _retrying(fetch, url, attempt)[0]


def _write_atomic(fetch: Fetch, dest: str, data: bytes) -> None:
    tmp = _temp_name(dest)
    try:
        with fetch.network.open_temp(tmp) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    finally:
        fetch.network.drop_temp(tmp)


def _temp_name(dest: str) -> str:
    folder, name = os.path.split(dest)
    return os.path.join(folder, f".{name}.{os.getpid()}.{threading.get_ident()}.part")


def _download(fetch: Fetch, url: str, dest: str) -> tuple[str, int, int]:
    """Stream `url` to `dest` through a temp file: (sha256, bytes, attempts)."""
    tmp = _temp_name(dest)

    def attempt() -> tuple[str, int]:
        digest = hashlib.sha256()
        try:
            with _open(fetch, url) as response, fetch.network.open_temp(tmp) as f:
                def sink(chunk: bytes) -> None:
                    digest.update(chunk)
                    f.write(chunk)
                size = _read_into(fetch, response, sink)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, dest)
        finally:
            fetch.network.drop_temp(tmp)
        return digest.hexdigest(), size

    (sha, size), tries = _retrying(fetch, url, attempt)
    return sha, size, tries


def file_sha256(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class Outcome:
    """What became of one archive: downloaded, cached, pending, missing, failed, rejected-earlier, or network
    (not asked for: its host was down)."""

    symbol: str
    interval: str
    period: str
    file_name: str
    path: str
    status: str
    reason: str | None = None
    bytes: int = 0
    attempts: int = 0
    verified: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def fetch_archive(fetch: Fetch, archive: Archive, *, today: date,
                  rejected_sha: str | None = None, retry_failed: bool = False) -> Outcome:
    """Bring one archive and its .CHECKSUM into the mirror (or say why not); never raises for HTTP trouble.

    `rejected_sha`: the SHA-256 the registry last rejected for this mirror path, if any. Such a file
    is left alone (not fetched, not ingested again) unless `retry_failed`.
    """
    dest = fetch.local(archive)
    base = Outcome(archive.symbol, archive.interval, archive.period, archive.file_name, dest, "failed")
    try:
        try:
            checksum = _get_bytes(fetch, fetch.url(archive, ".CHECKSUM"))
        except NotFound:
            checksum = None
        match = CHECKSUM_RE.match(checksum.decode("ascii", errors="replace").strip()) if checksum else None
        expected = match["hex"].lower() if match else None
        local_sha = file_sha256(dest) if expected else None
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if expected and local_sha == expected:
            if local_sha == rejected_sha and not retry_failed:
                return replace(base, status="rejected-earlier", verified=True,
                               reason="rejected by an earlier ingest; --retry-failed downloads it again")
            if local_sha != rejected_sha:
                assert checksum is not None  # `expected` was read from it
                _write_atomic(fetch, dest + ".CHECKSUM", checksum)
                return replace(base, status="cached", bytes=os.path.getsize(dest), verified=True)
        try:
            sha, size, tries = _download(fetch, fetch.url(archive), dest)
        except NotFound:
            if checksum is not None:
                return replace(base, reason="the .CHECKSUM exists but the zip answers 404")
            recent = is_recent(archive, today)
            return replace(base, status="pending" if recent else "missing",
                           reason="not published yet" if recent else "404 not found")
        if checksum is not None:
            _write_atomic(fetch, dest + ".CHECKSUM", checksum)
        reason = None
        if expected is None:
            reason = "no .CHECKSUM published" if checksum is None else "malformed .CHECKSUM"
        elif sha != expected:
            reason = f"checksum mismatch: downloaded {sha}, .CHECKSUM says {expected}"
        return replace(base, status="downloaded", reason=reason, bytes=size, attempts=tries,
                       verified=expected == sha)
    except Failed as exc:
        return replace(base, reason=str(exc))
    except HostDown as exc:
        return replace(base, status="network", reason=str(exc))
    except OSError as exc:
        return replace(base, reason=f"mirror: {exc.strerror or exc}")


# ---------------------------------------------------------------------------------------- command

# Outcome statuses as the summaries name them.
LABELS = {"downloaded": "downloaded", "cached": "cached", "pending": "not published yet", "missing": "missing",
          "failed": "failed", "rejected-earlier": "rejected earlier", "network": "not asked (host down)"}


@dataclass
class DownloadResult:
    archives: list[Outcome] = field(default_factory=list)
    ingest: IngestResult | None = None
    seconds: float = 0.0
    unreachable: list[str] = field(default_factory=list)  # one line per host given up
    verbose: bool = False  # text() names every archive that was not fetched, not only counts per series
    symbols: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # symbols with no archive for any period: may not exist

    @property
    def fetched(self) -> bool:
        """Every archive fetched or truthfully absent, and every one ingested."""
        return (all(a.status not in ("failed", "network") for a in self.archives)
                and (self.ingest is None or self.ingest.ok))

    @property
    def ok(self) -> bool:
        # Unknown symbols fail the run only when no symbol asked for exists (README: exit codes).
        return self.fetched and not (self.unknown and len(self.unknown) >= len(self.symbols))

    def counts(self) -> dict[str, int]:
        return {s: sum(a.status == s for a in self.archives) for s in LABELS}

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "archives": self.counts(), "seconds": round(self.seconds, 3), "unknown": self.unknown,
                "unreachable": self.unreachable, "archive_outcomes": [a.as_dict() for a in self.archives],
                "ingest": self.ingest.as_dict() if self.ingest else None}

    def text(self) -> str:
        """One line per series (a nightly log must not grow by a line per archive still missing), each
        archive that was not fetched under it with --verbose."""
        c = self.counts()
        lines = [f"download: {len(self.archives)} archives: {c['downloaded']} downloaded, {c['cached']} cached, "
                 f"{c['pending']} not published yet, {c['missing']} missing, {c['failed']} failed, "
                 f"{c['rejected-earlier']} rejected earlier"
                 + (f", {c['network']} {LABELS['network']}" if c["network"] else "") + f"; {self.seconds:.2f} s"]
        series: dict[tuple[str, str], list[Outcome]] = {}
        for a in self.archives:
            series.setdefault((a.symbol, a.interval), []).append(a)
        for (symbol, interval), outcomes in series.items():
            parts = []
            for status, label in LABELS.items():
                these = [a for a in outcomes if a.status == status]
                if these:
                    why = f" ({these[0].reason}{', ...' if len(these) > 1 else ''})" if status == "failed" else ""
                    parts.append(f"{len(these)} {label}{why}")
            lines.append(f"  {symbol} {interval}: {len(outcomes)} archives: {', '.join(parts)}")
            if self.verbose:
                lines.extend(f"    {LABELS[a.status]}: {a.file_name}" + (f" ({a.reason})" if a.reason else "")
                             for a in outcomes if a.status not in ("downloaded", "cached") or a.reason)
        if self.unknown:
            lines.append(f"unknown symbols (no archive for any period): {', '.join(self.unknown)}")
        if self.ingest is not None:
            lines.append(self.ingest.text())
        return "\n".join(lines)


def rejected_in_registry(db: str) -> dict[str, str]:
    """Mirror path → SHA-256 of files whose latest registry entry is a rejection."""
    if not os.path.exists(db):
        return {}
    conn = open_readonly(db)
    try:
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'ingested_files'").fetchone():
            return {}
        rows = conn.execute("""SELECT path, sha256 FROM ingested_files
                               WHERE id IN (SELECT max(id) FROM ingested_files GROUP BY path)
                                 AND status = 'rejected' AND sha256 IS NOT NULL""").fetchall()
    finally:
        conn.close()
    return dict(rows)


def _parse_day(value: str, now: int) -> date:
    """The UTC day of a date as ingest/dates.py takes it (archives are whole days: a time inside one is its day)."""
    check_date(value)
    ms = resolve_date(value, now)
    assert ms is not None
    return utc_day(ms)


def in_threads(work: Callable[[Archive], Outcome], batch: list[Archive], jobs: int, network: Network,
               progress: Callable) -> list[Outcome]:
    """`work` on each archive in `jobs` threads, outcomes in the batch's order.

    On any exception here (a signal, or one raised by `work`), what is queued is never started,
    running downloads get GRACE_S to see the stop flag, and then the run leaves without them:
    daemon threads, since a thread blocked on a silent server must not keep the process alive.
    """
    todo: queue.SimpleQueue[tuple[int, Archive]] = queue.SimpleQueue()
    for item in enumerate(batch):
        todo.put(item)
    done: queue.SimpleQueue[tuple[int, Outcome | None, BaseException | None]] = queue.SimpleQueue()

    def worker() -> None:
        while not network.stop.is_set():
            try:
                i, archive = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((i, work(archive), None))
            except BaseException as exc:  # handed to the main thread, which stops the run
                done.put((i, None, exc))

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(jobs, len(batch)))]
    for thread in threads:
        thread.start()
    outcomes: list[Outcome | None] = [None] * len(batch)
    try:
        for _ in progress(range(len(batch)), total=len(batch), desc="download", unit="file"):
            i, outcome, error = done.get()
            if error is not None:
                raise error
            outcomes[i] = outcome
    except BaseException:
        network.stop.set()
        deadline = time.monotonic() + GRACE_S
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        network.abandon()
        raise
    return [o for o in outcomes if o is not None]


def download(db: str, *, symbols: list[str], intervals: list[str], start: str, end: str | None = None,
             market: str = "spot", base_url: str = "https://data.binance.vision/", mirror: str = "mirror",
             jobs: int = 4, retry_failed: bool = False, require_checksum: bool = False, lock_wait: float = 30.0,
             progress: Callable = no_progress, warn: Callable[[str], None] = no_warn,
             today: date | None = None, retries: int = 4, backoff: float = 0.5,
             timeout: float = 30.0, network: Network | None = None, verbose: bool = False) -> DownloadResult:
    """Fetch the archives of `symbols` × `intervals` for [start, end) into `mirror`, then ingest them into `db`.

    `network`: shared with the other downloads and requests of one run (update), so that a host given
    up stays given up.
    """
    started = time.monotonic()
    symbols = [check_symbol(s) for s in dict.fromkeys(symbols)]
    intervals = [check_interval(i) for i in dict.fromkeys(intervals)]
    if not symbols or not intervals:
        raise MarketError("download needs at least one symbol and one interval")
    if market not in MARKET_ROOTS:
        raise MarketError(f"unknown market {market!r} (known: {', '.join(MARKET_ROOTS)})")
    if jobs < 1:
        raise MarketError(f"--jobs must be at least 1, got {jobs}")
    if urllib.parse.urlsplit(base_url).scheme not in ("http", "https", "file"):
        raise MarketError(f"--base-url {base_url!r} must be an http, https or file URL")
    now = now_ms()
    today = today or utc_day(now)
    first = _parse_day(start, now)
    # Nothing after today can be published: stop there whatever --end says.
    stop = min(_parse_day(end, now) if end else today, today + timedelta(days=1))
    if first >= stop:
        raise MarketError(f"--start {start} must be before --end {stop.isoformat()}")

    network = network or Network(warn)
    fetch = Fetch(base_url, mirror, market, timeout=timeout, retries=retries, backoff=backoff, warn=warn,
                  network=network)
    rejected = rejected_in_registry(db)
    result = DownloadResult(verbose=verbose)

    def run(batch: list[Archive]) -> list[Outcome]:
        return in_threads(lambda a: fetch_archive(fetch, a, today=today, retry_failed=retry_failed,
                                                  rejected_sha=rejected.get(fetch.local(a))),
                          batch, jobs, network, progress)

    batch = plan(symbols, intervals, first, stop)
    outcomes = []
    fallback: list[Archive] = []
    for archive, outcome in zip(batch, run(batch), strict=True):
        # A monthly file not published yet (early in the next month): its days are, as daily files.
        days = daily_fallback(archive, first, stop) if outcome.status == "pending" else []
        fallback += days
        if not days:
            outcomes.append(outcome)
    result.archives = outcomes + (run(fallback) if fallback else [])
    result.unreachable = list(network.down.values())
    result.symbols = symbols
    # A misspelt symbol has no archive at all: every period answers 404, none is merely not out yet.
    result.unknown = [s for s in symbols if all(a.status == "missing" for a in result.archives if a.symbol == s)]
    for symbol in result.unknown:
        warn(f"{symbol}: no archive of it on Binance Vision ({market}) for any period asked; the symbol may not exist")

    paths = [o.path for o in result.archives if o.status in ("downloaded", "cached")]
    if paths:
        result.ingest = ingest_paths(db, paths, require_checksum=require_checksum, lock_wait=lock_wait,
                                     progress=progress, warn=warn)
    result.seconds = time.monotonic() - started
    return result


def add_archive_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="https://data.binance.vision/", help="Binance Vision layout root")
    p.add_argument("--mirror", default="mirror", help="local mirror folder (default: %(default)s)")
    p.add_argument("--retry-failed", action="store_true", help="download again files recorded as failed")
    p.add_argument("--verbose", action="store_true",
                   help="name each archive not fetched (default: one line per series)")


def add_jobs_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--jobs", type=flags.integer(1), default=4, help="parallel downloads (default: %(default)s)")


def _arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--symbols", type=flags.symbols, required=True, help="comma-separated, e.g. BTCUSDT,ETHUSDT")
    p.add_argument("--intervals", type=flags.intervals, required=True, help="comma-separated, e.g. 1m,1h")
    p.add_argument("--start", type=END_FLAG, required=True, help="first UTC day: a date, N days ago or today")
    p.add_argument("--end", type=END_FLAG, help="UTC day to stop before (default: today)")
    p.add_argument("--market", choices=tuple(MARKET_ROOTS), default="spot")
    add_archive_arguments(p)
    add_jobs_argument(p)


def _run(args: argparse.Namespace, hooks: Hooks) -> DownloadResult:
    return download(args.db, symbols=args.symbols, intervals=args.intervals, start=args.start, end=args.end,
                    market=args.market, base_url=args.base_url, mirror=args.mirror, jobs=args.jobs,
                    retry_failed=args.retry_failed, require_checksum=args.require_checksum,
                    lock_wait=args.lock_wait, verbose=args.verbose, **hooks)


SOURCE = Source("download", "fetch Binance Vision archives into a local mirror, then ingest them",
                _arguments, _run, checksums=True)
