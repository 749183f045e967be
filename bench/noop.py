"""The no-op nightly render at scale: `python -m bench.noop --rows N`.

`make bench` runs it at a million indexed images; issue 13's ten-million figure comes from
`python -m bench.noop --rows 10000000` (about 15 minutes and 5 GB of disk on 2 cores), printed, not
written to bench/RESULTS.md. The market is the sample (1-minute candles of two symbols, plus their
resampled intervals); the index gets one row per 1-minute window (ok, with its real input fingerprint,
or undrawable for a gap), written directly (drawing ten million images is not what is measured),
together with the month-digest memo a real render leaves.
Then the same render runs three times: the first reads every candle and row and stamps what it finds
settled (cache/stamps.py), the next two are the steady nightly state.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bench.report import PY, REPO, WORK, Figure, fresh, run_measured

END = "2024-07-01"


def measure(rows_target: int, folder: Path) -> tuple[Figure, Figure, int]:
    """(first no-op, steady no-op, indexed images) for an index of about `rows_target` rows."""
    from image_cache.cache import index, market, runner
    from image_cache.cache.windows import fingerprint, window_rows
    from image_cache.settings import load

    db = folder / "noop-market.sqlite"
    days = rows_target // (2 * 1440) + 1
    run_measured([PY, "-m", "ingest", "sample", "--market-db", str(db), "--symbols", "BTCUSDT,ETHUSDT", "--days",
                  str(days), "--end", END])
    settings = load(None, {"market_db_path": str(db), "image_index_db": str(folder / "index.sqlite"),
                           "image_root_dir": str(folder / "img"), "pairs": "BTCUSDT,ETHUSDT", "intervals": "1m",
                           "start": "2000-01-01", "img_size_px": "224", "window_len": "60"})
    spec = settings.make_spec(settings)
    conn = index.connect(settings.image_index_db)
    mconn = market.open_market(str(db))
    plans = runner.plan(settings, market.Filters(), mconn, conn, spec, lambda _: None)
    preset = index.preset_of(spec)
    total = 0
    conn.execute("BEGIN")
    for p in plans:
        series = p.rec.series
        total += len(p.draw)
        # Real input fingerprints: a render that re-reads a month compares them with the candles.
        conn.executemany(
            "INSERT INTO images (symbol, interval, end_open_time_ms, img_size_px, window_len, style_version, "
            "style_name, spec_hash, file_path, status, input_fingerprint, created_utc, updated_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', ?, '', '')",
            ((series.symbol, "1m", int(series.times[last]), preset["img_size_px"], preset["window_len"],
              preset["style_version"], preset["style_name"], spec.spec_hash,
              f"{series.symbol}/{int(series.times[last])}.png",
              fingerprint(series, window_rows(int(last), spec.window_len, spec.history))) for last in p.draw))
        for end, why, _ in p.record:  # windows with no image (gaps), as render records them
            conn.execute("INSERT INTO images (symbol, interval, end_open_time_ms, img_size_px, window_len, "
                         "style_version, style_name, spec_hash, file_path, status, reason, created_utc, "
                         "updated_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'undrawable', ?, '', '')",
                         (series.symbol, "1m", end, preset["img_size_px"], preset["window_len"],
                          preset["style_version"], preset["style_name"], spec.spec_hash,
                          f"{series.symbol}/{end}.png", why))
    conn.execute("COMMIT")
    for p in plans:
        index.write_month_digests(conn, index.preset_label(preset), p.rec.series.symbol, "1m", p.rec.memo)
    conn.close()
    mconn.close()
    del plans
    render = [PY, str(REPO / "image_cache.py"), "render", "--market-db", str(db), "--index-db",
              settings.image_index_db, "--image-root", settings.image_root_dir, "--symbols", "BTCUSDT,ETHUSDT",
              "--intervals", "1m", "--start", "2000-01-01", "--size", "224", "--window", "60"]
    first = Figure(f"no-op render over {total:,} indexed images, first run (reads all, stamps)", count=total,
                   unit="s")
    steady = Figure(f"no-op nightly render over {total:,} indexed images (stamps hold)", count=total, unit="s")
    for k in range(3):
        seconds, peak, _, _ = run_measured(render)
        figure = first if k == 0 else steady
        figure.runs.append(seconds)
        figure.peak_mb = max(figure.peak_mb or 0, peak)
    return first, steady, total


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.noop", description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="indexed images (default 1,000,000)")
    args = parser.parse_args()
    first, steady, _ = measure(args.rows, fresh(WORK / "noop-scale"))
    for figure in (first, steady):
        print(f"{figure.name}: {statistics.median(figure.runs):.2f} s (runs: "
              f"{', '.join(f'{s:.2f}' for s in figure.runs)}), peak {figure.peak_mb:,.0f} MB")


if __name__ == "__main__":
    main()
