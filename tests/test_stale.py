"""A changed candle makes exactly the windows that contain it stale; render re-draws only those."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from conftest import index_rows, render_cli, run_cli, tree_digest

HOUR = 3600_000


def _change_candle(market: Path, symbol: str, interval: str, open_time: int) -> None:
    with sqlite3.connect(market) as conn:
        changed = conn.execute(
            """UPDATE candles SET close = (high + low) / 2, volume = volume + 1
               WHERE open_time = ? AND series_id = (SELECT se.id FROM series se
                 JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                 WHERE s.symbol = ? AND i.code = ?)""", (open_time, symbol, interval)).rowcount
    assert changed == 1


def test_changed_candle_makes_exactly_its_windows_stale(rendered: Path):
    rows = {r[2]: r for r in index_rows(rendered / "image_cache.sqlite",
                                        "WHERE symbol = 'BTCUSDT' AND interval = '1h' AND status = 'ok'")}
    ends = sorted(rows)
    target = ends[len(ends) // 2]
    # The windows containing the candle end at it or within the next 29 hours (window of 30).
    expected = {e for e in ends if target <= e < target + 30 * HOUR}
    assert len(expected) == 30

    _change_candle(rendered / "market.sqlite", "BTCUSDT", "1h", target)
    verify = run_cli(rendered, "verify", "--config", "image_cache.toml", "--json")
    assert verify.returncode == 1
    found = json.loads(verify.stdout)
    assert found["counts"]["stale"] == 30
    stale = index_rows(rendered / "image_cache.sqlite", "WHERE status = 'stale'")
    assert {r[2] for r in stale} == expected and {r[0] for r in stale} == {"BTCUSDT"}

    before = tree_digest(rendered / "image-cache")
    plan = json.loads(render_cli(rendered, "--dry-run", "--json").stdout)["plan"]
    assert plan["BTCUSDT 1h"]["stale"] == 30 and plan["BTCUSDT 4h"]["stale"] == 0
    result = json.loads(render_cli(rendered, "--json").stdout)
    assert result["drawn"] == 30
    after = tree_digest(rendered / "image-cache")
    changed = {path for path in after if after[path] != before.get(path)}
    assert changed == {rows[e][3] for e in expected}
    assert run_cli(rendered, "verify", "--config", "image_cache.toml", "--deep").returncode == 0


def test_change_without_verify_is_found_by_render(rendered: Path):
    ends = [r[2] for r in index_rows(rendered / "image_cache.sqlite",
                                     "WHERE symbol = 'ETHUSDT' AND interval = '4h' AND status = 'ok'")]
    _change_candle(rendered / "market.sqlite", "ETHUSDT", "4h", ends[-1])
    result = json.loads(render_cli(rendered, "--json").stdout)
    assert result["drawn"] == 1
    assert result["marked_stale"] == 0  # it re-drew the window itself


def test_only_rows_a_render_leaves_are_called_outside_its_range(rendered: Path):
    """A full render used to report its own re-draws as "outside this run's range"."""
    ends = [r[2] for r in index_rows(rendered / "image_cache.sqlite",
                                     "WHERE symbol = 'BTCUSDT' AND interval = '1h' AND status = 'ok'")]
    _change_candle(rendered / "market.sqlite", "BTCUSDT", "1h", ends[-40])
    full = render_cli(rendered, "--symbols", "BTCUSDT", "--intervals", "1h")
    assert full.returncode == 0 and full.stdout.startswith("drawn 30,")
    assert "outside this run's range" not in full.stdout

    _change_candle(rendered / "market.sqlite", "BTCUSDT", "1h", ends[-40])
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ends[-20] / 1000))  # cuts the 30 windows in two
    part = json.loads(render_cli(rendered, "--symbols", "BTCUSDT", "--intervals", "1h", "--end", end, "--json").stdout)
    assert (part["drawn"], part["marked_stale"]) == (20, 10)
    assert len(index_rows(rendered / "image_cache.sqlite", "WHERE status = 'stale'")) == 10
