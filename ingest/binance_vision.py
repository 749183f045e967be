"""Binance Vision kline archives: file names, .CHECKSUM files, zip members, the 12-column CSV.

`ingest_paths` ingests local zips (files or directories, searched recursively); `ingest_archive`
ingests one zip on an open writer connection, for callers (the downloader) that hold the lock.
Zips are hashed and decompressed as streams, with a size cap, and never extracted to disk.
"""

from __future__ import annotations

import csv
import io
import os
import re
import sqlite3
import struct
import time
import zipfile
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date
from typing import BinaryIO, TypeVar

import numpy as np
import pandas as pd

from core.hooks import Progress, Warn, no_progress, no_warn
from ingest.registry import (FileOutcome, IngestResult, SourceFile, already_ingested, ingest_file, reject, skipped,
                             write_file, writer)
from core.errors import MarketError
from core.grid import DAY_MS, check_interval, check_symbol, utc_ms
from ingest.inputs import CHUNK_BYTES, open_regular, sha256_stream
from ingest.validate import Lines, Validated, detect_unit, fail, field_counts, is_number, split_lines, to_ms, validate

KLINE_FIELDS = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_asset_volume",
                "trades", "taker_buy_base_volume", "taker_buy_quote_volume", "ignore")
INT_FIELDS = ("open_time", "close_time", "trades")
# `ignore` is never read.
KLINE_DTYPES = {name: (np.int64 if name in INT_FIELDS else np.float64) for name in KLINE_FIELDS[:11]}
# A kline row is ~150 bytes; anything far longer is not a kline file.
MAX_LINE_BYTES = 4096
# Daily files of any interval (a 1s day: ~14 MB) and monthly files from 1m up (~6 MB) fit; a monthly
# 1s file (~300 MB) does not: parsing one file whole would break the 300 MB peak-memory bound.
MAX_MEMBER_BYTES = 16 * 2**20
# A zip starts with a local file header (or, empty, with the end of central directory).
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
# Headers and directory of a one-member zip: a larger file cannot hold a member within the cap.
ZIP_OVERHEAD_BYTES = 2**20
ENCRYPTED_FLAG = 0x1
T = TypeVar("T")
# Files parsed ahead, in threads, while the main thread writes: zlib, the CSV parser, numpy and
# SQLite all release the GIL.
PARSE_THREADS = 2
# Uncompressed member bytes parsed ahead at once; a member that does not fit is parsed at its turn.
# With the member cap this bounds peak memory (parsing costs up to ~7 bytes per member byte).
AHEAD_BYTES = 6 * 2**20

NAME_RE = re.compile(r"^(?P<symbol>[^/\\]+?)-(?P<interval>[0-9]+(?:mo|[smhdw]))-"
                     r"(?P<period>(?P<year>[0-9]{4})-(?P<month>[0-9]{2})(?:-(?P<day>[0-9]{2}))?)\.zip$")
CHECKSUM_RE = re.compile(r"^(?P<hex>[0-9a-fA-F]{64})(?:\s+\*?(?P<name>\S+))?\s*$")


@dataclass(frozen=True)
class ArchiveName:
    symbol: str
    interval: str
    period: str
    start_ms: int
    end_ms: int


