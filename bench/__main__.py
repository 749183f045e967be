"""`make bench` (`python -m bench`): every figure of issues 4 and 13, measured side by side in one run.

Builds its data under bench/work/ (a sample market, Binance-style zips), runs each case as a real
subprocess several times, and writes bench/RESULTS.md: the mplfinance baseline per image in a warm
process and as a whole command, the engine per preset with a stage breakdown, the pipeline per preset
(`--jobs 1` up to the cores present) and its ratio to the engine, a no-op nightly render, verify,
ingest and memory. Not part of `make test`: the machines are shared and noisy, so targets are
reported, never asserted. The sections run in the order of SECTIONS.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import itertools
import json
import os
import platform
import shutil
import statistics
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.report import MARKET, PY, REPO, WORK, Context, Figure, Section, Target, fresh, json_of, run_measured

END = "2024-07-01"
# The presets issue 13 sets pipeline targets for: label -> render flags (15m windows, BTCUSDT and ETHUSDT).
PRESETS = {
    "mike 1280 w150": [],
    "mike 224 w60": ["--size", "224", "--window", "60"],
    "jkx w20": ["--style", "jkx", "--window", "20"],
}
PRESET_IMAGES = {"mike 1280 w150": 2000, "mike 224 w60": 6000, "jkx w20": 6000}


def build_market(days: int) -> None:
    if MARKET.exists():
        return
    WORK.mkdir(parents=True, exist_ok=True)
    run_measured([PY, "-m", "ingest", "sample", "--market-db", str(MARKET), "--symbols", "BTCUSDT,ETHUSDT",
                  "--days", str(days), "--end", END])


# Each render writes into a folder of its own, removed only when the bench ends: on ext4 without a
# journal (this VM's disk), each new file's inode search skips every inode deleted in the last 1-6
# minutes, one buffer lookup each, so deleting the previous repetition's 6,000 images just before a
# render measured about 1 ms per image of kernel time (jkx 20: 1.7 ms per image against 0.66 ms in a new
# folder), more than the drawing. A nightly render deletes nothing before it draws.
RENDERS = WORK / "renders"
_render_ids = itertools.count(1)


def render_case(name: str, flags: list[str], count: int, reps: int) -> Figure:
    """Whole pipeline through the CLI: read market, plan, draw, encode, write files, index.

    `runs` are whole commands (start-up included); the note keeps the render's own seconds (what
    `render --json` reports: after imports, from opening the databases to the last index row).
    """
    figure = Figure(name, count=count)
    own = []
    for _ in range(reps):
        folder = RENDERS / f"{os.getpid()}-{next(_render_ids)}"
        folder.mkdir(parents=True)
        seconds, peak, _, out = run_measured([PY, str(REPO / "image_cache.py"), "render", "--market-db", str(MARKET),
                                              "--index-db", str(folder / "index.sqlite"), "--image-root",
                                              str(folder / "img"), "--symbols", "BTCUSDT,ETHUSDT", "--start",
                                              "2024-05-01", "--limit", str(count), "--json", *flags])
        figure.runs.append(seconds)
        own.append(json_of(out)["seconds"])
        figure.peak_mb = max(figure.peak_mb or 0, peak)
    sizes = [p.stat().st_size for p in (folder / "img").rglob("*.png")]
    assert len(sizes) == count, f"{name}: drew {len(sizes)} images, expected {count}"
    figure.png_bytes = statistics.mean(sizes)
    figure.note = f"the render itself (no start-up): {statistics.median(own):.2f} s, " \
                  f"{count / statistics.median(own):,.1f} images/s"
    figure.own_seconds = statistics.median(own)
    return figure


# --------------------------------------------------------------------------------------- baseline

BASELINE = r"""
import json, sqlite3, sys, time
import matplotlib; matplotlib.use("Agg")
import mplfinance as mpf, pandas as pd
market, out, count, warm = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "warm"
conn = sqlite3.connect(f"file:{market}?mode=ro", uri=True)
index = sqlite3.connect(f"{out}/index.sqlite")
index.execute("CREATE TABLE images (path TEXT PRIMARY KEY, end_open_time_ms INTEGER)")
sid = conn.execute("SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id JOIN intervals i "
                   "ON i.id = se.interval_id WHERE s.symbol = 'BTCUSDT' AND i.code = '15m'").fetchone()[0]
