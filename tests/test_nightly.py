"""The nightly recipe end to end: a local archive folder, the fake REST API on 127.0.0.1, render, verify."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime, timedelta

from binance_fixtures import kline_csv, kline_rows, write_archive
from conftest import run_cli
from fake_binance import FakeBinance
from image_cache.core.db import writer_lock
from image_cache.core.grid import utc_ms

CONFIG = """
[image_cache]
market_db = "market.sqlite"
index_db = "image_cache.sqlite"
image_root = "image-cache"
symbols = ["BTCUSDT"]
intervals = ["1h"]
size = 128
window = 30
start = "{start}"
jobs = 1
"""


def test_nightly_updates_renders_and_verifies_then_has_nothing_to_do(tmp_path):
    today = datetime.now(UTC).date()
    first = today - timedelta(days=3)
    # The archive of the first day is published; the later days come from the API.
    vision = tmp_path / "vision"
    write_archive(vision / "data" / "spot" / "daily" / "klines" / "BTCUSDT" / "1h",
                  f"BTCUSDT-1h-{first.isoformat()}.zip", kline_csv(kline_rows("1h", first.isoformat(), 24)))
    fake = FakeBinance()
    try:
        now = time.time() * 1000
        fake.add_series("spot", "BTCUSDT", "1h", utc_ms(first.isoformat()), int((now - utc_ms(first.isoformat()))
                                                                                 // 3_600_000) + 1)
        (tmp_path / "image_cache.toml").write_text(CONFIG.format(start=(first + timedelta(days=2)).isoformat()))
        args = ["--config", "image_cache.toml", "--api-url", fake.url, "--base-url", vision.as_uri() + "/",
                "--market-start", first.isoformat(), "--json"]
        result = run_cli(tmp_path, *args, module="nightly")
        assert result.returncode == 0, result.stdout + result.stderr
        summary = json.loads(result.stdout)
        assert summary["ok"] and summary["update"]["ok"] and summary["render"]["ok"] and summary["verify"]["ok"]
        update = summary["update"]["result"]
        assert update["archives"][0]["ingest"]["rows_inserted"] == 24
        with sqlite3.connect(tmp_path / "market.sqlite") as conn:
            times = [r[0] for r in conn.execute("SELECT open_time FROM candles ORDER BY open_time")]
        # Every closed hour since the first day, and no open one.
        last_closed = int(time.time() * 1000) // 3_600_000 * 3_600_000 - 3_600_000
        assert times[0] == utc_ms(first.isoformat()) and times == list(range(times[0], times[-1] + 1, 3_600_000))
        assert times[-1] in (last_closed, last_closed - 3_600_000)  # the hour may turn during the test
        assert summary["render"]["result"]["drawn"] > 0
        assert len(list((tmp_path / "image-cache").rglob("*.png"))) == summary["render"]["result"]["drawn"]

        text = run_cli(tmp_path, *args[:-1], module="nightly")
        assert text.returncode == 0, text.stdout + text.stderr
        assert text.stdout.strip().splitlines()[-1].startswith("nightly: ok")

        with writer_lock(str(tmp_path / "market.sqlite"), "a test holding the lock", 0):
            locked = run_cli(tmp_path, *args, "--lock-wait", "0", module="nightly")
        assert locked.returncode == 75 and "locked" in locked.stderr and "Traceback" not in locked.stderr
    finally:
        fake.close()


def test_nightly_exits_1_and_names_the_step_when_the_api_is_down(tmp_path):
    (tmp_path / "image_cache.toml").write_text(CONFIG.format(start="2024-01-02"))
    fake = FakeBinance()
    fake.close()  # nothing listens there any more
    result = run_cli(tmp_path, "--config", "image_cache.toml", "--api-url", fake.url, "--base-url",
                     (tmp_path / "none").as_uri() + "/", "--market-start", "2024-01-01", module="nightly")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "== update: NOT OK" in result.stdout
    assert result.stderr.strip().splitlines()[-1].startswith("Error: nightly run not well: update")
