"""`make bench` (`python -m bench`): every figure of issue 4, measured side by side in one run.

Builds its data under bench/work/ (a sample market, Binance-style zips), runs each case as a real
subprocess several times, and writes bench/RESULTS.md with medians, ratios to the baseline measured
in the same run, PNG bytes per image, and peak memory (RSS of the process and its workers, sampled).
Not part of `make test`: the machines are shared and noisy, so targets are reported, never asserted.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work"
MARKET = WORK / "market.sqlite"
PY = sys.executable
END = "2024-07-01"


@dataclass
class Figure:
    name: str
    runs: list[float] = field(default_factory=list)  # seconds per repetition
    count: int = 0  # items per repetition (images, candles, files)
    unit: str = "images/s"
    png_bytes: float | None = None
    peak_mb: float | None = None
    note: str = ""

    @property
    def rate(self) -> float:
        return self.count / statistics.median(self.runs)


def run_measured(args: list[str], cwd: Path = REPO) -> tuple[float, float, list[float]]:
    """Run a command; (seconds, peak RSS in MB summed over the process and its workers, the samples).

    RSS is sampled every 20 ms (psutil): wait4's maxrss would count the bench's own memory, which a
    forked child carries until it execs.
    """
    import psutil

    began = time.perf_counter()
    process = psutil.Popen(args, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
    samples = []
    while process.poll() is None:
        total = 0
        for proc in [process, *process.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except psutil.Error:
                pass
        samples.append(total / 2**20)
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    if process.returncode != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed:\n{process.stderr.read().decode()}")
    return seconds, max(samples, default=0.0), samples


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def render_case(name: str, flags: list[str], count: int, reps: int) -> Figure:
    """Whole pipeline through the CLI: read market, plan, draw, encode, write files, index."""
    figure = Figure(name, count=count)
    for _ in range(reps):
        folder = fresh(WORK / "case")
        seconds, peak, _ = run_measured([PY, str(REPO / "image_cache.py"), "render", "--market-db", str(MARKET),
                                      "--index-db", str(folder / "index.sqlite"), "--image-root",
                                      str(folder / "img"), "--pairs", "BTCUSDT,ETHUSDT", "--start", "2024-05-01",
                                      "--limit", str(count), *flags])
        figure.runs.append(seconds)
        figure.peak_mb = max(figure.peak_mb or 0, peak)
    sizes = [p.stat().st_size for p in (WORK / "case" / "img").rglob("*.png")]
    assert len(sizes) == count, f"{name}: drew {len(sizes)} images, expected {count}"
    figure.png_bytes = statistics.mean(sizes)
    return figure


BASELINE = r"""
import io, sqlite3, sys, time
import matplotlib; matplotlib.use("Agg")
import mplfinance as mpf, pandas as pd
market, out, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
conn = sqlite3.connect(f"file:{market}?mode=ro", uri=True)
index = sqlite3.connect(f"{out}/index.sqlite")
index.execute("CREATE TABLE images (path TEXT PRIMARY KEY, end_open_time_ms INTEGER)")
sid = conn.execute("SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id JOIN intervals i "
                   "ON i.id = se.interval_id WHERE s.symbol = 'BTCUSDT' AND i.code = '15m'").fetchone()[0]
ends = [r[0] for r in conn.execute("SELECT open_time FROM candles WHERE series_id = ? AND open_time >= ? "
                                   "ORDER BY open_time LIMIT ?", (sid, 1714521600000, count))]
for end in ends:
    rows = conn.execute("SELECT open_time, open, high, low, close, volume FROM candles WHERE series_id = ? "
                        "AND open_time <= ? ORDER BY open_time DESC LIMIT 150", (sid, end)).fetchall()[::-1]
    frame = pd.DataFrame(rows, columns=["t", "Open", "High", "Low", "Close", "Volume"])
    frame.index = pd.to_datetime(frame.pop("t"), unit="ms")
    path = f"{out}/BTCUSDT_15m_{end}.png"
    mpf.plot(frame, type="candle", style="mike", volume=True, figsize=(12.8, 12.8),
             savefig=dict(fname=path, dpi=100))
    index.execute("INSERT INTO images VALUES (?, ?)", (path, end))
    index.commit()
