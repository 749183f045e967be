"""Binance Vision kline archives: file names, .CHECKSUM files, zip members, the 12-column CSV.

`ingest_paths` ingests local zips (files or directories, searched recursively); `ingest_archive`
ingests one zip on an open writer connection, for callers (the downloader) that hold the lock.
Zips are hashed and decompressed as streams, with a size cap, and never extracted to disk. A member
up to WHOLE_MEMBER_BYTES (every daily file, monthly files from 1m up) is parsed whole, ahead in a
thread; a larger one (a monthly 1s file) is validated and written chunk by chunk as it is
decompressed, by series_check.py's rules, in the file's one transaction.
"""

from __future__ import annotations

import contextlib
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
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, BinaryIO, TypeVar

import numpy as np

from image_cache.core.errors import ImageCacheError, MarketError
from image_cache.core.grid import check_interval, check_symbol, day_ms
from image_cache.core.hooks import Progress, Warn, no_progress, no_warn
from image_cache.ingest.inputs import CHUNK_BYTES, line_chunks, open_regular, sha256_stream
from image_cache.ingest.registry import (
    FileOutcome,
    IngestResult,
    SourceFile,
    already_ingested,
    ingest_file,
    ingest_stream,
    period_days,
    reject,
    skipped,
    write_file,
)
from image_cache.ingest.schema import CANDLE_DTYPE, writer
from image_cache.ingest.series_check import Chunk, ChunkSink, FileRows, Tally, stream_or_sort
from image_cache.ingest.validate import (
    Lines,
    Validated,
    check_field_counts,
    detect_unit,
    fail,
    is_number,
    split_lines,
    to_ms,
    validate,
)
from image_cache.ingest.venues import BINANCE_SPOT, Venue, series_name

KLINE_FIELDS = ("open_time", "open", "high", "low", "close", "volume", "close_time", "quote_asset_volume",
                "trades", "taker_buy_base_volume", "taker_buy_quote_volume", "ignore")
INT_FIELDS = ("open_time", "close_time", "trades")
# `ignore` is never read.
KLINE_DTYPES = {name: (np.int64 if name in INT_FIELDS else np.float64) for name in KLINE_FIELDS[:11]}
# A kline row is ~150 bytes; anything far longer is not a kline file.
MAX_LINE_BYTES = 4096
# A member decompresses to at most this: a monthly 1s file (~2.7 million rows, 300-400 MB) fits with room;
# beyond it a zip is refused as a bomb, counted as it streams (the header's size is not trusted alone).
MAX_MEMBER_BYTES = 2**30
# Members up to this are parsed whole: daily files of any interval (a 1s day: ~14 MB) and monthly files
# from 1m up (~6 MB). A larger one is streamed: parsed whole it would break the 300 MB peak-memory bound.
WHOLE_MEMBER_BYTES = 16 * 2**20
# Member text parsed at a time when streaming (a chunk's parse costs up to ~7 bytes per byte).
STREAM_CHUNK_BYTES = 4 * 2**20
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
# With WHOLE_MEMBER_BYTES this bounds peak memory (parsing costs up to ~7 bytes per member byte).
AHEAD_BYTES = 6 * 2**20
# What zipfile raises on a damaged or hostile archive.
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError, OverflowError,
              struct.error, UnicodeDecodeError)

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
    except ImageCacheError as exc:
        raise fail(file_name, None, "file name", str(exc)) from None
    try:
        first, after = period_days(match["period"])
    except ValueError:
        raise fail(file_name, None, "file name", f"invalid date {match['period']!r}") from None
    start, end = day_ms(first), day_ms(after)
    return ArchiveName(match["symbol"], match["interval"], match["period"], start, end)


def read_checksum(zip_path: str) -> str | None:
    """The SHA-256 named by the sibling `.CHECKSUM` file, or None when there is none."""
    name = os.path.basename(zip_path)
    if not os.path.lexists(zip_path + ".CHECKSUM"):
        return None
    try:
        with open_regular(zip_path + ".CHECKSUM", name + ".CHECKSUM") as f:
            text = f.read(4096).decode("ascii", errors="replace")
    except ImageCacheError as exc:
        raise fail(name, None, "checksum", str(exc)) from None
    except OSError as exc:
        raise fail(name, None, "checksum", f"cannot read .CHECKSUM file ({exc.strerror or exc})") from None
    match = CHECKSUM_RE.match(text.strip())
    if not match:
        raise fail(name, None, "checksum", "malformed .CHECKSUM file (expected '<sha256>  <file name>')")
    if match["name"] and match["name"] != name:
        raise fail(name, None, "checksum", f".CHECKSUM names another file, {match['name']!r}")
    return match["hex"].lower()