def parse_name(file_name: str) -> ArchiveName:
    """Symbol, interval and period (monthly `YYYY-MM` or daily `YYYY-MM-DD`) of an archive name."""
    match = NAME_RE.match(file_name)
    if not match:
        raise fail(file_name, None, "file name", "expected SYMBOL-INTERVAL-YYYY-MM[-DD].zip")
    try:
        check_symbol(match["symbol"])
        check_interval(match["interval"])
    except MarketError as exc:
        raise fail(file_name, None, "file name", str(exc)) from None
    year, month = int(match["year"]), int(match["month"])
    try:
        if match["day"]:
            start = utc_ms(date(year, month, int(match["day"])).isoformat())
            end = start + DAY_MS
        else:
            start = utc_ms(date(year, month, 1).isoformat())
            end = utc_ms(date(year + month // 12, month % 12 + 1, 1).isoformat())
    except ValueError:
        raise fail(file_name, None, "file name", f"invalid date {match['period']!r}") from None
    return ArchiveName(match["symbol"], match["interval"], match["period"], start, end)


def read_checksum(zip_path: str) -> str | None:
    """The SHA-256 named by the sibling `.CHECKSUM` file, or None when there is none."""
    name = os.path.basename(zip_path)
    if not os.path.lexists(zip_path + ".CHECKSUM"):
        return None
    try:
        with open_regular(zip_path + ".CHECKSUM", name + ".CHECKSUM") as f:
            text = f.read(4096).decode("ascii", errors="replace")
    except MarketError as exc:
        raise fail(name, None, "checksum", str(exc)) from None
    except OSError as exc:
        raise fail(name, None, "checksum", f"cannot read .CHECKSUM file ({exc.strerror or exc})") from None
    match = CHECKSUM_RE.match(text.strip())
    if not match:
        raise fail(name, None, "checksum", "malformed .CHECKSUM file (expected '<sha256>  <file name>')")
    if match["name"] and match["name"] != name:
        raise fail(name, None, "checksum", f".CHECKSUM names another file, {match['name']!r}")
    return match["hex"].lower()


def read_member(name: str, archive_file: bytes | BinaryIO, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """The one CSV member of a zip, decompressed as a stream and refused past `max_bytes`.

    Only stored and deflated members are read: other methods (LZMA's dictionary, bzip2) have
    their own memory needs, and Binance never uses them.
    """
    source = io.BytesIO(archive_file) if isinstance(archive_file, bytes) else archive_file
    try:
        with zipfile.ZipFile(source) as archive:
            members = archive.infolist()
            if len(members) != 1:
                raise fail(name, None, "zip", f"expected exactly one CSV member, found {len(members)}")
            member = members[0]
            if "/" in member.filename or "\\" in member.filename or member.filename.startswith(".."):
                raise fail(name, None, "zip", f"member name {member.filename!r} contains a path")
            if not member.filename.lower().endswith(".csv"):
                raise fail(name, None, "zip", f"member {member.filename!r} is not a .csv file")
            if member.flag_bits & ENCRYPTED_FLAG:
                raise fail(name, None, "zip", f"member {member.filename!r} is encrypted")
            if member.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
                raise fail(name, None, "zip", f"member {member.filename!r} uses compression method "
                                              f"{member.compress_type}; only stored and deflate are read")
            too_big = fail(name, None, "zip",
                           f"member {member.filename!r} is larger than {max_bytes} bytes uncompressed")
            # The declared size may lie: the stream is counted too.
            if member.file_size > max_bytes:
                raise too_big
            out = io.BytesIO()
            with archive.open(member) as f:
                while chunk := f.read(CHUNK_BYTES):
                    if out.tell() + len(chunk) > max_bytes:
                        raise too_big
                    out.write(chunk)
            # getvalue() hands over the buffer without a copy: the member is held once.
            return out.getvalue()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError,
            OverflowError, struct.error, UnicodeDecodeError) as exc:
        raise fail(name, None, "zip", f"corrupt or unsupported archive ({exc})") from None
    except OSError as exc:
        raise fail(name, None, "cannot read", exc.strerror or str(exc)) from None


def _locate_bad_field(name: str, body: bytes, first_line: int, error: Exception) -> MarketError:
    """After the fast typed parse failed: find the first bad field and say which rule it breaks."""
    frame = pd.read_csv(io.BytesIO(body), header=None, names=list(KLINE_FIELDS), usecols=list(KLINE_FIELDS[:11]),
                        dtype=str, engine="c", quoting=csv.QUOTE_NONE, na_filter=False)
    found: list[tuple[int, int, str, str]] = []
    for position, col in enumerate(KLINE_FIELDS[:11]):
        text = frame[col].astype(str)
        if col in INT_FIELDS:
            bad = ~text.str.fullmatch(r"-?[0-9]{1,18}").to_numpy(dtype=bool)
            rule = "integer time" if col != "trades" else "integer trades"
        else:
            values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
            nan_text = text.str.strip().str.lower().isin(("nan", "+nan", "-nan")).to_numpy(dtype=bool)
            bad = np.isnan(values) & ~nan_text
            rule = "decimal number"
            if not bad.any():
                bad = ~np.isfinite(values)
                rule = "finite decimal"
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            found.append((row, position, rule, f"{col} is {text.iloc[row]!r}"))
    if not found:
        return fail(name, None, "parse", str(error).splitlines()[0])
    row, _, rule, detail = min(found)
    return fail(name, first_line + row, rule, detail)


def _check_field_counts(name: str, lines: Lines, first_line: int) -> None:
    counts = field_counts(lines)[first_line - 1:]
    if (wrong := np.flatnonzero(counts != len(KLINE_FIELDS))).size:
        row = int(wrong[0])
        raise fail(name, first_line + row, "field count", f"{int(counts[row])} fields, expected {len(KLINE_FIELDS)}")


def parse_klines(name: str, data: bytes, interval: str, period: tuple[int, int] | None) -> Validated:
    """Validated candles of one kline CSV: header and ms/µs detected per file, times in ms."""
    lines = split_lines(name, data, max_line_bytes=MAX_LINE_BYTES)
    first_field = lines.line(0).split(b",", 1)[0].decode("utf-8", errors="replace")
    header = not is_number(first_field)
    first_line = 2 if header else 1
    if header and len(lines) == 1:
        raise fail(name, None, "no rows", "the file has a header and no data rows")
    body = lines.data[int(lines.starts[first_line - 1]):]
    rows = len(lines) - first_line + 1
    # The right total of commas is cheap to count; when it is right, a line with too few fields
    # implies one with too many, which the typed parse below refuses.
    if body.count(b",") != rows * (len(KLINE_FIELDS) - 1):
        _check_field_counts(name, lines, first_line)
    try:
        frame = pd.read_csv(io.BytesIO(body), header=None, names=list(KLINE_FIELDS), usecols=list(KLINE_DTYPES),
                            dtype=KLINE_DTYPES, engine="c", quoting=csv.QUOTE_NONE, na_filter=False)
    except (ValueError, OverflowError) as exc:
        _check_field_counts(name, lines, first_line)
        raise _locate_bad_field(name, body, first_line, exc) from None
    raw_open = frame["open_time"].to_numpy()
    raw_close = frame["close_time"].to_numpy()
    unit = detect_unit(name, "open_time", raw_open, first_line)
    close_unit = detect_unit(name, "close_time", raw_close, first_line)
    if close_unit != unit:
        raise fail(name, first_line, "time unit", f"open_time is in {unit} but close_time in {close_unit}")
    columns = {col: frame[col].to_numpy() for col in KLINE_DTYPES if col not in ("open_time", "close_time")}
    columns["open_time"] = to_ms(raw_open, unit)
    return validate(name, interval, columns, first_line=first_line, time_unit=unit,
                    close_ms=to_ms(raw_close, unit), period=period)


@dataclass(frozen=True)
class Inspected:
    """An archive after the cheap checks (read, hash, name, checksum); `reason` set when rejected."""

    src: SourceFile
    verified: bool
    reason: str | None
    load: Callable[[], Validated] | None
    # Uncompressed bytes the zip's directory declares (decompression never reads past them).
    member_bytes: int = 0


def inspect_archive(path: str, *, require_checksum: bool = False, source: str = "binance-vision",
                    max_member_bytes: int = MAX_MEMBER_BYTES) -> Inspected:
    """Hash a zip as a stream, parse its name, verify its .CHECKSUM; `load` parses and validates it.

    A file that is not a regular file, does not start like a zip, or is larger than a zip whose
    member is within the cap can be, is refused before it is read through.
    """
    path = os.path.abspath(path)
    file_name = os.path.basename(path)

    def rejected(src: SourceFile, reason: str) -> Inspected:
        return Inspected(src, False, reason, None)

    unread = SourceFile(path, file_name, None, None, source)
    try:
        with open_regular(path, file_name) as f:
            size = os.fstat(f.fileno()).st_size
            unread = SourceFile(path, file_name, None, size, source)
            head = f.read(len(ZIP_MAGIC[0]))
            if head not in ZIP_MAGIC:
                return rejected(unread, str(fail(file_name, None, "zip", f"not a zip archive (starts with {head!r})")))
            if size > max_member_bytes + ZIP_OVERHEAD_BYTES:
                return rejected(unread, str(fail(file_name, None, "zip", f"archive is {size} bytes, larger than "
                                                 f"a zip of one member within {max_member_bytes} bytes can be")))
            digest, size = sha256_stream(f, head)
            member_bytes = _declared_bytes(f)
    except MarketError as exc:
        return rejected(unread, str(exc))
    except OSError as exc:
        return rejected(unread, str(fail(file_name, None, "cannot read", exc.strerror or str(exc))))
    src = SourceFile(path, file_name, digest, size, source)
    try:
        name = parse_name(file_name)
        src = SourceFile(path, file_name, digest, size, source, name.symbol, name.interval, name.period)
        expected = read_checksum(path)
    except MarketError as exc:
        return rejected(src, str(exc))
    if expected is None and require_checksum:
        return rejected(src, f"{file_name}: checksum: no .CHECKSUM file (--require-checksum)")
    if expected is not None and expected != digest:
        return rejected(src, f"{file_name}: checksum: mismatch, file SHA-256 {digest}, .CHECKSUM says {expected}")

    def load() -> Validated:
        # Opened again, and the bytes read are the bytes hashed: a file replaced in between is refused.
        try:
            with open_regular(path, file_name) as f:
                if sha256_stream(f)[0] != digest:
                    raise fail(file_name, None, "changed", "the file changed while it was being ingested")
                f.seek(0)
                member = read_member(file_name, f, max_member_bytes)
        except OSError as exc:
            raise fail(file_name, None, "cannot read", exc.strerror or str(exc)) from None
        return parse_klines(file_name, member, name.interval, (name.start_ms, name.end_ms))

    return Inspected(src, expected is not None, None, load, member_bytes)


def _declared_bytes(f: BinaryIO) -> int:
    """Uncompressed size the zip's central directory declares; 0 when unreadable (`load` says why)."""
    try:
        f.seek(0)
        with zipfile.ZipFile(f) as archive:
            return sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, ValueError, OverflowError, struct.error, UnicodeDecodeError, OSError):
        return 0


def _unverified_warning(src: SourceFile) -> str:
    return f"{src.file_name}: no .CHECKSUM file; ingesting it as unverified"


def ingest_archive(conn: sqlite3.Connection, path: str, *, require_checksum: bool = False, warn: Warn = no_warn,
                   source: str = "binance-vision", max_member_bytes: int = MAX_MEMBER_BYTES) -> FileOutcome:
    """Verify, validate and ingest one zip on a writer connection (lock held); the outcome is recorded."""
    item = inspect_archive(path, require_checksum=require_checksum, source=source, max_member_bytes=max_member_bytes)
    if item.load is None:
        return reject(conn, item.src, item.reason or "")
    if not item.verified:
        warn(_unverified_warning(item.src))
    return ingest_file(conn, item.src, item.load, verified=item.verified)


def find_archives(paths: Sequence[str]) -> list[str]:
    """Zip files named by `paths`: files as given, directories searched recursively (sorted).

    Every name ending in .zip is taken, whatever its kind (a pipe, a link): inspection reports
    those it will not read, so that nothing is skipped silently.
    """
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(root, f) for f in sorted(files) if f.endswith(".zip"))
        elif os.path.lexists(path):
            # Anything else named is inspected, and refused there if it is not a regular file.
            found.append(path)
        else:
            raise MarketError(f"no such file or directory: {path}")
    if paths and not found:
        raise MarketError(f"no .zip files found in {', '.join(paths)}")
    unique = dict.fromkeys(os.path.abspath(p) for p in found)
    return list(unique)