"""


def baseline_case(count: int, reps: int) -> Figure:
    figure = Figure("1. baseline: SQL per window + mplfinance.plot (mike, 1280 px)", count=count)
    for _ in range(reps):
        folder = fresh(WORK / "baseline")
        seconds, peak, _ = run_measured([PY, "-c", BASELINE, str(MARKET), str(folder), str(count)])
        figure.runs.append(seconds)
        figure.peak_mb = max(figure.peak_mb or 0, peak)
    figure.png_bytes = statistics.mean(p.stat().st_size for p in (WORK / "baseline").glob("*.png"))
    return figure


def build_market(days: int) -> None:
    if MARKET.exists():
        return
    WORK.mkdir(parents=True, exist_ok=True)
    run_measured([PY, "-m", "ingest", "sample", "--db", str(MARKET), "--symbols", "BTCUSDT,ETHUSDT",
                  "--days", str(days), "--end", END])


def noop_case(rows_target: int) -> Figure:
    """A nightly render with nothing to do over an index of `rows_target` rows (1m windows)."""
    from cache import index, market, runner
    from config import load

    folder = fresh(WORK / "noop")
    db = folder / "noop-market.sqlite"
    days = rows_target // (2 * 1440) + 1
    run_measured([PY, "-m", "ingest", "sample", "--db", str(db), "--symbols", "BTCUSDT,ETHUSDT", "--days",
                  str(days), "--end", END])
    settings = load(None, {"market_db_path": str(db), "image_index_db": str(folder / "index.sqlite"),
                           "image_root_dir": str(folder / "img"), "pairs": "BTCUSDT,ETHUSDT", "intervals": "1m",
                           "start": "2000-01-01", "img_size_px": "224", "window_len": "60"})
    spec = runner.make_spec(settings)
    conn = index.connect(settings.image_index_db)
    mconn = market.open_market(str(db))
    plans = runner.plan(settings, runner.Filters(), mconn, conn, spec, lambda _: None)
    preset = runner.preset_of(spec)
    total = 0
    conn.execute("BEGIN")
    for p in plans:
        ends = p.series.times[p.draw]
        total += len(ends)
        conn.executemany(
            "INSERT INTO images (symbol, interval, end_open_time_ms, img_size_px, window_len, style_version, "
            "style_name, spec_hash, file_path, status, input_fingerprint, created_utc, updated_utc) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'ok', 'x', '', '')",
            ((p.series.symbol, "1m", int(e), preset["img_size_px"], preset["window_len"], preset["style_version"],
              preset["style_name"], spec.spec_hash, f"{p.series.symbol}/{int(e)}.png") for e in ends))
    conn.execute("COMMIT")
    for p in plans:
        index.write_month_digests(conn, runner.preset_label(preset), p.series.symbol, "1m", p.digests)
    conn.close()
    mconn.close()
    figure = Figure(f"7. no-op nightly render over {total:,} indexed images", count=total, unit="s")
    for _ in range(3):
        seconds, peak, _ = run_measured([PY, str(REPO / "image_cache.py"), "render", "--market-db", str(db),
                                      "--index-db", settings.image_index_db, "--image-root",
                                      settings.image_root_dir, "--pairs", "BTCUSDT,ETHUSDT", "--intervals", "1m",
                                      "--start", "2000-01-01", "--size", "224", "--window", "60"])
        figure.runs.append(seconds)
        figure.peak_mb = max(figure.peak_mb or 0, peak)
    return figure


def verify_cases(reps: int) -> list[Figure]:
    """verify fast and deep over the images of a 224 px render."""
    folder = fresh(WORK / "verify")
    flags = ["--market-db", str(MARKET), "--index-db", str(folder / "index.sqlite"), "--image-root",
             str(folder / "img"), "--pairs", "BTCUSDT,ETHUSDT", "--intervals", "15m", "--start", "2024-05-01",
             "--size", "224", "--window", "60"]
    run_measured([PY, str(REPO / "image_cache.py"), "render", *flags])
    count = sum(1 for _ in (folder / "img").rglob("*.png"))
    figures = []
    for mode in ([], ["--deep"]):
        figure = Figure(f"8. verify {'deep' if mode else 'fast'} ({count:,} files)", count=count, unit="files/s")
        for _ in range(reps):
            seconds, peak, _ = run_measured([PY, str(REPO / "image_cache.py"), "verify", *flags, *mode])
            figure.runs.append(seconds)
            figure.peak_mb = max(figure.peak_mb or 0, peak)
        figures.append(figure)
    return figures


def ingest_case(reps: int) -> Figure:
    """12 monthly Binance Vision zips of 1m candles for one symbol (a year, 525,600 rows minus gaps)."""
    from ingest.sample import generate_symbol
    from ingest.schema import utc_ms

    mirror = WORK / "zips"
    if not mirror.exists():
        mirror.mkdir(parents=True)
        candles = generate_symbol("BTCUSDT", days=366, seed=3, end_ms=utc_ms("2024-01-01"), gaps=[])
        months = candles["open_time"].astype("datetime64[ms]").astype("datetime64[M]")
        for month in np.unique(months)[-12:]:
            part = candles[months == month]
            stem = f"BTCUSDT-1m-{str(month)}"
            close = part["open_time"] + 59_999
            lines = [f"{t},{o:.8f},{h:.8f},{lo:.8f},{c:.8f},{v:.8f},{ct},{q:.8f},{n},{tb:.8f},{tq:.8f},0"
                     for t, o, h, lo, c, v, ct, q, n, tb, tq in zip(
                         part["open_time"], part["open"], part["high"], part["low"], part["close"], part["volume"],
                         close, part["quote_asset_volume"], part["trades"], part["taker_buy_base_volume"],
                         part["taker_buy_quote_volume"])]
            with zipfile.ZipFile(mirror / f"{stem}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(f"{stem}.csv", "\n".join(lines) + "\n")
            digest = hashlib.sha256((mirror / f"{stem}.zip").read_bytes()).hexdigest()
            (mirror / f"{stem}.zip.CHECKSUM").write_text(f"{digest}  {stem}.zip")
    rows = 0
    for path in sorted(mirror.glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            rows += archive.read(archive.namelist()[0]).count(b"\n")
    figure = Figure(f"9. ingest: 12 monthly 1m zips ({rows:,} candles)", count=rows, unit="candles/s")
    for _ in range(reps):
        folder = fresh(WORK / "ingest")
        seconds, peak, _ = run_measured([PY, "-m", "ingest", "binance-vision", "--db", str(folder / "m.sqlite"),
                                      str(mirror)])
        figure.runs.append(seconds)
        figure.peak_mb = max(figure.peak_mb or 0, peak)
    return figure


def memory_case(count: int) -> Figure:
    """Peak and over-time RSS of a long render (224 px, 60-candle windows, 1m series)."""
    folder = fresh(WORK / "memory")
    db = folder / "m.sqlite"
    run_measured([PY, "-m", "ingest", "sample", "--db", str(db), "--symbols", "BTCUSDT,ETHUSDT", "--days",
                  str(count // 2880 + 2), "--end", END])
    args = [PY, str(REPO / "image_cache.py"), "render", "--market-db", str(db), "--index-db",
            str(folder / "index.sqlite"), "--image-root", str(folder / "img"), "--pairs", "BTCUSDT,ETHUSDT",
            "--intervals", "1m", "--start", "2000-01-01", "--size", "224", "--window", "60", "--limit", str(count),
            "--jobs", "2"]
    seconds, peak, samples = run_measured(args)
    # RSS after warm-up: at a quarter, half, three quarters and the end of the run.
    quarter = [samples[max(int(len(samples) * f) - 1, 0)] for f in (0.25, 0.5, 0.75, 1.0)] if samples else []
    figure = Figure(f"memory: render of {count:,} images (224 px, w60, `--jobs 2`)", runs=[seconds], count=count, peak_mb=peak)
    figure.note = "RSS at 25/50/75/100 % of the run: " + " / ".join(f"{mb:.0f}" for mb in quarter) + " MB"
    return figure


def write_results(figures: list[Figure], baseline: Figure, args: argparse.Namespace, seconds: float) -> str:
    by_name = {f.name[:2]: f for f in figures}
    def ratio(key: str) -> float:
        return by_name[key].rate / baseline.rate
    lines = [
        "# Benchmark results", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; `make bench` "
        f"({'quick' if args.quick else 'full'} mode, {seconds:.0f} s). Each figure is the median of "
        f"{args.reps} repetitions of the whole command (process start, read, plan, draw, encode, write, index); "
        "ratios are to the baseline measured in this same run. The machine is shared: expect noise.", "",
        "| case | images | median s | rate | × baseline | PNG bytes | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for f in figures:
        rate = f"{statistics.median(f.runs):.2f} s" if f.unit == "s" else f"{f.rate:,.1f} {f.unit}"
        times_base = f"{f.rate / baseline.rate:,.1f}×" if f.unit == "images/s" else ""
        png = f"{f.png_bytes:,.0f}" if f.png_bytes else ""
        peak = f"{f.peak_mb:,.0f}" if f.peak_mb else ""
        lines.append(f"| {f.name} | {f.count:,} | {statistics.median(f.runs):.2f} | {rate} | {times_base} | "
                     f"{png} | {peak} |")
    notes = [f"- {f.name}: {f.note}" for f in figures if f.note]
    lines += [""] + notes
    targets = [("raster `mike` 1280, one process ≥ 50× baseline", f"{ratio('3.'):.1f}×", ratio("3.") >= 50),
               ("raster 224 px (60-candle window), one process ≥ 1,000 images/s",
                f"{by_name['4.'].rate:,.0f} images/s", by_name["4."].rate >= 1000),
               ("`--jobs 2` over `--jobs 1` ≥ 1.8×", f"{by_name['6.'].rate / by_name['3.'].rate:.2f}×",
                by_name["6."].rate / by_name["3."].rate >= 1.8)]
    if "7." in by_name:
        noop = statistics.median(by_name["7."].runs)
        targets.append((f"no-op nightly render over {by_name['7.'].count:,} indexed images < 10 s",
                        f"{noop:.2f} s", noop < 10))
    if "9." in by_name:
        targets.append(("ingest ≥ 300,000 candles/s", f"{by_name['9.'].rate:,.0f} candles/s",
                        by_name["9."].rate >= 300_000))
    memory = next((f for f in figures if f.name.startswith("memory")), None)
    if memory and memory.peak_mb:
        targets.append((f"peak memory of a {memory.count:,}-image render < 500 MB", f"{memory.peak_mb:,.0f} MB",
                        memory.peak_mb < 500))
    lines += ["", "## Targets (issue 4 and issue 2)", "", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {name} | {value} | {'yes' if met else '**no**'} |" for name, value, met in targets]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repetitions (a smoke run)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.reps = 1
    scale = 0.2 if args.quick else 1.0
    began = time.perf_counter()
    build_market(days=75)
    n = lambda base: max(10, int(base * scale))  # noqa: E731
    figures = []
    baseline = baseline_case(n(20), args.reps)
    figures.append(baseline)
    common = ["--intervals", "15m", "--jobs", "1"]
    figures.append(render_case("2. engine `mplfinance:mike`, 1280 px", [*common, "--style", "mplfinance:mike"],
                               n(20), args.reps))
    figures.append(render_case("3. raster `mike`, 1280 px, w150", common, n(2000), args.reps))
    figures.append(render_case("4. raster `mike`, 224 px, w60", [*common, "--size", "224", "--window", "60"],
                               n(10000), args.reps))
    figures.append(render_case("5. `jkx` 20-period (60×64 px)", [*common, "--style", "jkx", "--window", "20"],
                               n(10000), args.reps))
    figures.append(render_case("6. raster `mike`, 1280 px, w150, `--jobs 2`", ["--intervals", "15m", "--jobs", "2"],
                               n(2000), args.reps))
    figures.append(noop_case(200_000 if args.quick else 1_000_000))
    figures += verify_cases(args.reps)
    figures.append(ingest_case(args.reps))
    figures.append(memory_case(n(100_000)))
    text = write_results(figures, baseline, args, time.perf_counter() - began)
    (REPO / "bench" / "RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