def _zip_error(name: str, exc: Exception) -> MarketError:
    if isinstance(exc, OSError):
        return fail(name, None, "cannot read", exc.strerror or str(exc))
    return fail(name, None, "zip", f"corrupt or unsupported archive ({exc})")


class _CappedMember(io.RawIOBase):
    """A member's decompressed stream that refuses to yield more than `max_bytes` in all."""

    def __init__(self, name: str, member: str, stream: IO[bytes], max_bytes: int):
        super().__init__()
        self.name, self.member, self.stream, self.max_bytes = name, member, stream, max_bytes
        self.count = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        try:
            chunk = self.stream.read(-1 if size is None else size)
        except (*ZIP_ERRORS, OSError) as exc:
            raise _zip_error(self.name, exc) from None
        self.count += len(chunk)
        if self.count > self.max_bytes:
            raise _too_big(self.name, self.member, self.max_bytes)
        return chunk


def _too_big(name: str, member: str, max_bytes: int) -> MarketError:
    return fail(name, None, "zip", f"member {member!r} is larger than {max_bytes} bytes uncompressed")


def _only_member(name: str, archive: zipfile.ZipFile, max_bytes: int) -> zipfile.ZipInfo:
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
    if member.file_size > max_bytes:
        raise _too_big(name, member.filename, max_bytes)
    return member


@contextlib.contextmanager
def open_member(name: str, archive_file: bytes | BinaryIO, max_bytes: int = MAX_MEMBER_BYTES) -> Iterator[BinaryIO]:
    """The one CSV member of a zip as a decompressed stream, refused once it passes `max_bytes`.

    Only stored and deflated members are read: other methods (LZMA's dictionary, bzip2) have
    their own memory needs, and Binance never uses them.
    """
    source = io.BytesIO(archive_file) if isinstance(archive_file, bytes) else archive_file
    try:
        archive = zipfile.ZipFile(source)
    except (*ZIP_ERRORS, OSError) as exc:
        raise _zip_error(name, exc) from None
    with archive:
        try:
            member = _only_member(name, archive, max_bytes)
            stream = archive.open(member)
        except (*ZIP_ERRORS, OSError) as exc:
            raise _zip_error(name, exc) from None
        with stream, _CappedMember(name, member.filename, stream, max_bytes) as capped:
            yield capped  # type: ignore[misc]


def read_member(name: str, archive_file: bytes | BinaryIO, max_bytes: int = MAX_MEMBER_BYTES) -> bytes:
    """The one CSV member of a zip, whole (open_member's rules)."""
    with open_member(name, archive_file, max_bytes) as f:
        return _read_all(f)


def _read_all(f: BinaryIO) -> bytes:
    out = io.BytesIO()
    while chunk := f.read(CHUNK_BYTES):
        out.write(chunk)
    # getvalue() hands over the buffer without a copy: the member is held once.
    return out.getvalue()


def _locate_bad_field(name: str, body: bytes, first_line: int, error: Exception) -> MarketError:
    """After the fast typed parse failed: find the first bad field and say which rule it breaks."""
    import pandas as pd  # here, not at the top: it is a fifth of a command's start-up, and most parse no file
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


def _has_header(lines: Lines) -> bool:
    """A file's first line is a header when its first field is not a number (decided per file)."""
    return not is_number(lines.line(0).split(b",", 1)[0].decode("utf-8", errors="replace"))


def _parse_rows(name: str, lines: Lines, skip: int, first_line: int,
                unit: tuple[int, str] | None) -> tuple[np.ndarray, np.ndarray, tuple[int, str]]:
    """Kline rows of `lines` after the first `skip` (the first of them on `first_line`).

    Returns the candles (CANDLE_DTYPE, times in ms), their close times in ms, and the file's time
    unit with the line that set it (`unit`: as set by an earlier chunk of the same file).
    """
    body = lines.data[int(lines.starts[skip]):]
    rows = len(lines) - skip
    # The right total of commas is cheap to count; when it is right, a line with too few fields
    # implies one with too many, which the typed parse below refuses.
    if body.count(b",") != rows * (len(KLINE_FIELDS) - 1):
        check_field_counts(name, lines, first_line, len(KLINE_FIELDS), skip=skip)
    import pandas as pd

    try:
        frame = pd.read_csv(io.BytesIO(body), header=None, names=list(KLINE_FIELDS), usecols=list(KLINE_DTYPES),
                            dtype=KLINE_DTYPES, engine="c", quoting=csv.QUOTE_NONE, na_filter=False)
    except (ValueError, OverflowError) as exc:
        check_field_counts(name, lines, first_line, len(KLINE_FIELDS), skip=skip)
        raise _locate_bad_field(name, body, first_line, exc) from None
    raw_open = frame["open_time"].to_numpy()
    raw_close = frame["close_time"].to_numpy()
    if unit is None:
        open_unit = detect_unit(name, "open_time", raw_open, first_line)
        close_unit = detect_unit(name, "close_time", raw_close, first_line)
        if close_unit != open_unit:
            raise fail(name, first_line, "time unit", f"open_time is in {open_unit} but close_time in {close_unit}")
        unit = (first_line, open_unit)
    else:
        detect_unit(name, "open_time", raw_open, first_line, reference=unit)
        detect_unit(name, "close_time", raw_close, first_line, reference=unit)
    candles = np.empty(len(frame), dtype=CANDLE_DTYPE)
    for col in KLINE_DTYPES:
        if col not in ("open_time", "close_time"):
            candles[col] = frame[col].to_numpy()
    candles["open_time"] = to_ms(raw_open, unit[1])
    return candles, to_ms(raw_close, unit[1]), unit


