"""SIGKILL an ingest at named moments: each file is afterwards fully in or not at all, the registry
claims exactly the files whose candles are there, and re-ingest ends with the db an uninterrupted
ingest gives.

The run re-issues a day the db already holds (every candle revised) and adds two new days, one
transaction per file. Kills land inside a transaction (mid-upsert, before the registry row, before
COMMIT), between files, and before or racing the final WAL checkpoint.
"""

from __future__ import annotations

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive
from image_cache.core.grid import DAY_MS, utc_ms
from image_cache.ingest.binance_vision import ingest_paths
from image_cache.ingest.schema import read_candles

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)

REPO = Path(__file__).resolve().parents[1]
ROWS_PER_DAY = 1440

# Runs `python -m ingest ARGS` with one function of the writer path wrapped so that the process
# SIGKILLs itself at that function's N-th call. No fault hooks live in the production code.
CRASHER = r"""
import os, signal, sys, threading
import image_cache.ingest.binance_vision as binance_vision, image_cache.ingest.registry as registry
import image_cache.ingest.schema as schema  # the writer session's module
point, nth = sys.argv[1], int(sys.argv[2])
calls = [0]

def due():
    calls[0] += 1
    return calls[0] == nth

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def after(module, name):
    real = getattr(module, name)
    def wrapper(*args, **kwargs):
        result = real(*args, **kwargs)
        if due():
            die()
        return result
    setattr(module, name, wrapper)

if point == "mid-upsert":  # inside the file's transaction, some INSERT statements executed
    real_upsert = registry.upsert_candles
    def upsert_candles(conn, sid, candles):
        if due():
            before = conn.total_changes
            def tick():
                # Several multi-row INSERT statements done, more to come.
                if conn.total_changes - before >= 300:
                    sys.stderr.write(f"killed after {conn.total_changes - before} row writes\n")
                    sys.stderr.flush()
                    die()
                return 0
            conn.set_progress_handler(tick, 100)
        return real_upsert(conn, sid, candles)
    registry.upsert_candles = upsert_candles
elif point == "before-record":  # every candle upserted, the registry row not written
    after(registry, "upsert_candles")
elif point == "before-commit":  # candles and registry row written, COMMIT not sent
    after(registry, "record")
elif point == "after-commit":  # the file committed, the next one not begun
    after(binance_vision, "write_file")
elif point == "before-checkpoint":  # every file committed, the WAL not yet checkpointed
    def checkpoint(conn):
        die()
    schema.checkpoint = checkpoint
elif point == "racing-checkpoint":  # a second thread kills while the checkpoint copies the WAL
    real_checkpoint = schema.checkpoint
    def checkpoint(conn):
        threading.Thread(target=die).start()
        real_checkpoint(conn)
        threading.Event().wait(10)
    schema.checkpoint = checkpoint
sys.argv = ["python -m ingest"] + sys.argv[3:]
from image_cache.cli.ingest import main
sys.exit(main())
"""

DAYS = ("2024-01-15", "2024-01-16", "2024-01-17")


def day_csv(day: str, price: float = 100.0) -> bytes:
    return kline_csv(kline_rows("1m", day, ROWS_PER_DAY, price=price))


def name(day: str) -> str:
    return f"BTCUSDT-1m-{day}.zip"


def write_run(folder: Path) -> list[Path]:
    """The crashing run's input: day 1 re-issued with every price changed, then two new days."""
    return [write_archive(folder, name(DAYS[0]), day_csv(DAYS[0], price=250.0)),
            write_archive(folder, name(DAYS[1]), day_csv(DAYS[1])),
            write_archive(folder, name(DAYS[2]), day_csv(DAYS[2]))]


def prepare(folder: Path) -> tuple[Path, Path]:
    """A db holding the first issue of day 1, and the run folder."""
    db = folder / "market.sqlite"
    assert ingest_paths(str(db), [str(write_archive(folder / "first", name(DAYS[0]), day_csv(DAYS[0])))]).ok
    write_run(folder / "run")
    return db, folder / "run"


def cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})


def dump(db: Path) -> list[tuple]:
    """Every candle with its series' names, and the series that exist: the db content ingest owns."""
    with sqlite3.connect(db) as conn:
        candles = conn.execute("""SELECT s.symbol, i.code, c.* FROM candles c JOIN series se ON se.id = c.series_id
                                  JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                                  ORDER BY s.symbol, i.code, c.open_time""").fetchall()
        names = conn.execute("SELECT symbol, base_asset, quote_asset FROM symbols ORDER BY symbol").fetchall()
    return candles + names


def day_candles(db: Path, day: str) -> np.ndarray:
    with sqlite3.connect(db) as conn:
        return read_candles(conn, 1, utc_ms(day), utc_ms(day) + DAY_MS)


def ok_rows(db: Path, path: Path) -> int:
    """How many registry rows claim these exact bytes were ingested."""
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM ingested_files WHERE sha256 = ? AND status = 'ok'",
                            (digest,)).fetchone()[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    """An uninterrupted run: the final content, and each day as the first issue and the re-issue store it."""
    folder = tmp_path_factory.mktemp("reference")
    db, run = prepare(folder)
    first_issue = day_candles(db, DAYS[0])
    assert ingest_paths(str(db), [str(run)]).ok
    return {"dump": dump(db), "first_issue": first_issue, "reissue": day_candles(db, DAYS[0])}


# (where, at which call, how many of the run's three files must be in afterwards)
KILLS = [("mid-upsert", 1, 0), ("mid-upsert", 3, 2), ("before-record", 2, 1), ("before-commit", 1, 0),
         ("before-commit", 3, 2), ("after-commit", 1, 1), ("after-commit", 3, 3), ("before-checkpoint", 1, 3),
         ("racing-checkpoint", 1, 3)]


@pytest.mark.parametrize("point, nth, committed", KILLS)
def test_a_killed_ingest_is_all_or_nothing_per_file(tmp_path: Path, reference: dict, point: str, nth: int,
                                                    committed: int) -> None:
    db, run = prepare(tmp_path)
    files = sorted(run.glob("*.zip"))
    crashed = cli(tmp_path, "-c", CRASHER, point, str(nth), "binance-vision", "--market-db", str(db), str(run))
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    if point == "mid-upsert":  # the kill came inside the upsert, neither before nor after it
        writes = int(crashed.stderr.split("killed after ")[1].split()[0])
        assert 0 < writes < ROWS_PER_DAY, crashed.stderr

    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The re-issued day holds one issue entirely; the new days hold all their candles or none.
    day1 = day_candles(db, DAYS[0])
    assert np.array_equal(day1, reference["reissue" if committed >= 1 else "first_issue"])
    assert [len(day_candles(db, day)) for day in DAYS[1:]] == \
        [ROWS_PER_DAY if committed > i else 0 for i in (1, 2)]
    # The registry claims a file exactly when its candles are in.
    assert [ok_rows(db, f) for f in files] == [1 if committed > i else 0 for i in range(3)]

    again = cli(tmp_path, "-m", "ingest", "binance-vision", "--market-db", str(db), "--lock-wait", "5", str(run))
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith(f"files: {3 - committed} ok, {committed} skipped, 0 rejected, 0 unverified")
    assert dump(db) == reference["dump"]
    assert [ok_rows(db, f) for f in files] == [1, 1, 1]
    assert os.path.getsize(str(db) + "-wal") == 0
