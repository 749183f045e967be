"""Windows over a source gap: no image and an `undrawable`/`gap` row (skip), or drawn with reason gap (render)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from conftest import index_rows, render_cli, run_cli

HOUR = 3600_000


def _delete_candle(market: Path, open_time: int) -> None:
    with sqlite3.connect(market) as conn:
        conn.execute("""DELETE FROM candles WHERE open_time = ? AND series_id = (SELECT se.id FROM series se
                        JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                        WHERE s.symbol = 'BTCUSDT' AND i.code = '1h')""", (open_time,))


def _hole(workdir: Path) -> int:
    hole = 1719446400000 + 5 * HOUR  # 2024-06-27T05:00Z
    _delete_candle(workdir / "market.sqlite", hole)
    return hole


def test_skip_records_undrawable_gap_rows(workdir: Path):
    hole = _hole(workdir)
    assert render_cli(workdir, "--symbols", "BTCUSDT", "--intervals", "1h").returncode == 0
    gap_rows = index_rows(workdir / "image_cache.sqlite", "WHERE status = 'undrawable'")
    # Every window whose 30 candles span the hole: the 29 following windows plus those the hole
    # interrupts; the hole itself ends no window.
    assert {r[2] for r in gap_rows} == {hole + k * HOUR for k in range(1, 30)}
    assert {r[7] for r in gap_rows} == {"gap"}
    assert not any((workdir / "image-cache" / r[3]).exists() for r in gap_rows)
    verify = run_cli(workdir, "verify", "--config", "image_cache.toml", "--json")
    assert verify.returncode == 0, verify.stdout
    assert json.loads(verify.stdout)["no_image"]["gap"] == 29
    assert json.loads(render_cli(workdir, "--symbols", "BTCUSDT", "--intervals", "1h",
                                 "--json").stdout)["recorded"] == 0


def test_render_policy_draws_gap_windows(workdir: Path):
    hole = _hole(workdir)
    assert render_cli(workdir, "--symbols", "BTCUSDT", "--intervals", "1h", "--gap-policy", "render").returncode == 0
    drawn = index_rows(workdir / "image_cache.sqlite", "WHERE reason = 'gap'")
    assert {r[2] for r in drawn} == {hole + k * HOUR for k in range(1, 30)}
    assert {r[6] for r in drawn} == {"ok"}
    assert all((workdir / "image-cache" / r[3]).exists() for r in drawn)