ends = [r[0] for r in conn.execute("SELECT open_time FROM candles WHERE series_id = ? AND open_time >= ? "
                                   "ORDER BY open_time LIMIT ?", (sid, 1714521600000, count + warm))]
seconds = []
for end in ends:
    began = time.perf_counter()
    rows = conn.execute("SELECT open_time, open, high, low, close, volume FROM candles WHERE series_id = ? "
                        "AND open_time <= ? ORDER BY open_time DESC LIMIT 150", (sid, end)).fetchall()[::-1]
    frame = pd.DataFrame(rows, columns=["t", "Open", "High", "Low", "Close", "Volume"])
    frame.index = pd.to_datetime(frame.pop("t"), unit="ms")
    path = f"{out}/BTCUSDT_15m_{end}.png"
    mpf.plot(frame, type="candle", style="mike", volume=True, figsize=(12.8, 12.8),
             savefig=dict(fname=path, dpi=100))
    index.execute("INSERT INTO images VALUES (?, ?)", (path, end))
    index.commit()
    seconds.append(time.perf_counter() - began)
# warm: the first image (imports resolved lazily, font cache, first figure) is left out
print(json.dumps(seconds[1:] if warm else seconds))
"""


def baseline_section(ctx: Context) -> Section:
    """The usual way: one SQL query and one mplfinance.plot per image (mike, 1280 px, 150 candles).

    Timed per image in a warm process (the figure ratios use) and as a whole command (start-up,
    imports and the first figure included, which flatters every ratio taken against it)."""
    count = ctx.n(20)
    warm = Figure("1a. baseline per image, warm process: SQL + mplfinance.plot (mike, 1280 px)", count=1,
                  compare=False)
    folder = fresh(WORK / "baseline")
    _, peak, _, out = run_measured([PY, "-c", BASELINE, str(MARKET), str(folder), str(count), "warm"])
    warm.runs = json_of(out)
    warm.peak_mb = peak
    warm.note = (f"median of {len(warm.runs)} images after one warm-up image: {warm.seconds * 1000:,.0f} ms per "
                 f"image; every × baseline below is against this figure")
    whole = Figure("1b. baseline as a whole command (start-up included)", count=count, compare=False)
    for _ in range(ctx.reps):
        folder = fresh(WORK / "baseline")
        seconds, peak, _, _ = run_measured([PY, "-c", BASELINE, str(MARKET), str(folder), str(count), "cold"])
        whole.runs.append(seconds)
        whole.peak_mb = max(whole.peak_mb or 0, peak)
    whole.png_bytes = statistics.mean(p.stat().st_size for p in folder.glob("*.png"))
    whole.note = f"{whole.seconds / count * 1000:,.0f} ms per image over {count} images, start-up included"
    ctx.found["baseline_rate"] = warm.rate
    return Section(figures=[warm, whole])


# --------------------------------------------------------------------------------------- engine

ENGINE_TARGETS_MS = {"mike 1280 w150": 0.8, "mike 224 w60": 0.15, "jkx w20": 0.12}


def engine_section(ctx: Context) -> Section:
    """The drawing engine alone on one core (bench/chart_speed.py in a fresh process)."""
    from bench.chart_speed import STAGES

    _, _, _, out = run_measured([PY, "-m", "bench.chart_speed", "--json"])
    results = json_of(out)
    base = ctx.found["baseline_rate"]
    md = ["## Engine, one core (`python -m bench.chart_speed`)", "",
          "chart.render only (draw, encode, pixel hash; no market, no files), best of 5 rounds. CPU ms is the "
          "time this thread spent (robust to other processes on a shared machine); wall ms includes waiting "
          "for a core.", "",
          "| preset | CPU ms | wall ms | images/s (CPU) | × baseline | PNG bytes |", "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        md.append(f"| {r['case']} | {r['cpu_ms']:.3f} | {r['wall_ms']:.3f} | {1000 / r['cpu_ms']:,.0f} | "
                  f"{1000 / r['cpu_ms'] / base:,.0f}× | {r['png_bytes']:,} |")
    md += ["", "Stage breakdown, CPU ms per image (png: the rest of chart.render, the total less the stages):", "",
           "| preset | " + " | ".join(STAGES) + " | total |", "|---|" + "---:|" * (len(STAGES) + 1)]
    for r in results:
        md.append(f"| {r['case']} | " + " | ".join(f"{r['stages'][s]:.3f}" for s in STAGES)
                  + f" | {r['cpu_ms']:.3f} |")
    by_case = {r["case"]: r for r in results}
    ctx.found["engine"] = by_case
    targets = [Target(f"engine {case} ≤ {limit} ms per image, one core", f"{by_case[case]['cpu_ms']:.3f} ms CPU, "
                      f"{by_case[case]['wall_ms']:.3f} ms wall", by_case[case]["cpu_ms"] <= limit)
               for case, limit in ENGINE_TARGETS_MS.items()]
    return Section(markdown=md, targets=targets)


# --------------------------------------------------------------------------------------- pipeline

def pipeline_section(ctx: Context) -> Section:
    """The whole render command per preset, one worker; the mplfinance engine for comparison."""
    common = ["--intervals", "15m", "--jobs", "1"]
    figures = [render_case("2. engine `mplfinance:mike`, 1280 px", [*common, "--style", "mplfinance:mike"],
                           ctx.n(20), ctx.reps)]
    ctx.found["pipeline"] = {}
    for k, (label, flags) in enumerate(PRESETS.items()):
        figure = render_case(f"{3 + k}. pipeline `{label}`, `--jobs 1`", [*common, *flags],
                             ctx.n(PRESET_IMAGES[label]), ctx.reps)
        figures.append(figure)
        ctx.found["pipeline"][(label, 1)] = figure
    return Section(figures=figures)


def worker_counts(cores: int) -> list[int]:
    """1, 2, 4, … up to the cores present, and the core count itself."""
    counts = [1]
    while counts[-1] * 2 <= cores:
        counts.append(counts[-1] * 2)
    return counts + ([cores] if counts[-1] != cores else [])


def scaling_section(ctx: Context) -> Section:
    """`--jobs N` for N = 1, 2, 4, … up to the cores present, per preset; and one worker against the engine."""
    counts = worker_counts(ctx.cores)
    pipeline = ctx.found["pipeline"]
    for label, flags in PRESETS.items():
        for jobs in counts[1:]:
            pipeline[(label, jobs)] = render_case(f"pipeline `{label}`, `--jobs {jobs}`",
                                                  ["--intervals", "15m", "--jobs", str(jobs), *flags],
                                                  ctx.n(PRESET_IMAGES[label]), ctx.reps)
    own = {key: f.count / f.own_seconds for key, f in pipeline.items() if f.own_seconds}
    md = ["## Scaling: the render command with `--jobs N`", "",
          f"images/s of the render itself (median of {ctx.reps}; start-up excluded), and the speed-up over "
          f"`--jobs 1`; {ctx.cores} cores here.", "",
          "| preset | " + " | ".join(f"--jobs {j}" for j in counts) + " |", "|---|" + "---:|" * len(counts)]
    targets = []
    for label in PRESETS:
        cells = [f"{own[(label, j)]:,.0f} ({own[(label, j)] / own[(label, 1)]:.2f}×)" for j in counts]
        md.append(f"| {label} | " + " | ".join(cells) + " |")
        if 2 in counts:
            speedup = own[(label, 2)] / own[(label, 1)]
            targets.append(Target(f"{label}: `--jobs 2` ≥ 1.85× `--jobs 1` (2 cores)", f"{speedup:.2f}×",
                                  speedup >= 1.85))
        if 16 in counts:
            speedup = own[(label, 16)] / own[(label, 1)]
            targets.append(Target(f"{label}: `--jobs 16` ≥ 14× `--jobs 1` (16 cores)", f"{speedup:.2f}×",
                                  speedup >= 14))
        else:
            targets.append(Target(f"{label}: `--jobs 16` ≥ 14× `--jobs 1`", "not measured", False,
                                  machine="needs a 16-core machine"))
    engine = ctx.found["engine"]
    md += ["", "## Pipeline, one worker, against the engine", "",
           "Engine: wall ms per image of chart.render on one core (best of 5 rounds, engine section). Pipeline: "
           "the render command with `--jobs 1` (reads the market, plans, draws, writes each file, flushes, "
           "indexes), images/s of the render itself.", "",
           "| preset | engine images/s | pipeline images/s | pipeline / engine |", "|---|---:|---:|---:|"]
    for label in PRESETS:
        engine_rate = 1000 / engine[label]["wall_ms"]
        ratio = own[(label, 1)] / engine_rate
        md.append(f"| {label} | {engine_rate:,.0f} | {own[(label, 1)]:,.0f} | {ratio:.0%} |")
        targets.append(Target(f"{label}: pipeline with one worker ≥ 80 % of the engine", f"{ratio:.0%}",
                              ratio >= 0.8))
    figures = [f for (label, jobs), f in pipeline.items() if jobs > 1]
    return Section(figures=figures, markdown=md, targets=targets)


def stages_section(ctx: Context) -> Section:
    """Where the render's time goes per preset, one worker (bench/pipeline_stages.py in a fresh process)."""
    from bench.pipeline_stages import INLINE, THREADED

    args = [PY, "-m", "bench.pipeline_stages", str(MARKET), str(RENDERS / f"stages-{os.getpid()}"), "--json"]
    for label, flags in PRESETS.items():
        args += ["--preset", label, " ".join(flags), str(ctx.n(PRESET_IMAGES[label]))]
    _, _, _, out = run_measured(args)
    stages = list(INLINE) + ["other"]
    md = ["## Pipeline stages, one worker (`python -m bench.pipeline_stages`)", "",
          "ms per image of one render with `--jobs 1`. plan: read the market, reconcile, stamps; draw: "
          "chart.render inside the pipeline (the engine's stages are in its table above); row: path, index row, "
          "input fingerprint, SHA-256; index: the upserts; other: the rest of the render's own time (start, "
          "chunking, hand-offs, waiting for a chunk's last files). write (the files thread) and flush (the "
          "syncfs thread) run beside the drawing thread and are not part of the total.", "",
          "| preset | " + " | ".join(stages) + " | total | " + " | ".join(f"{t} (own thread)" for t in THREADED)
          + " |", "|---|" + "---:|" * (len(stages) + 1 + len(THREADED))]
    for label, ms in json_of(out).items():
        md.append(f"| {label} | " + " | ".join(f"{ms[s]:.3f}" for s in stages) + f" | {ms['total']:.3f} | "
                  + " | ".join(f"{ms[t]:.3f}" for t in THREADED) + " |")
    return Section(markdown=md)


