"""Determinism soak: many fresh renders of random small markets and presets, under CPU load, compared
byte for byte (`make soak` runs it after tests/state_walk.py).

Each render goes into an empty folder through the CLI, as a user runs it, with --jobs 1 or 2; some
then lose a few images and have `repair` redraw them (the path of issue 23 item 16). Every image is
compared with the first render of the same market and preset. A mismatch keeps its evidence under
--keep (both files, the window's candles, the index rows) and names the layer that differs:
  candles  the input fingerprints differ: the candles read were not the same
  pixels   same fingerprint, other pixel hash: the drawing differs
  encoding same pixel hash, other bytes: the PNG encoding differs
  write    the file on disk is not the bytes its index row records

    python bench/determinism_soak.py --seconds 600 [--renders N] [--load K] [--record]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from image_cache.cache.market import list_series, open_market, read_series  # noqa: E402
from image_cache.cache.windows import window_rows  # noqa: E402

MARKET_SEEDS = 3  # few markets, so that each market and preset is rendered many times
# (style, size, window): the default preset, jkx's three windows, other sizes and windows.
PRESETS = (("mike", 128, 30), ("mike", 64, 20), ("mike", 256, 60), ("mike", 97, 30),
           ("jkx", 64, 5), ("jkx", 64, 20), ("jkx", 64, 60))
INTERVALS = "1h,4h"


def _burn(stop) -> None:
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _cli(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def _market(work: Path, seed: int) -> Path:
    path = work / f"market-{seed}.sqlite"
    if not path.exists():
        result = _cli(work, "-m", "ingest", "sample", "--market-db", str(path), "--symbols", "AAAUSDT,BBBUSDT",
                      "--days", "12", "--seed", str(seed))
        if result.returncode != 0:
            raise SystemExit(f"ingest sample failed: {result.stderr}")
    return path


def _render_args(market: Path, preset: tuple[str, int, int], jobs: int) -> list[str]:
    style, size, window = preset
    return ["--market-db", str(market), "--index-db", "image_cache.sqlite", "--image-root", "image-cache",
            "--symbols", "AAAUSDT,BBBUSDT", "--intervals", INTERVALS, "--start", "2024-06-22", "--end", "2024-07-01",
            "--style", style, "--size", str(size), "--window", str(window), "--jobs", str(jobs)]


def _images(folder: Path) -> dict[str, dict]:
    """file_path -> what the index says and what is on disk, for every `ok` row."""
    with sqlite3.connect(folder / "image_cache.sqlite") as conn:
        rows = conn.execute("SELECT file_path, sha256, pixel_hash, input_fingerprint, symbol, interval, "
                            "end_open_time_ms FROM images WHERE status = 'ok'").fetchall()
    out = {}
    for path, sha, pixels, fp, symbol, interval, end in rows:
        data = (folder / "image-cache" / path).read_bytes()
        out[path] = {"sha256": sha, "pixel_hash": pixels, "fingerprint": fp, "file_sha256":
                     hashlib.sha256(data).hexdigest(), "symbol": symbol, "interval": interval, "end": end}
    return out


def _layer(ref: dict, got: dict) -> str | None:
    if got["file_sha256"] != got["sha256"]:
        return "write"
    if got["fingerprint"] != ref["fingerprint"]:
        return "candles"
    if got["pixel_hash"] != ref["pixel_hash"]:
        return "pixels"
    if got["sha256"] != ref["sha256"]:
        return "encoding"
    return None


def _keep(keep: Path, label: str, path: str, layer: str, ref_dir: Path, got_dir: Path, ref: dict, got: dict,
          market: Path, window: int, history: int, command: list[str]) -> Path:
    where = keep / f"{label}-{Path(path).stem}"
    where.mkdir(parents=True, exist_ok=True)
    shutil.copy(ref_dir / "image-cache" / path, where / "reference.png")
    shutil.copy(got_dir / "image-cache" / path, where / "this.png")
    conn = open_market(str(market))
    series = read_series(conn, got["symbol"], got["interval"], list_series(conn)[(got["symbol"], got["interval"])])
    conn.close()
    last = int((series.times == got["end"]).nonzero()[0][0])
    rows = window_rows(last, window, history)
    candles = {"open_time": series.times[rows].tolist(), "ohlcv": series.ohlcv[rows].tolist()}
    (where / "candles.json").write_text(json.dumps(candles) + "\n")
    (where / "what.json").write_text(json.dumps({"layer": layer, "path": path, "reference": ref, "this": got,
                                                 "market": str(market), "command": command}, indent=1) + "\n")
    return where


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--renders", type=int, default=None, help="stop after N renders")
    parser.add_argument("--seconds", type=float, default=600, help="stop after S seconds (default 600)")
    parser.add_argument("--load", type=int, default=os.cpu_count() or 1, help="CPU-burning processes alongside")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", type=Path, default=REPO / "bench" / "work" / "determinism-evidence")
    parser.add_argument("--record", action="store_true", help="write the figure to bench/determinism_soak.json")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    work = Path(tempfile.mkdtemp(prefix="determinism-soak-"))
    stop = multiprocessing.Event()
    burners = [multiprocessing.Process(target=_burn, args=(stop,), daemon=True) for _ in range(args.load)]
    for p in burners:
        p.start()
    references: dict[tuple, Path] = {}
    renders = repairs = compared = 0
    mismatches: list[dict] = []
    began = time.monotonic()
    try:
        while (args.renders is None or renders < args.renders) and time.monotonic() - began < args.seconds:
            market_seed, preset, jobs = rng.randrange(MARKET_SEEDS), rng.choice(PRESETS), rng.choice((1, 2))
            market = _market(work, market_seed)
            folder = Path(tempfile.mkdtemp(dir=work))
            command = ["image_cache.py", "render", *_render_args(market, preset, jobs)]
            result = _cli(folder, str(REPO / "image_cache.py"), *command[1:])
            if result.returncode != 0:
                raise SystemExit(f"render failed ({' '.join(command)}): {result.stderr}")
            renders += 1
            if rng.random() < 0.5:  # a few images deleted and redrawn by repair
                names = sorted(p for p in (folder / "image-cache").rglob("*.png"))
                for victim in rng.sample(names, min(len(names), rng.randint(1, 5))):
                    victim.unlink()
                command = ["image_cache.py", "repair", *_render_args(market, preset, 1)[:6]]
                result = _cli(folder, str(REPO / "image_cache.py"), *command[1:])
                if result.returncode != 0:
                    raise SystemExit(f"repair failed: {result.stderr}")
                repairs += 1
            got = _images(folder)
            key = (market_seed, preset)
            if key not in references:
                references[key] = folder
                continue
            ref = _images(references[key])
            if set(ref) != set(got):
                raise SystemExit(f"{key}: the renders drew different sets of images")
            style, size, window = preset
            label = f"{renders:05d}-m{market_seed}-{style}{size}w{window}-j{jobs}"
            for path in sorted(got):
                compared += 1
                layer = _layer(ref[path], got[path])
                if layer is not None:
                    where = _keep(args.keep, label, path, layer, references[key], folder, ref[path], got[path],
                                  market, window, window - 1 if style == "jkx" else 0, command)
                    mismatches.append({"layer": layer, "path": path, "evidence": str(where)})
                    print(f"MISMATCH ({layer}) {path}: evidence in {where}", file=sys.stderr, flush=True)
            shutil.rmtree(folder)
            if renders % 10 == 0:
                print(f"{renders} renders, {compared:,} images compared, {len(mismatches)} mismatches",
                      file=sys.stderr, flush=True)
    finally:
        stop.set()
        for p in burners:
            p.join()
        shutil.rmtree(work, ignore_errors=True)
    layers = {layer: sum(m["layer"] == layer for m in mismatches)
              for layer in ("candles", "pixels", "encoding", "write")}
    result = {"renders": renders, "repairs": repairs, "images_compared": compared, "mismatches": len(mismatches),
              "by_layer": layers, "load_processes": args.load, "seed": seed,
              "seconds": round(time.monotonic() - began, 1),
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    print(json.dumps(result))
    if args.record:
        (REPO / "bench" / "determinism_soak.json").write_text(json.dumps(result, indent=1) + "\n")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
