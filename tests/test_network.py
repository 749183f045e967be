"""Ingest and nightly where they meet the network: signals stop them at once, a dead host fails fast,
and a night's log stays a summary.

Real subprocesses against the fake Binance on 127.0.0.1: slowed per request (a slow link), or a port
nobody listens on (the network down).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive
from conftest import REPO, run_cli
from fake_binance import FakeBinance
from image_cache.core.db import lock_is_held, lock_path

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)

NIGHTLY_CONFIG = """
[image_cache]
market_db = "market.sqlite"
index_db = "image_cache.sqlite"
image_root = "image-cache"
symbols = ["BTCUSDT", "ETHUSDT"]
intervals = ["1d"]
size = 128
window = 30
start = "2024-01-02"
jobs = 1
"""


def commands(command: str, base_url: str, api_url: str) -> list[str]:
    """The command line of `download`, `update` or `nightly`: BTCUSDT and ETHUSDT 1d since 2024-01-02,
    dozens of archives, none of them published (`ccxt`: BTC/USDT through CCXT)."""
    common = ["--base-url", base_url + "/", "--mirror", "mirror"]
    if command == "nightly":
        return [str(REPO / "nightly.py"), "--config", "image_cache.toml", "--api-url", api_url,
                "--market-start", "2024-01-02", *common]
    market = ["--market-db", "market.sqlite", "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "1d", "--start",
              "2024-01-02", "--jobs", "2", *common]
    if command == "download":
        return ["-m", "ingest", "download", *market, "--end", "2024-02-01"]
    if command == "ccxt":  # CCXT's requests, its rate limiter's waits
        return ["-m", "ingest", "ccxt", "--market-db", "market.sqlite", "--exchange", "binance", "--symbols",
                "BTC/USDT", "--intervals", "1d", "--start", "2024-01-02", "--api-url", api_url]
    return ["-m", "ingest", "update", *market, "--api-url", api_url]


def start(cwd: Path, argv: list[str]) -> subprocess.Popen:
    (cwd / "image_cache.toml").write_text(NIGHTLY_CONFIG)
    # As from a terminal: Ctrl-C not ignored even when the suite runs in the background.
    return subprocess.Popen([sys.executable, *argv], cwd=cwd, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


# 0.5 s a request, two requests per archive: a draining run takes 15 s and more. 10 s: a server gone
# silent, whose requests in flight the run must leave behind.
@pytest.mark.parametrize("command, signum, delay", [
    ("download", signal.SIGTERM, 0.5), ("download", signal.SIGHUP, 10.0), ("update", signal.SIGINT, 0.5),
    ("nightly", signal.SIGTERM, 0.5), ("ccxt", signal.SIGTERM, 2.0)])
def test_a_signal_stops_a_run_on_a_slow_link_within_5_s(tmp_path, command, signum, delay):
    fake = FakeBinance(tmp_path / "vision")
    fake.delay = delay
    try:
        proc = start(tmp_path, commands(command, fake.url, fake.url))
        deadline = time.monotonic() + 30
        while not fake.requests and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # downloads in flight
        proc.send_signal(signum)
        sent = time.monotonic()
        try:
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        took = time.monotonic() - sent
    finally:
        fake.close()
    assert took < 5, f"{command} took {took:.1f} s to obey {signum!r}"
    assert proc.returncode == 128 + signum, err
    assert len(err.splitlines()) == 1 and err.startswith("Error: "), err
    assert not lock_is_held(lock_path(str(tmp_path / "market.sqlite")))
    # Nothing half-downloaded is left to be taken for an archive.
    assert not [p for p in (tmp_path / "mirror").rglob("*") if p.is_file()]


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize("command", ["download", "update", "nightly"])
def test_a_host_down_is_given_up_after_a_few_tries_and_no_file_is_called_rejected(tmp_path, command):
    archives, api = closed_port(), closed_port()
    began = time.monotonic()
    proc = start(tmp_path, commands(command, f"http://{archives}", f"http://{api}"))
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - began
    assert took < 60, f"{command} took {took:.1f} s with the network down"
    assert proc.returncode == 1 and "Traceback" not in err, err
    for host in (archives, api) if command != "download" else (archives,):
        said = [line for line in err.splitlines() if host in line]
        assert said == [f"network: {host} unreachable (connection refused) after 3 tries; "
                        "stopping downloads from it"], err
    if command != "download":
        status = run_cli(tmp_path, "status", "--failures", "--json", module="ingest")
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["failures"] == []
        with sqlite3.connect(tmp_path / "market.sqlite") as conn:
            assert conn.execute("SELECT count(*) FROM ingested_files").fetchone() == (0,)


def test_a_run_with_many_missing_archives_logs_one_line_per_series(tmp_path):
    fake = FakeBinance(tmp_path / "vision")
    for symbol in ("BTCUSDT", "ETHUSDT"):
        write_archive(tmp_path / "vision/data/spot/daily/klines" / symbol / "1d", f"{symbol}-1d-2024-01-02.zip",
                      kline_csv(kline_rows("1d", "2024-01-02", 1)))
    try:
        argv = commands("download", fake.url, fake.url)[2:]
        quiet = run_cli(tmp_path, *argv, module="ingest")
        verbose = run_cli(tmp_path, *argv, "--verbose", module="ingest")
    finally:
        fake.close()
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    lines = quiet.stdout.splitlines()
    assert lines[0].startswith("download: 60 archives: 2 downloaded, 0 cached, 0 not published yet, 58 missing")
    assert lines[1:3] == ["  BTCUSDT 1d: 30 archives: 1 downloaded, 29 missing",
                          "  ETHUSDT 1d: 30 archives: 1 downloaded, 29 missing"]
    assert len(lines) == 4 and lines[3].startswith("files: 2 ok"), quiet.stdout
    assert verbose.returncode == 0
    assert "    missing: BTCUSDT-1d-2024-01-31.zip (404 not found)" in verbose.stdout.splitlines()
    assert sum(".zip" in line for line in verbose.stdout.splitlines()) == 58