# --------------------------------------------------------------------------------------- index and files

def noop_section(ctx: Context) -> Section:
    """A nightly render with nothing to do over an index of about a million rows (1m windows): the
    first run after the index was written, and the steady state (bench/noop.py)."""
    from bench import noop

    first, steady, total = noop.measure(200_000 if ctx.quick else 1_000_000, fresh(WORK / "noop"))
    first.name, steady.name = "7. " + first.name, "7b. " + steady.name
    target = Target(f"no-op nightly render over {total:,} indexed images < 10 s",
                    f"{steady.seconds:.2f} s steady, {first.seconds:.2f} s on the first run after indexing",
                    steady.seconds < 10)
    return Section(figures=[first, steady], targets=[target])


WRITER_ROWS = 100_000


def driver_section(ctx: Context) -> Section:
    """What the driver alone sustains: index rows written through BatchWriter (as render writes them,
    500 per transaction, WAL, synchronous=NORMAL, checkpoints included) into a fresh index, and planning
    a run from scratch."""
    from image_cache.cache import index, market, runner
    from image_cache.cache.layout import relative_path
    from image_cache.settings import load

    count = ctx.n(WRITER_ROWS)
    runs, cpu = [], []
    row_bytes = 0.0
    for _ in range(ctx.reps):
        folder = fresh(WORK / "writer")
        conn = index.connect(str(folder / "index.sqlite"))
        rows = [index.Row(symbol="BTCUSDT", interval="1m", end_open_time_ms=1_700_000_000_000 + 60_000 * k,
                          img_size_px=224, window_len=60, style_version=1, style_name="mike", spec_hash="s" * 64,
                          file_path=relative_path("BTCUSDT", "1m", 1_700_000_000_000 + 60_000 * k, "224", 60, "", 1),
                          status="ok", sha256="a" * 64, pixel_hash="b" * 64,
                          width_px=224, height_px=224, file_size=1500, input_fingerprint="c" * 64)
                for k in range(count)]
        gc.collect()  # the rows above are the bench's, not the writer's: their collection is not timed
        began, cpu_began = time.perf_counter(), time.process_time()
        writer = index.BatchWriter(conn)
        for k in range(0, count, 500):  # render hands the writer one chunk's rows at a time
            writer.add(rows[k:k + 500])
        writer.close()  # as render ends: the last rows, and the checkpoint that copies them into the file
        runs.append(time.perf_counter() - began)
        cpu.append(time.process_time() - cpu_began)  # this process, the checkpointer thread included
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        row_bytes = (folder / "index.sqlite").stat().st_size / count
    writer_figure = Figure(f"10. driver: index rows through BatchWriter ({count:,} rows)", runs=runs, count=count,
                           unit="rows/s")
    writer_figure.note = (f"index file: {row_bytes:,.0f} bytes per row (real paths and hashes); "
                          f"{count / statistics.median(cpu):,.0f} rows per CPU second (wall figures suffer from "
                          "the load of a shared machine, this one less)")
    settings = load(None, {"market_db_path": str(MARKET), "image_index_db": str(WORK / "plan" / "index.sqlite"),
                           "image_root_dir": str(WORK / "plan" / "img"), "pairs": "BTCUSDT,ETHUSDT",
                           "intervals": "1m,15m", "start": "2000-01-01", "img_size_px": "224", "window_len": "60"})
    fresh(WORK / "plan")
    spec = settings.make_spec(settings)
    plan_runs, windows = [], 0
    for _ in range(ctx.reps):
        conn, mconn = index.connect(settings.image_index_db), market.open_market(str(MARKET))
        began = time.perf_counter()
        plans = runner.plan(settings, market.Filters(), mconn, conn, spec, lambda _: None)
        plan_runs.append(time.perf_counter() - began)
        windows = sum(len(p.draw) + len(p.record) for p in plans)
        conn.close()
        mconn.close()
    plan_figure = Figure(f"11. driver: planning {windows:,} windows from scratch (empty index)", runs=plan_runs,
                         count=windows, unit="windows/s")
    target = Target("driver: ≥ 100,000 index rows/s", f"{writer_figure.rate:,.0f} rows/s",
                    writer_figure.rate >= 100_000)
    return Section(figures=[writer_figure, plan_figure], targets=[target])