def ingest_paths(db: str, paths: Sequence[str], *, require_checksum: bool = False, lock_wait: float = 30.0,
                 progress: Progress = no_progress, warn: Warn = no_warn, source: str = "binance-vision",
                 max_member_bytes: int = MAX_MEMBER_BYTES) -> IngestResult:
    """Ingest Binance Vision kline zips into `db`; a rejected file does not stop the others.

    The next files are parsed and validated in worker threads while this one is written.
    """
    started = time.perf_counter()
    archives = find_archives(paths)
    result = IngestResult()
    ahead_bytes = 0  # member bytes submitted to the pool and not yet written
    with writer(db, f"ingest {source}", lock_wait) as conn, ThreadPoolExecutor(max_workers=PARSE_THREADS) as pool:

        def planned() -> Iterator[tuple[Inspected, str | Future[Validated]]]:
            nonlocal ahead_bytes
            # Skips are decided before the files ahead are written: a repeat of a file earlier in
            # this run is decided only when its turn comes, once the earlier copy is recorded.
            seen: set[tuple[str | None, ...]] = set()
            for path in archives:
                item = inspect_archive(path, require_checksum=require_checksum, source=source,
                                       max_member_bytes=max_member_bytes)
                key = (item.src.sha256, item.src.symbol, item.src.interval)
                if item.load is None:
                    yield item, "rejected"
                elif key in seen:
                    yield item, "repeat"
                elif already_ingested(conn, item.src, item.verified):
                    yield item, "skipped"
                elif ahead_bytes + item.member_bytes > AHEAD_BYTES:
                    seen.add(key)
                    yield item, "inline"
                else:
                    seen.add(key)
                    ahead_bytes += item.member_bytes
                    yield item, pool.submit(item.load)

        for item, plan in progress(_ahead(planned(), PARSE_THREADS), total=len(archives), desc="ingest", unit="file"):
            result.files.append(_finish(conn, item, plan, warn))
            if isinstance(plan, Future):
                ahead_bytes -= item.member_bytes
    result.seconds = time.perf_counter() - started
    return result


def _finish(conn: sqlite3.Connection, item: Inspected, plan: str | Future[Validated], warn: Warn) -> FileOutcome:
    if plan == "rejected" or item.load is None:
        return reject(conn, item.src, item.reason or "")
    if plan == "skipped":
        return skipped(conn, item.src)
    if not item.verified:
        warn(_unverified_warning(item.src))
    if isinstance(plan, str):  # a repeat (decided now that the earlier copy is recorded), or parsed inline
        if already_ingested(conn, item.src, item.verified):
            return skipped(conn, item.src)
        load = item.load
    else:
        load = plan.result
    # A file the market cannot take (its series holds foreign values) is rejected like a bad file:
    # its transaction is rolled back and the next files still go in.
    try:
        return write_file(conn, item.src, load(), verified=item.verified)
    except MarketError as exc:
        return reject(conn, item.src, str(exc))


def _ahead(items: Iterator[T], count: int) -> Iterator[T]:
    """Yield each item only once the next `count` items have been produced (started)."""
    window: deque[T] = deque()
    for item in items:
        window.append(item)
        if len(window) > count:
            yield window.popleft()
    yield from window