def parse_klines(name: str, data: bytes, interval: str, period: tuple[int, int] | None) -> Validated:
    """Validated candles of one kline CSV held whole: header and ms/µs detected per file, times in ms."""
    lines = split_lines(name, data, max_line_bytes=MAX_LINE_BYTES)
    header = _has_header(lines)
    if header and len(lines) == 1:
        raise _header_only(name)
    first_line = 2 if header else 1
    candles, closes, unit = _parse_rows(name, lines, first_line - 1, first_line, None)
    return validate(name, interval, candles, first_line=first_line, time_unit=unit[1], close_ms=closes, period=period)


def _header_only(name: str) -> MarketError:
    return fail(name, None, "no rows", "the file has a header and no data rows")


class _KlineChunks:
    """A kline CSV read from a stream, `chunk_bytes` of text at a time, as validate-ready chunks."""

    def __init__(self, name: str, open_member: Callable[[], contextlib.AbstractContextManager[BinaryIO]],
                 chunk_bytes: int):
        self.name, self.open_member, self.chunk_bytes = name, open_member, chunk_bytes
        self.unit: tuple[int, str] | None = None

    def chunks(self) -> Generator[Chunk, None, None]:
        """(candles, their line numbers, their close times in ms) for each chunk of whole lines, the
        member opened again (`open_member`) on each pass."""
        self.unit = None
        line = 1
        with self.open_member() as f:
            for data in line_chunks(f, self.chunk_bytes, MAX_LINE_BYTES):
                lines = split_lines(self.name, data, max_line_bytes=MAX_LINE_BYTES, line_offset=line - 1)
                skip = 1 if line == 1 and _has_header(lines) else 0
                if len(lines) > skip:
                    candles, closes, self.unit = _parse_rows(self.name, lines, skip, line + skip, self.unit)
                    yield candles, line + skip + np.arange(len(candles), dtype=np.int64), closes
                line += len(lines)
        if line == 1:
            raise fail(self.name, None, "empty file", "no data")
        if self.unit is None:
            raise _header_only(self.name)

    def time_unit(self) -> str:
        assert self.unit is not None  # chunks() raises for a file without rows
        return self.unit[1]


def stream_klines(name: str, open_member: Callable[[], contextlib.AbstractContextManager[BinaryIO]], interval: str,
                  period: tuple[int, int] | None, sink: ChunkSink, chunk_bytes: int = STREAM_CHUNK_BYTES) -> Tally:
    """Validate a kline CSV into `sink` chunk by chunk (series_check.stream_or_sort): a file in time order
    (every Binance file) is read once, another is read again (`open_member`) and sorted."""
    klines = _KlineChunks(name, open_member, chunk_bytes)
    return stream_or_sort(FileRows(name, interval, klines.chunks, klines.time_unit, chunk_bytes, period, closes=True),
                          sink)


@dataclass(frozen=True)
class Inspected:
    """An archive after the cheap checks (read, hash, name, checksum); `reason` set when rejected."""

    src: SourceFile
    verified: bool
    reason: str | None
    load: Callable[[], Validated] | None
    # Uncompressed bytes the zip's directory declares (decompression never reads past them).
    member_bytes: int = 0
    # Validates the member chunk by chunk into a sink; used instead of `load` when `streamed`.
    produce: Callable[[ChunkSink], Tally] | None = None
    streamed: bool = False


def archive_venue(path: str) -> Venue:
    """Binance USDⓈ-M or COIN-M for an archive in Binance Vision's layout under `futures/um` or
    `futures/cm` (as `ingest download` mirrors them), else Binance spot."""
    parts = os.path.realpath(path).split(os.sep)  # the layout the file is in, not a link's name for it
    # …/futures/{um|cm}/{daily|monthly}/klines/SYMBOL/INTERVAL/FILE.zip
    if (len(parts) >= 8 and parts[-7] == "futures" and parts[-6] in ("um", "cm")
            and parts[-5] in ("daily", "monthly") and parts[-4] == "klines"):
        return Venue("binance", parts[-6])
    return BINANCE_SPOT