def verify_section(ctx: Context) -> Section:
    """verify fast and deep over the images of a 224 px render."""
    folder = fresh(WORK / "verify")
    flags = ["--market-db", str(MARKET), "--index-db", str(folder / "index.sqlite"), "--image-root",
             str(folder / "img"), "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "15m", "--start", "2024-05-01",
             "--size", "224", "--window", "60"]
    run_measured([PY, str(REPO / "image_cache.py"), "render", *flags])
    count = sum(1 for _ in (folder / "img").rglob("*.png"))
    figures = []
    for mode in ([], ["--deep"]):
        figure = Figure(f"8. verify {'deep' if mode else 'fast'} ({count:,} files)", count=count, unit="files/s")
        for _ in range(ctx.reps):
            seconds, peak, _, _ = run_measured([PY, str(REPO / "image_cache.py"), "verify", *flags, *mode])
            figure.runs.append(seconds)
            figure.peak_mb = max(figure.peak_mb or 0, peak)
        figures.append(figure)
    return Section(figures=figures)


def ingest_section(ctx: Context) -> Section:
    """12 monthly Binance Vision zips of 1m candles for one symbol (a year, 525,600 rows minus gaps)."""
    from image_cache.core.grid import utc_ms
    from image_cache.ingest.sample import generate_symbol

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
                         part["taker_buy_quote_volume"], strict=True)]
            with zipfile.ZipFile(mirror / f"{stem}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
                archive.writestr(f"{stem}.csv", "\n".join(lines) + "\n")
            digest = hashlib.sha256((mirror / f"{stem}.zip").read_bytes()).hexdigest()
            (mirror / f"{stem}.zip.CHECKSUM").write_text(f"{digest}  {stem}.zip")
    rows = 0
    for path in sorted(mirror.glob("*.zip")):
        with zipfile.ZipFile(path) as archive:
            rows += archive.read(archive.namelist()[0]).count(b"\n")
    figure = Figure(f"9. ingest: 12 monthly 1m zips ({rows:,} candles)", count=rows, unit="candles/s")
    for _ in range(ctx.reps):
        folder = fresh(WORK / "ingest")
        seconds, peak, _, _ = run_measured([PY, "-m", "ingest", "binance-vision", "--market-db",
                                            str(folder / "m.sqlite"), str(mirror)])
        figure.runs.append(seconds)
        figure.peak_mb = max(figure.peak_mb or 0, peak)
    target = Target("ingest ≥ 300,000 candles/s", f"{figure.rate:,.0f} candles/s", figure.rate >= 300_000)
    return Section(figures=[figure], targets=[target])


def memory_section(ctx: Context) -> Section:
    """Peak and over-time RSS of a long render (224 px, 60-candle windows, 1m series)."""
    count = ctx.n(100_000)
    folder = fresh(WORK / "memory")
    db = folder / "m.sqlite"
    run_measured([PY, "-m", "ingest", "sample", "--market-db", str(db), "--symbols", "BTCUSDT,ETHUSDT", "--days",
                  str(count // 2880 + 2), "--end", END])
    args = [PY, str(REPO / "image_cache.py"), "render", "--market-db", str(db), "--index-db",
            str(folder / "index.sqlite"), "--image-root", str(folder / "img"), "--symbols", "BTCUSDT,ETHUSDT",
            "--intervals", "1m", "--start", "2000-01-01", "--size", "224", "--window", "60", "--limit", str(count),
            "--jobs", "2"]
    seconds, peak, samples, _ = run_measured(args)
    # RSS after warm-up: at a quarter, half, three quarters and the end of the run.
    quarter = [samples[max(int(len(samples) * f) - 1, 0)] for f in (0.25, 0.5, 0.75, 1.0)] if samples else []
    figure = Figure(f"memory: render of {count:,} images (224 px, w60, `--jobs 2`)", runs=[seconds], count=count,
                    peak_mb=peak)
    figure.note = "RSS at 25/50/75/100 % of the run: " + " / ".join(f"{mb:.0f}" for mb in quarter) + " MB"
    target = Target(f"peak memory of a {count:,}-image render < 500 MB", f"{peak:,.0f} MB", peak < 500)
    return Section(figures=[figure], targets=[target])


def ingest_rates_section(ctx: Context) -> Section:
    """Archive, REST (against the tests' fake Binance on 127.0.0.1) and large-CSV ingest: bench/ingest_speed.py."""
    from bench import ingest_speed

    rows = ingest_speed.rows(csv_mb=40 if ctx.quick else 159, rest_candles=40_000 if ctx.quick else 200_000)
    lines = ["### Ingest rates (bench/ingest_speed.py)", "",
             "| figure | candles/s (wall) | candles per CPU s | peak MB |",
             "|---|---:|---:|---:|"]
    lines += [f"| {r['figure']} | {r['candles_per_s']:,} | {r['candles_per_cpu_s']:,} | {r['peak_mb']:,} |"
              for r in rows]
    archive, _, csv = rows
    targets = [Target("archive ingest ≥ 300,000 candles/s on one core (issue 12)",
                      f"{archive['candles_per_cpu_s']:,} per CPU s, {archive['candles_per_s']:,}/s wall",
                      archive["candles_per_cpu_s"] >= 300_000),
               Target("CSV ingest peak memory < 300 MB (issue 10)", f"{csv['peak_mb']:,} MB", csv["peak_mb"] < 300)]
    return Section(markdown=lines, targets=targets)


def ingest_memory_section(ctx: Context) -> Section:
    """Peak memory of ingest against 300 MB: a 1 GB CSV, zips parsed whole and a streamed monthly 1s zip
    (bench/ingest_memory.py)."""
    from bench import ingest_memory

    rows = ingest_memory.measure(csv_mb=128 if ctx.quick else 1024)
    targets = [Target(f"ingest peak memory < 300 MB: {r['case']}", f"{r['peak_mb']:,} MB", r["met"]) for r in rows]
    return Section(markdown=["### Ingest memory (bench/ingest_memory.py)", "", ingest_memory.report(rows)],
                   targets=targets)


def export_section(ctx: Context) -> Section:
    """Export and read rates per format with its client; the in-memory dataset (bench/export_speed.py)."""
    from bench import export_speed

    rows = export_speed.rows(days=30 if ctx.quick else 120, rounds=1 if ctx.quick else 3)
    targets = []
    for r in rows:
        if r["case"].startswith("in-memory"):
            ratio = float(r["note"].split("x", 1)[0])
            targets.append(Target(f"in-memory dataset ≥ the fastest PNG read ({r['preset']}, issue 11)",
                                  f"{ratio:.2f}×", ratio >= 1))
        if r["case"].startswith("read numpy: np.load"):
            targets.append(Target(f"numpy format read ≥ 100,000 images/s ({r['preset']}, issue 11)",
                                  f"{r['rate']:,.0f} images/s", r["rate"] >= 100_000))
    return Section(markdown=["### Export and read (bench/export_speed.py)", "", export_speed.table(rows)],
                   targets=targets)


def dataset_section(ctx: Context) -> Section:
    """The in-memory dataset's images/s against the engine's, per preset (bench/dataset_speed.py, issue 21)."""
    from bench import dataset_speed

    rows = dataset_speed.measure()
    lines = ["### In-memory dataset against the engine, one core (bench/dataset_speed.py)", "",
             "| preset | engine ms | draw ms | engine ms, whole items | ChartDataset[i] ms | × the engine |",
             "|---|---:|---:|---:|---:|---:|"]
    targets = []
    for r in rows:
        ratio = r["items_engine_ms"] / r["items_dataset_ms"]
        lines.append(f"| {r['preset']} | {r['engine_ms']:.3f} | {r['dataset_ms']:.3f} | {r['items_engine_ms']:.3f} "
                     f"| {r['items_dataset_ms']:.3f} | {ratio:.2f} |")
        targets.append(Target(f"in-memory dataset images/s ≥ the engine's ({r['preset']}, issue 21)",
                              f"{ratio:.2f}×", ratio >= 1))
    return Section(markdown=lines, targets=targets)


def soak_section(ctx: Context) -> Section:
    """The last `make soak`: tests/state_walk.py writes bench/soak.json (sequences run, violations),
    bench/determinism_soak.py bench/determinism_soak.json (renders, images compared, mismatches)."""
    path = REPO / "bench" / "soak.json"
    if not path.exists():
        return Section(markdown=["### Soak", "", "No `make soak` result yet."])
    soak = json.loads(path.read_text())
    text = (f"`make soak` on {soak['machine']}, {soak['finished']}: {soak['sequences']:,} random sequences of "
            f"{soak['steps_per_sequence']} steps over render/verify/repair, {soak['violations']} invariant "
            f"violations, {soak['seconds']:,.0f} s.")
    if soak.get("sequences_with_signals"):
        text += (f" {soak['sequences_with_signals']:,} of the sequences also stopped real renders with SIGINT, "
                 "SIGTERM or SIGHUP.")
    targets = [Target("soak: 10,000 sequences, 0 invariant violations (issue 9)",
                      f"{soak['sequences']:,} sequences, {soak['violations']} violations",
                      soak["sequences"] >= 10_000 and soak["violations"] == 0)]
    markdown = ["### Soak (make soak)", "", text]
    path = REPO / "bench" / "determinism_soak.json"  # bench/determinism_soak.py, the second half of make soak
    if path.exists():
        det = json.loads(path.read_text())
        layers = ", ".join(f"{n} {layer}" for layer, n in det["by_layer"].items() if n) or "none"
        markdown += ["", f"Determinism soak on {det['machine']}, {det['finished']}, {det['load_processes']} "
                     f"CPU-burning processes: {det['renders']:,} fresh renders ({det['repairs']:,} followed by a "
                     f"repair), {det['images_compared']:,} images compared byte for byte and by pixel hash, "
                     f"{det['mismatches']} mismatches (by layer: {layers}), {det['seconds']:,.0f} s."]
        targets.append(Target("determinism soak: same inputs, same bytes (issue 23)",
                              f"{det['images_compared']:,} images, {det['mismatches']} mismatches",
                              det["mismatches"] == 0))
    return Section(markdown=markdown, targets=targets)


# Sections of RESULTS.md, in order: each a function `section(ctx: Context) -> Section` (bench/report.py)
# that may read what earlier sections left in ctx.found (the baseline rate, engine and pipeline figures).
SECTIONS: list[Callable[[Context], Section]] = [
    baseline_section,
    engine_section,
    pipeline_section,
    scaling_section,
    stages_section,
    driver_section,
    noop_section,
    verify_section,
    ingest_section,
    memory_section,
    ingest_rates_section,
    ingest_memory_section,
    export_section,
    dataset_section,
    soak_section,
]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_results(sections: list[Section], ctx: Context, seconds: float, load: tuple[float, float]) -> str:
    base = ctx.found["baseline_rate"]
    lines = [
        "# Benchmark results", "",
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()}, {cpu_model()}, "
        f"{ctx.cores} cores, Python {platform.python_version()}; `make bench` ({'quick' if ctx.quick else 'full'} "
        f"mode, {seconds:.0f} s). Load average at start and end: {load[0]:.1f} and {load[1]:.1f}; the machine is "
        "shared, expect noise (wall figures suffer most; engine CPU figures least). Each table row is the median "
        f"of {ctx.reps} repetitions of the whole command (process start, read, plan, draw, encode, write, index); "
        "× baseline is against the mplfinance baseline's per-image time in a warm process, measured in this "
        "same run. Every figure comes from this machine.", "",
        "| case | images | median s | rate | × baseline | PNG bytes | peak MB |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    figures = [f for s in sections for f in s.figures]
    for f in figures:
        rate = f"{f.seconds:.2f} s" if f.unit == "s" else f"{f.rate:,.1f} {f.unit}"
        times_base = f"{f.rate / base:,.1f}×" if f.unit == "images/s" and f.compare else ""
        png = f"{f.png_bytes:,.0f}" if f.png_bytes else ""
        peak = f"{f.peak_mb:,.0f}" if f.peak_mb else ""
        lines.append(f"| {f.name} | {f.count:,} | {f.seconds:.2f} | {rate} | {times_base} | {png} | {peak} |")
    lines += [""] + [f"- {f.name}: {f.note}" for f in figures if f.note]
    for s in sections:
        if s.markdown:
            lines += [""] + s.markdown
    targets = [t for s in sections for t in s.targets]
    lines += ["", "## Targets", "", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {t.name} | {t.measured} | {t.machine or ('yes' if t.met else '**no**')} |" for t in targets]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repetitions (a smoke run)")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    ctx = Context(reps=1 if args.quick else args.reps, quick=args.quick, cores=os.cpu_count() or 1)
    began = time.perf_counter()
    load_start = os.getloadavg()[0]
    shutil.rmtree(RENDERS, ignore_errors=True)  # left by an interrupted run
    build_market(days=75)
    sections = [section(ctx) for section in SECTIONS]
    text = write_results(sections, ctx, time.perf_counter() - began, (load_start, os.getloadavg()[0]))
    (REPO / "bench" / "RESULTS.md").write_text(text)
    shutil.rmtree(RENDERS, ignore_errors=True)
    print(text)


if __name__ == "__main__":
    main()
