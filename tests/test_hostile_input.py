"""A corpus of hostile ingest inputs, end to end through `python -m ingest`.

Each bad input is refused with one line naming the rule, exit code 1, no candle (nor series) written,
a registry row that says why, and the same db then takes a valid file normally. The rules themselves
are unit-tested in test_validate.py, test_binance_vision.py and test_csv_source.py; this file proves
that the whole path (CLI, writer session, registry) holds for every kind of bad input.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from binance_fixtures import checksum_text, kline_csv, kline_rows, write_archive, zip_bytes
from ingest.binance_vision import MAX_MEMBER_BYTES, ingest_paths
from ingest.schema import CANDLE_COLUMNS, CANDLE_DTYPE, read_candles

REPO = Path(__file__).resolve().parents[1]
DAY = "2024-01-15"
NAME = f"BTCUSDT-1h-{DAY}.zip"
MEMBER = NAME.removesuffix(".zip") + ".csv"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, env=env)


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


def archive(data: bytes, name: str = NAME, **kwargs) -> Callable[[Path], list[str]]:
    return lambda d: ["binance-vision", str(write_archive(d, name, data, **kwargs))]


def blob(make: Callable[[], bytes]) -> Callable[[Path], list[str]]:
    return lambda d: ["binance-vision", str(raw_zip(d, make()))]


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
    ("zero-byte-zip", blob(lambda: b""), f"{NAME}: zip: corrupt or unsupported archive"),
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
    for column, field in zip(CANDLE_COLUMNS, (0, 1, 2, 3, 4, 5, 7, 8, 9, 10)):
        out[column] = np.array([row[field] for row in table], dtype=out.dtype[column])
    return out


def assert_a_valid_file_follows(tmp_path: Path, db: Path) -> None:
    """The db the hostile input left behind (lock, WAL, registry) takes the valid day normally."""
    result = ingest_paths(str(db), [str(write_archive(tmp_path / "valid", NAME, VALID))])
    assert [(f.status, f.rows_inserted) for f in result.files] == [("ok", 24)]
    assert counts(db) == (24, 1, 1)
    assert np.array_equal(stored_day(db), expected_day())


@pytest.mark.parametrize("build, message", [pytest.param(b, m, id=i) for i, b, m in CASES])
def test_hostile_input_is_rejected_end_to_end(tmp_path: Path, build, message: str) -> None:
    db = tmp_path / "market.sqlite"
    args = build(tmp_path / "in")
    run = cli(tmp_path, args[0], "--db", str(db), *args[1:])
    assert run.returncode == 1, run.stdout + run.stderr
    assert run.stderr == ""
    lines = run.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("files: 0 ok, 0 skipped, 1 rejected, 0 unverified; rows: 0 "), lines
    assert lines[0].startswith("rejected: ") and message in lines[0], lines[0]
    reason = lines[0].removeprefix("rejected: ")
    source = Path(args[-1] if args[0] == "binance-vision" else args[1])
    stored_name = source.name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    assert registry(db) == [(stored_name, "rejected", reason, digest)]
    assert counts(db) == (0, 0, 0)
    assert_a_valid_file_follows(tmp_path, db)


@pytest.mark.parametrize("symbol", ["../BTCUSDT", "BTC/USDT", "BTC USDT", "BTCÜSDT", "A" * 41])
def test_a_hostile_symbol_argument_is_refused_before_any_file(tmp_path: Path, symbol: str) -> None:
    (tmp_path / "prices.csv").write_bytes(GOOD_CSV)
    db = tmp_path / "market.sqlite"
    run = cli(tmp_path, "csv", "--db", str(db), str(tmp_path / "prices.csv"), "--symbol", symbol, "--interval", "1h")
    assert run.returncode == 2 and run.stdout == ""  # a usage error
    assert run.stderr == (f"Error: python -m ingest csv: argument --symbol: invalid symbol {symbol!r}: "
                          "must match ^[A-Z0-9][A-Z0-9_-]{0,39}$\n")
    assert not db.exists()  # refused before the db is opened: nothing to record
    assert_a_valid_file_follows(tmp_path, db)


@pytest.mark.parametrize("variant", ["crlf", "bom"])
def test_crlf_and_bom_are_accepted_by_design(tmp_path: Path, variant: str) -> None:
    """Not hostile: spreadsheet exports carry CRLF line ends and a UTF-8 BOM, and validate.py accepts both
    (see its split_lines docstring). They must ingest exactly as the plain file does."""
    data = {"crlf": kline_csv(rows(), line_end="\r\n"),
            "bom": b"\xef\xbb\xbf" + kline_csv(rows(), header=True)}[variant]
    db = tmp_path / "market.sqlite"
    run = cli(tmp_path, "binance-vision", "--db", str(db), str(write_archive(tmp_path / "in", NAME, data)))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("files: 1 ok, 0 skipped, 0 rejected, 0 unverified; rows: 24 inserted, ")
    assert [r[1] for r in registry(db)] == ["ok"]
    assert np.array_equal(stored_day(db), expected_day())
