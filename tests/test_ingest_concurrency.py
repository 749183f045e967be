"""Ingest running alongside a render, and two ingests at once.

A render reads the market in one snapshot: while an ingest re-issues every candle of the series it
draws, each image and index row matches the market either entirely before or entirely after the
file, never a mix, and the images equal an undisturbed render of that state. A second ingest on the
same db waits for the first (`--lock-wait`) or exits 75 naming it; nothing is lost either way.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive
from conftest import REPO, index_rows, tree_digest
from image_cache.cache.market import list_series, open_market, read_series
from image_cache.cache.windows import fingerprint, window_rows
from image_cache.ingest.binance_vision import ingest_paths
from image_cache.ingest.schema import read_candles

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)

WINDOW = 30
SERIES = ("BTCUSDT", "1h")
RENDER = ("render", "--market-db", "market.sqlite", "--index-db", "image_cache.sqlite", "--image-root",
          "image-cache", "--symbols", SERIES[0], "--intervals", SERIES[1], "--size", "128", "--window", str(WINDOW),
          "--start", "2024-06-25", "--jobs", "1")
REISSUE = "BTCUSDT-1h-2024-06.zip"

# The real renderer, held still once its read snapshot is open (the series list read, the candles
# not yet), until the test says go: an ingest can then commit in the middle of the render's read.
GATED_RENDER = r"""
import os, sys, time
import image_cache.cache.market as market
real_read_series = market.read_series

def read_series(*args, **kwargs):
    open("reading", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists("go") and time.monotonic() < deadline:
        time.sleep(0.02)
    return real_read_series(*args, **kwargs)

market.read_series = read_series
sys.argv = ["image_cache.py"] + sys.argv[1:]
from image_cache.cli.cache import main
sys.exit(main())
"""

# The real ingest, paused while it holds the writer lock, before it writes its first file.
HOLDING_INGEST = r"""
import os, sys, time
import image_cache.ingest.binance_vision as binance_vision
real_write_file = binance_vision.write_file

def write_file(*args, **kwargs):
    open("holding", "w").close()
    deadline = time.monotonic() + 60
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.02)
    return real_write_file(*args, **kwargs)

