"""A market.sqlite written with the upstream pipeline's DDL, in WAL mode, renders."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from conftest import render_cli, tree_digest

UPSTREAM_DDL = """
PRAGMA journal_mode=WAL;
CREATE TABLE symbols (id INTEGER PRIMARY KEY AUTOINCREMENT, symbol TEXT NOT NULL UNIQUE,
                      base_asset TEXT NOT NULL, quote_asset TEXT NOT NULL);
CREATE TABLE intervals (id INTEGER PRIMARY KEY AUTOINCREMENT, code TEXT NOT NULL UNIQUE, ms INTEGER NOT NULL);
CREATE TABLE series (id INTEGER PRIMARY KEY AUTOINCREMENT, symbol_id INTEGER NOT NULL, interval_id INTEGER NOT NULL,
                     UNIQUE(symbol_id, interval_id));
CREATE TABLE candles (series_id INTEGER NOT NULL, open_time INTEGER NOT NULL, open REAL NOT NULL,
    high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL, volume REAL NOT NULL,
    quote_asset_volume REAL NOT NULL, trades INTEGER NOT NULL, taker_buy_base_volume REAL NOT NULL,
    taker_buy_quote_volume REAL NOT NULL, PRIMARY KEY(series_id, open_time));
"""


def test_upstream_wal_market_renders_like_ours(workdir: Path, tmp_path_factory):
    upstream_dir = tmp_path_factory.mktemp("upstream")
    (upstream_dir / "image_cache.toml").write_text((workdir / "image_cache.toml").read_text())
    upstream = sqlite3.connect(upstream_dir / "market.sqlite")
    upstream.executescript(UPSTREAM_DDL)
    ours = sqlite3.connect(workdir / "market.sqlite")
    upstream.executemany("INSERT INTO symbols VALUES (?, ?, ?, ?)", ours.execute("SELECT * FROM symbols"))
    upstream.executemany("INSERT INTO intervals VALUES (?, ?, ?)", ours.execute("SELECT * FROM intervals"))
    upstream.executemany("INSERT INTO series VALUES (?, ?, ?)", ours.execute("SELECT * FROM series"))
    upstream.executemany("INSERT INTO candles VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         ours.execute("SELECT * FROM candles"))
    upstream.commit()
    ours.close()
    # The upstream writer stays open (WAL not checkpointed) while we render.
    assert Path(str(upstream_dir / "market.sqlite") + "-wal").stat().st_size > 0
    try:
        for folder in (workdir, upstream_dir):
            result = render_cli(folder, "--intervals", "4h")
            assert result.returncode == 0, result.stderr
    finally:
        upstream.close()
    assert tree_digest(upstream_dir / "image-cache") == tree_digest(workdir / "image-cache")
