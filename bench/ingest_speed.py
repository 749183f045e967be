"""Ingest rates and peak memory: `.venv/bin/python -m bench.ingest_speed`.

Three figures, each ingest in its own subprocess (so that its peak RSS is its own):
- archive ingest: 12 monthly Binance Vision zips of 1m candles (a year, 525,600 candles), candles per
  second of wall time and per CPU second (all threads; the target is >= 300,000 on one core);
- REST ingest: `ingest api` against the fake Binance server of the tests on 127.0.0.1 (1m candles,
  paged 1000 at a time), candles per second of wall time;
- a large CSV (`--csv-mb`, 159 MB by default): rate and peak RSS (the target is < 300 MB).
Not a test: machines are shared and timings noisy, so report them with the machine they ran on.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable

# Runs one ingest call given as Python source and prints wall s, CPU s and peak RSS (KB) as JSON.
_MEASURE = """
import json, sys, time
sys.path[:0] = {paths!r}
{setup}
wall, cpu = time.perf_counter(), time.process_time()
result = {call}
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
assert result.ok, result.text()
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across exec.
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"wall": wall, "cpu": cpu, "peak_kb": peak, "rows": result.totals()["rows_inserted"]}}))
"""


def _measure(setup: str, call: str) -> dict[str, Any]:
    code = _MEASURE.format(paths=[str(REPO / "src"), str(REPO), str(REPO / "tests")], setup=setup, call=call)
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _candles(days: int) -> np.ndarray:
    from image_cache.core.grid import utc_ms
    from image_cache.ingest.sample import generate_symbol
    return generate_symbol("BTCUSDT", days=days, seed=3, end_ms=utc_ms("2024-01-01"), gaps=[])


def _kline_lines(part: np.ndarray) -> list[str]:
    close = part["open_time"] + 59_999
    return [f"{t},{o:.8f},{h:.8f},{lo:.8f},{c:.8f},{v:.8f},{ct},{q:.8f},{n},{tb:.8f},{tq:.8f},0"
            for t, o, h, lo, c, v, ct, q, n, tb, tq in zip(
                part["open_time"], part["open"], part["high"], part["low"], part["close"], part["volume"], close,
                part["quote_asset_volume"], part["trades"], part["taker_buy_base_volume"],
                part["taker_buy_quote_volume"], strict=True)]


def write_zips(folder: Path) -> int:
    """12 monthly 1m archives with their .CHECKSUM files; the number of candles."""
    candles = _candles(366)
    months = candles["open_time"].astype("datetime64[ms]").astype("datetime64[M]")
    total = 0
    for month in np.unique(months)[-12:]:
        part = candles[months == month]
        stem = f"BTCUSDT-1m-{month}"
        with zipfile.ZipFile(folder / f"{stem}.zip", "w", zipfile.ZIP_DEFLATED) as archive:
            archive.writestr(f"{stem}.csv", "\n".join(_kline_lines(part)) + "\n")
        digest = hashlib.sha256((folder / f"{stem}.zip").read_bytes()).hexdigest()
        (folder / f"{stem}.zip.CHECKSUM").write_text(f"{digest}  {stem}.zip")
        total += len(part)
    return total


def write_csv(path: Path, megabytes: int) -> int:
    """A pandas-style CSV of 1m candles of about `megabytes`; the number of rows."""
    import pandas as pd
    candles = _candles(max(megabytes * 1_000_000 // (1440 * 150), 2))
    frame = pd.DataFrame({name: candles[name] for name in candles.dtype.names})
    frame.index = pd.to_datetime(frame.pop("open_time"), unit="ms")
    frame.index.name = None
    frame.to_csv(path, float_format="%.8f")
    return len(frame)


def archive_row(work: Path) -> dict[str, Any]:
    zips = work / "zips"
    zips.mkdir()
    count = write_zips(zips)
    m = _measure("from image_cache.ingest.binance_vision import ingest_paths",
                 f"ingest_paths({str(work / 'a.sqlite')!r}, [{str(zips)!r}])")
    assert m["rows"] == count
    return {"figure": f"archive ingest, 12 monthly 1m zips ({count:,} candles)",
            "candles_per_s": round(count / m["wall"]), "candles_per_cpu_s": round(count / m["cpu"]),
            "peak_mb": round(m["peak_kb"] / 1024), "target": ">= 300,000 candles/s on one core"}


def rest_row(work: Path, count: int) -> dict[str, Any]:
    setup = f"""
from fake_binance import FakeBinance
from image_cache.ingest.rest import api
fake = FakeBinance()
fake.add_series("spot", "BTCUSDT", "1m", 1704067200000, {count})
"""
    call = (f"api({str(work / 'r.sqlite')!r}, symbols=['BTCUSDT'], intervals=['1m'], start='2024-01-01', "
            f"api_url=fake.url, now=1704067200000 + {count} * 60000)")
    m = _measure(setup, call)
    assert m["rows"] == count
    return {"figure": f"REST ingest, fake server on 127.0.0.1 ({count:,} 1m candles, 1000 per request)",
            "candles_per_s": round(count / m["wall"]), "candles_per_cpu_s": round(count / m["cpu"]),
            "peak_mb": round(m["peak_kb"] / 1024), "target": "(server and client share the machine)"}


def csv_row(work: Path, megabytes: int) -> dict[str, Any]:
    path = work / "big.csv"
    count = write_csv(path, megabytes)
    size = path.stat().st_size / 1e6
    m = _measure("from image_cache.ingest.csv_source import ingest_csv",
                 f"ingest_csv({str(work / 'c.sqlite')!r}, {str(path)!r}, symbol='BTCUSDT', interval='1m')")
    assert m["rows"] == count
    return {"figure": f"CSV ingest, {size:.0f} MB pandas CSV ({count:,} candles)",
            "candles_per_s": round(count / m["wall"]), "candles_per_cpu_s": round(count / m["cpu"]),
            "peak_mb": round(m["peak_kb"] / 1024), "target": "peak < 300 MB"}


def rows(csv_mb: int = 159, rest_candles: int = 200_000) -> list[dict[str, Any]]:
    """One row per figure: name, candles/s (wall and CPU), peak RSS in MB, target."""
    with tempfile.TemporaryDirectory(prefix="ingest-bench-") as tmp:
        work = Path(tmp)
        return [archive_row(work), rest_row(work, rest_candles), csv_row(work, csv_mb)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv-mb", type=int, default=159, help="size of the large CSV (default: %(default)s)")
    parser.add_argument("--rest-candles", type=int, default=200_000, help="candles served over REST")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {os.uname().machine}, load {os.getloadavg()[0]:.1f}")
    print(f"{'figure':<66} {'candles/s':>10} {'/CPU s':>10} {'peak MB':>8}  target")
    for row in rows(args.csv_mb, args.rest_candles):
        print(f"{row['figure']:<66} {row['candles_per_s']:>10,} {row['candles_per_cpu_s']:>10,} "
              f"{row['peak_mb']:>8}  {row['target']}")


if __name__ == "__main__":
    main()