def inspect_archive(path: str, *, require_checksum: bool = False, source: str = "binance-vision",
                    max_member_bytes: int = MAX_MEMBER_BYTES, whole_member_bytes: int = WHOLE_MEMBER_BYTES,
                    chunk_bytes: int = STREAM_CHUNK_BYTES) -> Inspected:
    """Hash a zip as a stream, parse its name, verify its .CHECKSUM; `load` parses and validates it
    whole, `produce` streams it (for a member declared larger than `whole_member_bytes`).

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
    except ImageCacheError as exc:
        return rejected(unread, str(exc))
    except OSError as exc:
        return rejected(unread, str(fail(file_name, None, "cannot read", exc.strerror or str(exc))))
    src = SourceFile(path, file_name, digest, size, source)
    try:
        name = parse_name(file_name)
        venue = archive_venue(path)
        src = SourceFile(path, file_name, digest, size, source, series_name(name.symbol, venue), name.interval,
                         name.period, venue)
        expected = read_checksum(path)
    except ImageCacheError as exc:
        return rejected(src, str(exc))
    if expected is None and require_checksum:
        return rejected(src, f"{file_name}: checksum: no .CHECKSUM file (--require-checksum)")
    if expected is not None and expected != digest:
        return rejected(src, f"{file_name}: checksum: mismatch, file SHA-256 {digest}, .CHECKSUM says {expected}")

    @contextlib.contextmanager
    def member() -> Iterator[BinaryIO]:
        # Opened again, and the bytes read are the bytes hashed: a file replaced in between is refused.
        with open_regular(path, file_name) as f:
            try:
                same = sha256_stream(f)[0] == digest
                f.seek(0)
            except OSError as exc:
                raise fail(file_name, None, "cannot read", exc.strerror or str(exc)) from None
            if not same:
                raise fail(file_name, None, "changed", "the file changed while it was being ingested")
            with open_member(file_name, f, max_member_bytes) as stream:
                yield stream

    period = (name.start_ms, name.end_ms)

    def load() -> Validated:
        with member() as stream:
            data = _read_all(stream)
        return parse_klines(file_name, data, name.interval, period)

    def produce(sink: ChunkSink) -> Tally:
        return stream_klines(file_name, member, name.interval, period, sink, chunk_bytes)

    return Inspected(src, expected is not None, None, load, member_bytes, produce, member_bytes > whole_member_bytes)


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
                   source: str = "binance-vision", **sizes: int) -> FileOutcome:
    """Verify, validate and ingest one zip on a writer connection (lock held); the outcome is recorded.

    `sizes`: inspect_archive's max_member_bytes, whole_member_bytes and chunk_bytes.
    """
    item = inspect_archive(path, require_checksum=require_checksum, source=source, **sizes)
    if item.load is None or item.produce is None:
        return reject(conn, item.src, item.reason or "")
    if not item.verified:
        warn(_unverified_warning(item.src))
    if item.streamed:
        return ingest_stream(conn, item.src, item.produce, verified=item.verified)
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
                 **sizes: int) -> IngestResult:
    """Ingest Binance Vision kline zips into `db`; a rejected file does not stop the others.

    The next files are parsed and validated in worker threads while this one is written; a member
    streamed chunk by chunk is validated as it is written. `sizes`: inspect_archive's
    max_member_bytes, whole_member_bytes and chunk_bytes (tests make them small).
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
                item = inspect_archive(path, require_checksum=require_checksum, source=source, **sizes)
                key = (item.src.sha256, item.src.symbol, item.src.interval)
                if item.load is None:
                    yield item, "rejected"
                elif key in seen:
                    yield item, "repeat"
                elif already_ingested(conn, item.src, item.verified):
                    yield item, "skipped"
                elif item.streamed or ahead_bytes + item.member_bytes > AHEAD_BYTES:
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
    if plan == "rejected" or item.load is None or item.produce is None:
        return reject(conn, item.src, item.reason or "")
    if plan == "skipped":
        return skipped(conn, item.src)
    if not item.verified:
        warn(_unverified_warning(item.src))
    if item.streamed:  # ingest_stream skips a repeat of a file recorded earlier in this run
        return ingest_stream(conn, item.src, item.produce, verified=item.verified)
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
    except ImageCacheError as exc:
        return reject(conn, item.src, str(exc))


def _ahead(items: Iterator[T], count: int) -> Iterator[T]:
    """Yield each item only once the next `count` items have been produced (started)."""
    window: deque[T] = deque()
    for item in items:
        window.append(item)
        if len(window) > count:
            yield window.popleft()
    yield from window
