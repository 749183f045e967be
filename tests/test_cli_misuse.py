"""A corpus of command-line misuse, end to end through `python image_cache.py` and `python -m ingest`.

Every case ends with its documented exit code (README, "Exit codes": 2 for a usage error, 1 for a file or
data that cannot be used), exactly one `Error:` line on stderr, nothing on stdout, no traceback, and
nothing new written next to the inputs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import REPO, run_cli

RENDER, INGEST = "image_cache.py", "ingest"
BINARY = bytes(range(256)) * 8  # not UTF-8, not TOML, not SQLite


def folder(d: Path) -> str:
    (d / "folder").mkdir()
    return str(d / "folder")


def binary(d: Path) -> str:
    (d / "blob.bin").write_bytes(BINARY)
    return str(d / "blob.bin")


def fifo(d: Path) -> str:
    os.mkfifo(d / "pipe")
    return str(d / "pipe")


def toml(body: str) -> Callable[[Path], str]:
    def write(d: Path) -> str:
        (d / "bad.toml").write_text(f"[image_cache]\n{body}\n")
        return str(d / "bad.toml")
    return write


def text(d: Path) -> str:
    (d / "notes.txt").write_text("open,high\n1,2\n")
    return str(d / "notes.txt")


# (case id, CLI, arguments (a callable makes a file in the test folder), exit code, text the error holds)
CASES = [
    ("no-command", RENDER, [], 2, "the following arguments are required: COMMAND"),
    ("unknown-command", RENDER, ["draw"], 2, "invalid choice: 'draw'"),
    ("unknown-flag", RENDER, ["render", "--colour", "red"], 2, "unrecognized arguments: --colour red"),
    ("limit-negative", RENDER, ["render", "--limit", "-1"], 2, "argument --limit: must be at least 0, got -1"),
    ("limit-not-a-number", RENDER, ["render", "--limit", "ten"], 2, "argument --limit: expected an integer"),
    ("style-unknown", RENDER, ["render", "--style", "nope"], 2, "unknown style 'nope'"),
    ("size-too-small", RENDER, ["render", "--size", "1"], 2, "image size 1 px is too small"),
    ("window-too-long", RENDER, ["render", "--window", "100000"], 2, "window length must be an integer in 1..5461"),
    ("size-too-small-for-window", RENDER, ["render", "--size", "256", "--window", "150"], 2,
     "image size 256 px is too small for a 150-candle window"),
    ("interval-filter-unknown", RENDER, ["render", "--intervals", "2d"], 2, "--intervals: unknown interval code '2d'"),
    ("symbol-filter-lower-case", RENDER, ["render", "--symbols", "btcusdt"], 2, "--symbols: invalid symbol 'btcusdt'"),
    ("symbol-filter-path", RENDER, ["repair", "--symbols", "../victim"], 2, "--symbols: invalid symbol '../victim'"),
    ("jobs-negative", RENDER, ["render", "--jobs", "-1"], 2, "--jobs must be at least 0, got -1"),
    ("jobs-not-a-number", RENDER, ["render", "--jobs", "two"], 2, "--jobs must be an integer"),
    ("start-not-a-date", RENDER, ["render", "--start", "yesterday"], 2, "--start: invalid date 'yesterday'"),
    ("end-before-start", RENDER, ["render", "--start", "2021-01-01", "--end", "2020-01-01"], 2,
     "end 2020-01-01 is not after start 2021-01-01"),
    ("config-missing", RENDER, ["render", "--config", "none.toml"], 2, "config file not found: none.toml"),
    ("config-binary", RENDER, ["verify", "--config", binary], 2, "not a TOML file"),
    ("config-directory", RENDER, ["status", "--config", folder], 2, "is not a regular file"),
    ("config-named-pipe", RENDER, ["repair", "--config", fifo], 2, "is not a regular file"),
    ("config-unknown-key", RENDER, ["render", "--config", toml("colour = 1")], 2, "unknown key 'colour'"),
    ("config-bad-style", RENDER, ["status", "--config", toml('style = "nope"')], 2, "unknown style 'nope'"),
    ("export-without-out", RENDER, ["export", "--format", "parquet"], 2, "the following arguments are required: OUT"),
    ("market-missing", RENDER, ["render", "--dry-run", "--market-db", "none.sqlite"], 1,
     "market database not found: none.sqlite"),
    ("market-directory", RENDER, ["render", "--dry-run", "--market-db", folder], 1, "market database not found"),
    ("market-not-sqlite", RENDER, ["render", "--dry-run", "--market-db", text], 1, "is not a readable SQLite database"),
    ("index-missing", RENDER, ["status", "--index-db", "none.sqlite"], 1, "image index not found: none.sqlite"),
    ("ingest-no-command", INGEST, [], 2, "the following arguments are required: COMMAND"),
    ("ingest-unknown-flag", INGEST, ["status", "--verbose"], 2, "unrecognized arguments: --verbose"),
    ("ingest-days-zero", INGEST, ["sample", "--days", "0"], 2, "argument --days: must be between 1 and 3660, got 0"),
    ("ingest-seed-negative", INGEST, ["sample", "--seed", "-1"], 2, "argument --seed: must be at least 0"),
    ("ingest-symbols-empty", INGEST, ["sample", "--symbols", ","], 2, "argument --symbols: expected a comma-separated"),
    ("ingest-symbols-lower-case", INGEST, ["sample", "--symbols", "btc"], 2, "invalid symbol 'btc'"),
    ("ingest-end-not-a-date", INGEST, ["sample", "--end", "soon"], 2, "argument --end: invalid date 'soon'"),
    ("ingest-db-directory", INGEST, ["sample", "--market-db", folder], 1, "not a market database: not a regular file"),
    ("ingest-lock-wait-nan", INGEST, ["sample", "--lock-wait", "nan"], 2, "argument --lock-wait: must be a finite"),
    ("ingest-csv-missing", INGEST, ["csv", "none.csv", "--symbol", "BTCUSDT", "--interval", "1h"], 1,
     "cannot read"),
    ("ingest-csv-directory", INGEST, ["csv", folder, "--symbol", "BTCUSDT", "--interval", "1h"], 1,
     "not a regular file: a directory"),
    ("ingest-csv-interval", INGEST, ["csv", text, "--symbol", "BTCUSDT", "--interval", "2d"], 2,
     "argument --interval: invalid choice: '2d'"),
    ("ingest-zip-missing", INGEST, ["binance-vision", "none.zip"], 1, "no such file or directory: none.zip"),
    ("ingest-download-jobs-zero", INGEST, ["download", "--symbols", "BTCUSDT", "--intervals", "1h", "--start",
                                           "2024-01-01", "--jobs", "0"], 2, "argument --jobs: must be at least 1"),
    ("ingest-download-interval", INGEST, ["download", "--symbols", "BTCUSDT", "--intervals", "2d", "--start",
                                          "2024-01-01"], 2, "unknown interval code '2d'"),
    ("ingest-download-end-before-start", INGEST, ["download", "--symbols", "BTCUSDT", "--intervals", "1h",
                                                  "--start", "2024-01-02", "--end", "2024-01-01"], 1,
     "--start 2024-01-02 must be before --end 2024-01-01"),
    ("ingest-resample-target", INGEST, ["resample", "--to", "2d"], 2, "argument --to: unknown interval code '2d'"),
    ("ingest-gaps-symbol", INGEST, ["gaps", "--symbols", "btc"], 2, "argument --symbols: invalid symbol 'btc'"),
    ("ingest-status-missing", INGEST, ["status", "--market-db", "none.sqlite"], 1, "no market database at none.sqlite"),
    ("ingest-status-not-sqlite", INGEST, ["status", "--market-db", binary], 1, "file is not a database"),
]


def test_the_corpus_is_large_enough():
    assert len(CASES) >= 25 and len({case[0] for case in CASES}) == len(CASES)
    assert {cli for _, cli, *_ in CASES} == {RENDER, INGEST}


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): (p.read_bytes() if p.is_file() else b"") for p in sorted(d.rglob("*"))
            if not p.is_fifo()}


@pytest.mark.parametrize("name, cli, args, code, message", CASES, ids=[case[0] for case in CASES])
def test_misuse_is_one_error_line(tmp_path: Path, name: str, cli: str, args: list, code: int, message: str):
    argv = [arg(tmp_path) if callable(arg) else arg for arg in args]
    before = snapshot(tmp_path)
    result = run_cli(tmp_path, *argv, module=INGEST if cli == INGEST else None, timeout=60)
    assert "Traceback" not in result.stderr
    assert result.returncode == code, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr
    assert snapshot(tmp_path) == before  # nothing written: no database, index, lock or image


@pytest.mark.parametrize("cli, args", [
    (RENDER, ["status"]), (RENDER, ["status", "--json"]), (INGEST, ["status"]), (INGEST, ["status", "--json"])])
def test_a_reader_that_leaves_early_gets_a_quiet_exit(rendered: Path, cli: str, args: list[str]):
    """`status | head`: the reader closes the pipe before the result is written."""
    command = [sys.executable, "-m", INGEST] if cli == INGEST else [sys.executable, str(REPO / RENDER)]
    reader, writer = os.pipe()
    os.close(reader)  # the reader has gone before the command prints
    try:
        result = subprocess.run(command + args + ["--config", "image_cache.toml"] * (cli == RENDER),
                                cwd=rendered, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=60,
                                env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
    finally:
        os.close(writer)
    assert result.stderr == ""
    assert result.returncode == 128 + signal.SIGPIPE
