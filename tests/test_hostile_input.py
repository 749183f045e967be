"""A corpus of hostile ingest inputs, end to end through `python -m ingest`.

Each bad input is refused with one line naming the rule, exit code 1, no candle (nor series) written,
a registry row that says why, and the same db then takes a valid file normally. The rules themselves
are unit-tested in test_validate.py, test_binance_vision.py and test_csv_source.py; this file proves
that the whole path (CLI, writer session, registry) holds for every kind of bad input.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import sqlite3
import struct
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from binance_fixtures import checksum_text, kline_csv, kline_rows, write_archive, zip_bytes
from conftest import run_cli
from image_cache.ingest.binance_vision import MAX_MEMBER_BYTES, ingest_paths
from image_cache.ingest.schema import CANDLE_COLUMNS, CANDLE_DTYPE, read_candles

DAY = "2024-01-15"
NAME = f"BTCUSDT-1h-{DAY}.zip"
MEMBER = NAME.removesuffix(".zip") + ".csv"


def cli(cwd: Path, *args: str, process: bool = False) -> subprocess.CompletedProcess:
    """`python -m ingest ARGS`, in this process (the command line's `main(argv)`) unless `process`."""
    return run_cli(cwd, *args, module="ingest", timeout=60, process=process)


def rows() -> list[list[str]]:
    return kline_rows("1h", DAY, 24)


def edit(change: Callable[[list[list[str]]], object]) -> bytes:
    """The valid day's CSV after `change` mutated its rows."""
    table = rows()
    change(table)
    return kline_csv(table)


def put(row: int, col: int, value: str) -> bytes:
    return edit(lambda t: t[row].__setitem__(col, value))


def raw_zip(folder: Path, blob: bytes, name: str = NAME) -> Path:
    """Any bytes as `name`, with a .CHECKSUM that matches them (so the rule under test is what fires)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(blob)
    (folder / (name + ".CHECKSUM")).write_text(checksum_text(blob, name))
    return folder / name


def declared_size(blob: bytes, size: int) -> bytes:
    """A one-member zip whose headers declare `size` uncompressed bytes, whatever the data really holds."""
    patched = bytearray(blob)
    struct.pack_into("<I", patched, 22, size)  # local file header
    struct.pack_into("<I", patched, patched.rfind(b"PK\x01\x02") + 24, size)  # central directory
    return bytes(patched)


def flagged_encrypted(blob: bytes) -> bytes:
    """The zip with the "encrypted" bit set on its member (local header and central directory)."""
    patched = bytearray(blob)
    struct.pack_into("<H", patched, 6, struct.unpack_from("<H", patched, 6)[0] | 1)
    central = patched.rfind(b"PK\x01\x02")
    struct.pack_into("<H", patched, central + 8, struct.unpack_from("<H", patched, central + 8)[0] | 1)
    return bytes(patched)


def compressed(method: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=method) as z:
        z.writestr(MEMBER, VALID)
    return buffer.getvalue()


def fifo(name: str = NAME, *, target: bool = False) -> Callable[[Path], list[str]]:
    """A named pipe as the archive (or, with `target`, a link to one): never opened blocking."""
    def build(d: Path) -> list[str]:
        d.mkdir(parents=True, exist_ok=True)
        os.mkfifo(d / ("pipe" if target else name))
        if target:
            (d / name).symlink_to(d / "pipe")
        return ["binance-vision", str(d / name)]
    return build


def dangling(d: Path) -> list[str]:
    d.mkdir(parents=True, exist_ok=True)
    (d / NAME).symlink_to(d / "nowhere.zip")
    return ["binance-vision", str(d / NAME)]


def checksum_kind(make: Callable[[Path], None]) -> Callable[[Path], list[str]]:
    """A valid zip whose .CHECKSUM is made by `make` (a directory, a pipe)."""
    def build(d: Path) -> list[str]:
        path = write_archive(d, NAME, VALID, checksum=None)
        make(d / (NAME + ".CHECKSUM"))
        return ["binance-vision", str(path)]
    return build


def archive(data: bytes, name: str = NAME, **kwargs) -> Callable[[Path], list[str]]:
    return lambda d: ["binance-vision", str(write_archive(d, name, data, **kwargs))]


def blob(make: Callable[[], bytes]) -> Callable[[Path], list[str]]:
    return lambda d: ["binance-vision", str(raw_zip(d, make()))]


def sparse_zip(size: int) -> Callable[[Path], list[str]]:
    """A file of `size` bytes that starts like a zip; sparse, so it costs no disk (and no memory here)."""
    def build(folder: Path) -> list[str]:
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / NAME, "wb") as f:
            f.write(b"PK\x03\x04")
            f.truncate(size)
        return ["binance-vision", str(folder / NAME)]
    return build


def members(content: dict[str, bytes]) -> Callable[[Path], list[str]]:
    return lambda d: ["binance-vision", str(write_archive(d, NAME, members=content))]


def _with_checksum_text(folder: Path, text: str) -> Path:
    path = write_archive(folder, NAME, VALID, checksum=None)
    (folder / (NAME + ".CHECKSUM")).write_text(text)
    return path


def csv_file(data: bytes, *extra: str) -> Callable[[Path], list[str]]:
    def build(d: Path) -> list[str]:
        d.mkdir(parents=True, exist_ok=True)
        (d / "prices.csv").write_bytes(data)
        return ["csv", str(d / "prices.csv"), "--symbol", "BTCUSDT", "--interval", "1h", *extra]
    return build


VALID = kline_csv(rows())
GOOD_CSV = b"open_time,open,high,low,close,volume\n1705276800000,1,2,0.5,1.5,10\n"

# (id, build the input in a folder → CLI args, what the one-line rejection must say)
CASES = [
    ("checksum-mismatch", archive(VALID, checksum="wrong"), f"{NAME}: checksum: mismatch, file SHA-256 "),
    ("checksum-malformed", lambda d: ["binance-vision", str(_with_checksum_text(d, "not a checksum"))],
     f"{NAME}: checksum: malformed .CHECKSUM file"),
    ("checksum-required", lambda d: ["binance-vision", "--require-checksum", str(write_archive(d, NAME, VALID,
                                                                                               checksum=None))],
     f"{NAME}: checksum: no .CHECKSUM file (--require-checksum)"),
    ("truncated-zip", blob(lambda: zip_bytes({MEMBER: VALID})[:-40]), f"{NAME}: zip: corrupt or unsupported archive"),
    ("zero-byte-zip", blob(lambda: b""), f"{NAME}: zip: not a zip archive (starts with b'')"),
    # Not a zip: recognised from the first bytes, never read through.
    ("csv-named-zip", blob(lambda: VALID), f"{NAME}: zip: not a zip archive (starts with b'1705')"),
    ("gzip-named-zip", blob(lambda: b"\x1f\x8b\x08\x00" + bytes(100)), "zip: not a zip archive (starts with "),
    ("html-error-page", blob(lambda: b"<html><body>404 Not Found</body></html>"), "zip: not a zip archive"),
    ("larger-than-any-kline-zip", sparse_zip(MAX_MEMBER_BYTES + 2**20 + 4),
     f"{NAME}: zip: archive is {MAX_MEMBER_BYTES + 2**20 + 4} bytes, larger than a zip of one member within"),
    ("empty-zip", blob(lambda: zip_bytes({})), f"{NAME}: zip: expected exactly one CSV member, found 0"),
    ("encrypted-member", blob(lambda: flagged_encrypted(zip_bytes({MEMBER: VALID}))),
     f"{NAME}: zip: member '{MEMBER}' is encrypted"),
    ("lzma-member", blob(lambda: compressed(zipfile.ZIP_LZMA)),
     f"{NAME}: zip: member '{MEMBER}' uses compression method 14; only stored and deflate are read"),
    ("bzip2-member", blob(lambda: compressed(zipfile.ZIP_BZIP2)), "uses compression method 12"),
    ("directory-member", members({"data/": b""}), f"{NAME}: zip: member name 'data/' contains a path"),
    ("bad-crc",
     blob(lambda: (lambda z: z[:z.rfind(b"PK\x01\x02") + 16] + b"\0\0\0\0" + z[z.rfind(b"PK\x01\x02") + 20:])(
        zip_bytes({MEMBER: VALID}))), f"{NAME}: zip: corrupt or unsupported archive (Bad CRC-32"),
    # Not regular files: refused without a blocking open.
    ("archive-is-a-pipe", fifo(), f"{NAME}: not a regular file: a named pipe"),
    ("archive-links-to-a-pipe", fifo(target=True), f"{NAME}: not a regular file: a named pipe"),
    ("archive-dangling-link", dangling, f"{NAME}: cannot read: No such file or directory"),
    ("checksum-is-a-directory", checksum_kind(lambda p: p.mkdir()),
     f"{NAME}: checksum: {NAME}.CHECKSUM: not a regular file: a directory"),
    ("checksum-is-a-pipe", checksum_kind(os.mkfifo),
     f"{NAME}: checksum: {NAME}.CHECKSUM: not a regular file: a named pipe"),
    ("checksum-empty", lambda d: ["binance-vision", str(_with_checksum_text(d, ""))],
     f"{NAME}: checksum: malformed .CHECKSUM file"),
    ("checksum-other-name", lambda d: ["binance-vision", str(_with_checksum_text(
        d, checksum_text(zip_bytes({MEMBER: VALID}), "ETHUSDT-1h-2024-01-15.zip")))],
     f"{NAME}: checksum: .CHECKSUM names another file, 'ETHUSDT-1h-2024-01-15.zip'"),
    ("two-members", members({MEMBER: VALID, "b.csv": VALID}), f"{NAME}: zip: expected exactly one CSV member, found 2"),
    ("member-dotdot", members({"../" + MEMBER: VALID}), f"{NAME}: zip: member name '../{MEMBER}' contains a path"),
    ("member-absolute", members({"/tmp/" + MEMBER: VALID}),
     f"{NAME}: zip: member name '/tmp/{MEMBER}' contains a path"),
    ("member-backslash", members({"..\\" + MEMBER: VALID}), "contains a path"),
    ("member-not-csv", members({"inner.zip": zip_bytes({MEMBER: VALID})}),
     f"{NAME}: zip: member 'inner.zip' is not a .csv"),
    # Zip bombs, cheaply: the headers lie about the size in either direction.
    ("bomb-declared-huge", blob(lambda: declared_size(zip_bytes({MEMBER: b"0" * 2**20}), 2**32 - 1)),
     f"{NAME}: zip: member '{MEMBER}' is larger than {MAX_MEMBER_BYTES} bytes uncompressed"),
    ("bomb-expands-beyond-declared", blob(lambda: declared_size(zip_bytes({MEMBER: b"0" * 4 * 2**20}), 1000)),
     f"{NAME}: zip: corrupt or unsupported archive (Bad CRC-32"),
    ("last-day-there-is", archive(VALID, name="BTCUSDT-1h-9999-12-31.zip"),  # its end overflowed: a traceback
     "BTCUSDT-1h-9999-12-31.zip: file name: invalid date '9999-12-31'"),
    ("empty-csv", archive(b""), f"{NAME}: empty file: no data"),
    ("header-only", archive(kline_csv([], header=True)), f"{NAME}: no rows: the file has a header and no data rows"),
    ("11-columns", archive(edit(lambda t: t[4].pop())), f"{NAME}: line 5: field count: 11 fields, expected 12"),
    ("13-columns", archive(edit(lambda t: t[4].append("0"))), f"{NAME}: line 5: field count: 13 fields, expected 12"),
    ("non-numeric-price", archive(put(4, 2, "abc")), f"{NAME}: line 5: decimal number: high is 'abc'"),
    ("non-numeric-time", archive(put(4, 0, "2024-01-15")), f"{NAME}: line 5: integer time: open_time is '2024-01-15'"),
    ("nul-byte", archive(put(4, 1, "10\x001")), f"{NAME}: line 5: decimal number: open is "),
    ("nan", archive(put(4, 4, "NaN")), f"{NAME}: line 5: finite decimal: close is "),
    ("inf", archive(put(4, 5, "inf")), f"{NAME}: line 5: finite decimal: volume is inf"),
    ("negative-price", archive(put(4, 3, "-1")), f"{NAME}: line 5: price > 0: low is -1.0"),
    ("negative-volume", archive(put(4, 5, "-1")), f"{NAME}: line 5: volume >= 0: volume is -1.0"),
    ("negative-trades", archive(put(4, 8, "-3")), f"{NAME}: line 5: trades >= 0: trades is -3"),
    ("fractional-trades", archive(put(4, 8, "10.5")), f"{NAME}: line 5: integer trades: trades is '10.5'"),
    ("empty-field", archive(put(4, 2, "")), f"{NAME}: line 5: decimal number: high is ''"),
    ("quoted-field", archive(put(4, 2, '"106"')), f"{NAME}: line 5: decimal number: high is '\"106\"'"),
    ("hex-price", archive(put(4, 2, "0x10")), f"{NAME}: line 5: decimal number: high is '0x10'"),
    ("overflowing-price", archive(put(4, 2, "1e400")), f"{NAME}: line 5: finite decimal: high is inf"),
    ("time-11-digits", archive(put(4, 0, "17052768000")), f"{NAME}: line 5: time unit: open_time 17052768000 has 11 "),
    ("close-time-in-us", archive(edit(lambda t: [row.__setitem__(6, row[6] + "999") for row in t])),
     f"{NAME}: line 1: time unit: open_time is in ms but close_time in us"),
    ("before-the-period", archive(kline_csv(kline_rows("1h", "2024-01-14", 24)[-1:] + rows()[1:])),
     f"{NAME}: line 1: period: open_time 2024-01-14T23:00:00Z is outside the file's period"),
    ("blank-line", archive(edit(lambda t: t.insert(4, []))), f"{NAME}: line 5: blank line: no fields"),
    ("spaces-line", archive(edit(lambda t: t.insert(4, ["   "]))),
     f"{NAME}: line 5: field count: 1 fields, expected 12"),
    ("lone-cr", archive(VALID.replace(b"\n", b"\r", 1)),
     f"{NAME}: line 1: line ends: carriage return without line feed"),
    ("utf16", archive(b"\xff\xfe" + VALID.decode().encode("utf-16-le")),
     f"{NAME}: line 1: encoding: byte 0xff is not UTF-8"),
    ("high-below-low", archive(put(4, 2, "1")), f"{NAME}: line 5: high >= max(open, close): high 1.0"),
    ("open-above-high", archive(put(4, 1, "1000")),
     f"{NAME}: line 5: high >= max(open, close): high 105.5, open 1000.0"),
    ("open-below-low", archive(put(4, 1, "1")), f"{NAME}: line 5: low <= min(open, close): low 103.0, open 1.0"),
    ("mixed-ms-and-us", archive(edit(lambda t: t.__setitem__(4, kline_rows("1h", DAY, 5, unit="us")[4]))),
     f"{NAME}: line 5: time unit: open_time is in us but line 1 is in ms; one unit per file"),
    ("after-the-period", archive(kline_csv(kline_rows("1h", DAY, 25))),
     f"{NAME}: line 25: period: open_time 2024-01-16T00:00:00Z is outside the file's period"),
    ("conflicting-duplicate", archive(edit(lambda t: t.append(t[3][:4] + ["103.25"] + t[3][5:]))),
     f"{NAME}: line 25: duplicate open time: open_time 2024-01-15T03:00:00Z also on line 4 with other values"),
    ("10-MB-line", archive(b"1" * (10 * 2**20)), f"{NAME}: line 1: line length: 10485760 bytes, the limit is 4096"),
    ("non-utf8", archive(put(4, 11, "<ff>").replace(b"<ff>", b"\xff")),
     f"{NAME}: line 5: encoding: byte 0xff is not UTF-8"),
    # Symbols through the file name ('/' cannot be in a file name: the backslash stands for it).
    ("name-dotdot", archive(VALID, "..BTCUSDT-1h-2024-01-15.zip"), "file name: invalid symbol '..BTCUSDT'"),
    ("name-backslash", archive(VALID, "..\\BTCUSDT-1h-2024-01-15.zip"),
     "file name: expected SYMBOL-INTERVAL-YYYY-MM[-DD].zip"),
    ("name-space", archive(VALID, "BTC USDT-1h-2024-01-15.zip"), "file name: invalid symbol 'BTC USDT'"),
    ("name-unicode", archive(VALID, "BTCÜSDT-1h-2024-01-15.zip"), "file name: invalid symbol 'BTCÜSDT'"),
    ("name-41-chars", archive(VALID, "A" * 41 + "-1h-2024-01-15.zip"), f"file name: invalid symbol '{'A' * 41}'"),
    ("name-newline", archive(VALID, "BTC\nUSDT-1h-2024-01-15.zip"), "file name: invalid symbol 'BTC\\nUSDT'"),
    ("name-undecodable-byte", archive(VALID, "BTC\udcffUSDT-1h-2024-01-15.zip", checksum=None, members={MEMBER: VALID}),
     "file name: invalid symbol 'BTC\\udcffUSDT'"),
    ("unknown-interval", archive(VALID, "BTCUSDT-7m-2024-01-15.zip"), "file name: unknown interval code '7m'"),
    ("name-invalid-day", archive(VALID, "BTCUSDT-1h-2024-02-30.zip"), "file name: invalid date '2024-02-30'"),
    ("name-month-13", archive(VALID, "BTCUSDT-1h-2024-13.zip"), "file name: invalid date '2024-13'"),
    ("name-lowercase", archive(VALID, "btcusdt-1h-2024-01-15.zip"), "file name: invalid symbol 'btcusdt'"),
    ("name-not-zip", archive(VALID, "BTCUSDT-1h-2024-01-15.txt"),
     "file name: expected SYMBOL-INTERVAL-YYYY-MM[-DD].zip"),
    # Generic CSV files.
    ("csv-no-time-column", csv_file(b"when,open,high,low,close,volume\n1705276800000,1,2,0.5,1.5,10\n"),
     "prices.csv: line 1: header: no time column (looked for open_time"),
]


def registry(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT file_name, status, reason, sha256 FROM ingested_files ORDER BY id").fetchall()


def counts(db: Path) -> tuple[int, int, int]:
    with sqlite3.connect(db) as conn:
        return tuple(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
                     for table in ("candles", "series", "symbols"))


def stored_day(db: Path) -> np.ndarray:
    with sqlite3.connect(db) as conn:
        return read_candles(conn, conn.execute("SELECT id FROM series").fetchone()[0])


def expected_day() -> np.ndarray:
    """The valid day's candles, straight from the fixture rows (kline field → candle column)."""
    table = rows()
    out = np.empty(len(table), dtype=CANDLE_DTYPE)
    for column, field in zip(CANDLE_COLUMNS, (0, 1, 2, 3, 4, 5, 7, 8, 9, 10), strict=True):
        out[column] = np.array([row[field] for row in table], dtype=out.dtype[column])
    return out


def assert_a_valid_file_follows(tmp_path: Path, db: Path) -> None:
    """The db the hostile input left behind (lock, WAL, registry) takes the valid day normally."""
    result = ingest_paths(str(db), [str(write_archive(tmp_path / "valid", NAME, VALID))])
    assert [(f.status, f.rows_inserted) for f in result.files] == [("ok", 24)]
    assert counts(db) == (24, 1, 1)
    assert np.array_equal(stored_day(db), expected_day())


# Refused before they are read through: the registry records no hash for them.
UNREAD = {"zero-byte-zip", "csv-named-zip", "gzip-named-zip", "html-error-page", "larger-than-any-kline-zip",
          "archive-is-a-pipe", "archive-links-to-a-pipe", "archive-dangling-link"}


def test_the_corpus_holds_at_least_60_ingest_inputs() -> None:
    assert len(CASES) + len(HOSTILE_SYMBOLS) + len(ACCEPTED_VARIANTS) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("case, build, message", [pytest.param(i, b, m, id=i) for i, b, m in CASES])
def test_hostile_input_is_rejected_end_to_end(tmp_path: Path, case: str, build, message: str) -> None:
    db = tmp_path / "market.sqlite"
    args = build(tmp_path / "in")
    run = cli(tmp_path, args[0], "--market-db", str(db), *args[1:])
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr == ""  # no traceback, no warning
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("files: 0 ok, 0 skipped, 1 rejected, 0 unverified; rows: 0 "), lines
    assert lines[0].startswith("rejected: ") and message in lines[0], lines[0]
    reason = lines[0].removeprefix("rejected: ")
    source = Path(args[-1] if args[0] == "binance-vision" else args[1])
    stored_name = source.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    digest = None if case in UNREAD else hashlib.sha256(source.read_bytes()).hexdigest()
    assert registry(db) == [(stored_name, "rejected", reason, digest)]
    assert counts(db) == (0, 0, 0)
    assert_a_valid_file_follows(tmp_path, db)


def test_a_real_process_answers_as_main_does(tmp_path: Path) -> None:
    """The corpus runs in-process; the installed entry point gives the same exit code, output and rows."""
    answers = []
    for process in (False, True):
        folder = tmp_path / str(process)
        case, build, _ = CASES[0]
        args = build(folder / "in")
        run = cli(folder, args[0], "--market-db", str(folder / "market.sqlite"), *args[1:], process=process)
        timeless = re.sub(r"; [0-9.]+ s, [0-9,]+ rows/s$", "", run.stdout.replace(str(folder), "F"), flags=re.M)
        answers.append((run.returncode, timeless, run.stderr,
                        registry(folder / "market.sqlite")))
    assert answers[0] == answers[1]
    assert answers[0][0] == 1


HOSTILE_SYMBOLS = ["../BTCUSDT", "BTC/USDT", "BTC USDT", "BTCÜSDT", "A" * 41]
ACCEPTED_VARIANTS = ["crlf", "bom"]


@pytest.mark.parametrize("symbol", HOSTILE_SYMBOLS)
def test_a_hostile_symbol_argument_is_refused_before_any_file(tmp_path: Path, symbol: str) -> None:
    (tmp_path / "prices.csv").write_bytes(GOOD_CSV)
    db = tmp_path / "market.sqlite"
    run = cli(tmp_path, "csv", "--market-db", str(db), str(tmp_path / "prices.csv"), "--symbol", symbol, "--interval",
              "1h")
    assert run.returncode == 2 and run.stdout == ""  # a usage error
    assert run.stderr == (f"Error: python -m ingest csv: argument --symbol: invalid symbol {symbol!r}: "
                          "must match ^[A-Z0-9][A-Z0-9_-]{0,39}$\n")
    assert not db.exists()  # refused before the db is opened: nothing to record
    assert_a_valid_file_follows(tmp_path, db)


@pytest.mark.parametrize("variant", ACCEPTED_VARIANTS)
def test_crlf_and_bom_are_accepted_by_design(tmp_path: Path, variant: str) -> None:
    """Not hostile: spreadsheet exports carry CRLF line ends and a UTF-8 BOM, and validate.py accepts both
    (see its split_lines docstring). They must ingest exactly as the plain file does."""
    data = {"crlf": kline_csv(rows(), line_end="\r\n"),
            "bom": b"\xef\xbb\xbf" + kline_csv(rows(), header=True)}[variant]
    db = tmp_path / "market.sqlite"
    run = cli(tmp_path, "binance-vision", "--market-db", str(db), str(write_archive(tmp_path / "in", NAME, data)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("files: 1 ok, 0 skipped, 0 rejected, 0 unverified; rows: 24 inserted, ")
    assert [r[1] for r in registry(db)] == ["ok"]
    assert np.array_equal(stored_day(db), expected_day())