binance_vision.write_file = write_file
sys.argv = ["python -m ingest"] + sys.argv[1:]
from image_cache.cli.ingest import main
sys.exit(main())
"""

ENV = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}


def popen(cwd: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def finish(process: subprocess.Popen) -> tuple[int, str, str]:
    out, err = process.communicate(timeout=120)
    return process.returncode, out, err


def wait_for(condition, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def reissue_zip(market: Path, folder: Path) -> Path:
    """BTCUSDT 1h of June re-issued with every price 1% higher: every window of the series changes."""
    with sqlite3.connect(market) as conn:
        candles = read_candles(conn, list_series(conn)[SERIES])
    rows = [[str(c["open_time"]), *(repr(float(c[k]) * 1.01) for k in ("open", "high", "low", "close")),
             repr(float(c["volume"])), str(c["open_time"] + 3_600_000 - 1), repr(float(c["quote_asset_volume"])),
             str(c["trades"]), repr(float(c["taker_buy_base_volume"])), repr(float(c["taker_buy_quote_volume"])), "0"]
            for c in candles]
    return write_archive(folder, REISSUE, kline_csv(rows))


def fingerprints(market: Path) -> dict[int, str]:
    """Input fingerprint of every window of the series, by its end open time, recomputed from `market`."""
    conn = open_market(str(market))
    try:
        series = read_series(conn, *SERIES, list_series(conn)[SERIES])
    finally:
        conn.close()
    return {int(series.times[last]): fingerprint(series, window_rows(last, WINDOW, 0))
            for last in range(WINDOW - 1, len(series.times))}


def render_state(folder: Path) -> dict:
    """What one render of the folder's market drew: image digests and each row's input fingerprint."""
    return {"images": tree_digest(folder / "image-cache"),
            "fingerprints": {r[2]: r[8] for r in index_rows(folder / "image_cache.sqlite")}}


@pytest.fixture(scope="module")
def spot_market(sample_market: Path, tmp_path_factory) -> Path:
    """The sample market standing in for one fetched from Binance spot, so that a Binance archive re-issues it
    (sample series are of the venue `sample`, which takes no real rows)."""
    path = tmp_path_factory.mktemp("spot") / "market.sqlite"
    shutil.copy(sample_market, path)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE series_venues SET exchange = 'binance', market = 'spot'")
    conn.close()  # the last connection checkpoints the WAL: copies of the file then hold the change
    return path


@pytest.fixture(scope="module")
def states(spot_market: Path, tmp_path_factory) -> dict:
    """The re-issue zip, and the market before and after it: fingerprints and an undisturbed render of each."""
    zips = tmp_path_factory.mktemp("zips")
    zip_path = reissue_zip(spot_market, zips)
    out: dict = {"zip": zip_path}
    for state in ("before", "after"):
        folder = tmp_path_factory.mktemp(state)
        shutil.copy(spot_market, folder / "market.sqlite")
        if state == "after":
            assert ingest_paths(str(folder / "market.sqlite"), [str(zip_path)]).ok
        assert subprocess.run([sys.executable, str(REPO / "image_cache.py"), *RENDER], cwd=folder, env=ENV,
                              capture_output=True).returncode == 0
        out[state] = {"market": fingerprints(folder / "market.sqlite"), **render_state(folder)}
    drawn = out["before"]["fingerprints"]
    assert len(drawn) > 100 and all(out["before"]["market"][e] != out["after"]["market"][e] for e in drawn)
    return out


def seen_state(folder: Path, states: dict) -> str:
    """The one market state every row drawn in `folder` matches; fails on a mix or a match with neither."""
    drawn = render_state(folder)
    matches = {end: [s for s in ("before", "after") if states[s]["market"][end] == fp]
               for end, fp in drawn["fingerprints"].items()}
    assert all(len(m) == 1 for m in matches.values()), "a window matching neither state"
    seen = {m[0] for m in matches.values()}
    assert len(seen) == 1, f"a mix of states: {sorted(seen)}"
    state = seen.pop()
    assert drawn == {"images": states[state]["images"], "fingerprints": states[state]["fingerprints"]}
    return state


def workdir(tmp_path: Path, spot_market: Path) -> Path:
    shutil.copy(spot_market, tmp_path / "market.sqlite")
    return tmp_path


def test_ingest_committing_during_the_render_read_is_not_seen(tmp_path: Path, spot_market: Path, states: dict):
    folder = workdir(tmp_path, spot_market)
    render = popen(folder, "-c", GATED_RENDER, *RENDER)
    wait_for(lambda: (folder / "reading").exists() or render.poll() is not None, "the render to open its snapshot")
    assert render.poll() is None, render.communicate()
    ingest = popen(folder, "-m", "ingest", "binance-vision", "--market-db", "market.sqlite", str(states["zip"]))

    def committed() -> bool:
        with sqlite3.connect(f"file:{folder / 'market.sqlite'}?mode=ro", uri=True) as conn:
            return conn.execute("SELECT COUNT(*) FROM ingested_files WHERE file_name = ? AND status = 'ok'",
                                (REISSUE,)).fetchone()[0] == 1

    wait_for(committed, "the ingest to commit")
    (folder / "go").touch()
    assert finish(render)[0] == 0
    assert finish(ingest)[0] == 0
    assert seen_state(folder, states) == "before"  # the render's snapshot predates the commit
    # The next render finds every window stale and ends on the new state.
    rerun = subprocess.run([sys.executable, str(REPO / "image_cache.py"), *RENDER], cwd=folder, env=ENV,
                           capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert seen_state(folder, states) == "after"


@pytest.mark.parametrize("delay", [0.0, 0.5, 1.0])
def test_render_and_ingest_running_freely_side_by_side(tmp_path: Path, spot_market: Path, states: dict,
                                                      delay: float):
    """The render starts `delay` s after the ingest: here it mostly reads before the commit at 0 s and
    after it at 1 s. Either state is right; a mix, or images other than that state's, is not."""
    folder = workdir(tmp_path, spot_market)
    ingest = popen(folder, "-m", "ingest", "binance-vision", "--market-db", "market.sqlite", str(states["zip"]))
    time.sleep(delay)
    render = popen(folder, str(REPO / "image_cache.py"), *RENDER)
    assert finish(render)[0] == 0 and finish(ingest)[0] == 0
    seen_state(folder, states)


# ---------------------------------------------------------------------------------------- two ingests

def two_days(folder: Path) -> tuple[Path, Path]:
    first = write_archive(folder / "a", "BTCUSDT-1h-2024-01-15.zip", kline_csv(kline_rows("1h", "2024-01-15", 24)))
    second = write_archive(folder / "b", "ETHUSDT-1h-2024-01-15.zip",
                           kline_csv(kline_rows("1h", "2024-01-15", 24, price=50.0)))
    return first, second


def assert_both_in(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        per_symbol = conn.execute("""SELECT s.symbol, COUNT(*) FROM candles c JOIN series se ON se.id = c.series_id
                                     JOIN symbols s ON s.id = se.symbol_id GROUP BY s.symbol ORDER BY s.symbol""")
        assert per_symbol.fetchall() == [("BTCUSDT", 24), ("ETHUSDT", 24)]
        assert conn.execute("SELECT file_name, status FROM ingested_files WHERE status = 'ok' ORDER BY file_name") \
            .fetchall() == [("BTCUSDT-1h-2024-01-15.zip", "ok"), ("ETHUSDT-1h-2024-01-15.zip", "ok")]


def hold(folder: Path, db: Path, path: Path) -> subprocess.Popen:
    holder = popen(folder, "-c", HOLDING_INGEST, "binance-vision", "--market-db", str(db), str(path))
    wait_for(lambda: (folder / "holding").exists() or holder.poll() is not None, "the first ingest to hold the lock")
    assert holder.poll() is None, holder.communicate()
    return holder


def test_a_second_ingest_without_wait_exits_75_naming_the_holder(tmp_path: Path):
    first, second = two_days(tmp_path)
    db = tmp_path / "market.sqlite"
    holder = hold(tmp_path, db, first)
    try:
        refused = subprocess.run([sys.executable, "-m", "ingest", "binance-vision", "--market-db", str(db),
                                  "--lock-wait", "0", str(second)],
                                 cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    finally:
        (tmp_path / "release").touch()
    assert refused.returncode == 75 and refused.stdout == ""
    assert refused.stderr == f"Error: {db}.lock is locked by another run (pid {holder.pid}: ingest binance-vision)\n"
    assert finish(holder)[0] == 0
    again = subprocess.run([sys.executable, "-m", "ingest", "binance-vision", "--market-db", str(db), str(second)],
                           cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert_both_in(db)


def test_a_second_ingest_with_wait_runs_after_the_first(tmp_path: Path):
    first, second = two_days(tmp_path)
    db = tmp_path / "market.sqlite"
    holder = hold(tmp_path, db, first)
    waiting = popen(tmp_path, "-m", "ingest", "binance-vision", "--market-db", str(db), "--lock-wait", "60",
                    str(second))
    try:
        time.sleep(1.5)
        assert waiting.poll() is None, "the second ingest did not wait for the lock"
    finally:
        (tmp_path / "release").touch()
    assert finish(holder)[0] == 0
    code, out, err = finish(waiting)
    assert code == 0, err
    assert out.startswith("files: 1 ok, 0 skipped, 0 rejected, 0 unverified; rows: 24 inserted")
    assert_both_in(db)


def test_a_killed_holder_releases_the_lock(tmp_path: Path):
    first, second = two_days(tmp_path)
    db = tmp_path / "market.sqlite"
    holder = hold(tmp_path, db, first)
    holder.send_signal(signal.SIGKILL)
    assert holder.wait() == -signal.SIGKILL
    for path in (first, second):
        run = subprocess.run([sys.executable, "-m", "ingest", "binance-vision", "--market-db", str(db),
                              "--lock-wait", "0", str(path)],
                             cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr
    assert_both_in(db)
