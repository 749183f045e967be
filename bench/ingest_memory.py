"""Peak memory of ingest against the 300 MB target: `.venv/bin/python -m bench.ingest_memory`.

Cases: a 1 GB generic CSV (`python -m ingest csv`) in time order and newest first, a zip whose member
is the largest parsed whole (realistic rows, and the shortest valid rows: the most rows, so the most
memory, that size admits), a folder mixing such a member with members parsed ahead, and a monthly 1s
archive (a whole month of candles, ~400 MB uncompressed, streamed). `--cases` picks some. Each runs as a real
`python -m ingest` process; its peak RSS is the kernel's own high-water mark (wait4's ru_maxrss),
read by a small intermediate process that forks before exec: a child spawned straight from this
process would inherit this process's high-water mark. Each run is capped at MEMORY_LIMIT of address
space, so that a run far over target fails instead of exhausting a shared machine. Not a test:
figures are reported, never asserted (shared machines are noisy; memory figures less so than times).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work" / "ingest_memory"
TARGET_MB = 300
MEMORY_LIMIT = 4 * 2**30

# Forks, caps the child's address space, execs `python -m ingest ARGS`, reports the child's peak RSS.
RUNNER = """
import os, resource, sys
limit = int(sys.argv[1])
pid = os.fork()
if pid == 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    os.execv(sys.executable, [sys.executable, "-m", "ingest", *sys.argv[2:]])
_, status, usage = os.wait4(pid, 0)
print(f"peak_kb={usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss(args: list[str], cwd: Path, limit: int = MEMORY_LIMIT) -> tuple[int, float, float, str]:
    """(exit code, peak RSS in MB, seconds, output without the peak line) of `python -m ingest ARGS`."""
    began = time.perf_counter()
    run = subprocess.run([sys.executable, "-c", RUNNER, str(limit), *args], cwd=cwd, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
    seconds = time.perf_counter() - began
    lines = run.stderr.splitlines()
    peak = next((int(line.removeprefix("peak_kb=")) / 1024 for line in lines if line.startswith("peak_kb=")), 0.0)
    output = [line for line in (run.stdout + run.stderr).splitlines() if not line.startswith("peak_kb=")]
    return run.returncode, peak, seconds, "\n".join(output)


def fixed_width_rows(template: bytes, times: np.ndarray, digits: int, offsets: tuple[int, ...]) -> bytes:
    """Rows of `template` with the `digits`-digit integer `times` (+ offset) written at each offset.

    Vectorised: a GB of distinct rows in seconds.
    """
    out = np.frombuffer(template, dtype=np.uint8)[None, :].repeat(len(times), axis=0)
    powers = 10 ** np.arange(digits - 1, -1, -1, dtype=np.int64)
    for where, add in offsets:
        out[:, where:where + digits] = (((times + add)[:, None] // powers) % 10 + ord("0")).astype(np.uint8)
    return out.tobytes()


def write_csv(path: Path, size: int, descending: bool = False) -> int:
    """A generic OHLCV CSV of about `size` bytes: consecutive 1m candles from 2010-01-01, newest first
    when `descending` (as some exports write them). Returns rows."""
    template = b"0000000000000,100.50,101.50,99.50,100.75,12.5\n"
    rows = size // len(template)
    start = 1262304000000  # 2010-01-01: 13-digit ms times for the next 276 years
    with open(path, "wb") as f:
        f.write(b"open_time,open,high,low,close,volume\n")
        for first in range(0, rows, 2**20):
            index = np.arange(first, min(rows, first + 2**20), dtype=np.int64)
            f.write(fixed_width_rows(template, start + 60_000 * (rows - 1 - index if descending else index), 13,
                                     ((0, 0),)))
    return rows


def write_kline_zip(folder: Path, name: str, size: int, *, short: bool) -> int:
    """A monthly 1s kline zip (January 2024, ms times) whose member is about `size` bytes, at most a whole
    month of rows. Returns rows."""
    if short:  # the shortest valid kline row: most rows per byte
        template = b"0000000000000,1,1,1,1,0,0000000000000,0,0,0,0,0\n"
        offsets = ((0, 0), (24, 999))
    else:
        template = (b"0000000000000,42000.12000000,42001.50000000,41999.01000000,42000.50000000,1.23456000,"
                    b"0000000000000,51851.61728000,12,0.61728000,25925.80864000,0\n")
        offsets = ((0, 0), (template.index(b",0000000000000,") + 1, 999))
    rows = min(size // len(template), 31 * 86400)
    start = 1704067200000
    with zipfile.ZipFile(folder / name, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open(name.removesuffix(".zip") + ".csv", "w") as member:
        for first in range(0, rows, 2**18):
            times = start + 1000 * np.arange(first, min(rows, first + 2**18), dtype=np.int64)
            member.write(fixed_width_rows(template, times, 13, offsets))
    return rows


def fresh(name: str) -> Path:
    folder = WORK / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


CASES = ("csv", "zip", "folder", "monthly")


def measure(csv_mb: int = 1024, cases: tuple[str, ...] = CASES) -> list[dict]:
    """One row per case: input, peak RSS, seconds, whether it met the target, and how it ended."""
    from image_cache.ingest.binance_vision import AHEAD_BYTES, WHOLE_MEMBER_BYTES

    WORK.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def case(name: str, size_mb: float, args: list[str]) -> None:
        db = fresh(f"db-{len(rows)}") / "market.sqlite"
        rc, peak, seconds, output = peak_rss([args[0], "--market-db", str(db), *args[1:]], WORK)
        last = output.splitlines()[-1] if output else ""
        ended = "ok" if rc == 0 else (f"failed (exit {rc}) under the {MEMORY_LIMIT >> 30} GB address-space cap: "
                                      f"{last[:120]}")
        rows.append({"case": name, "input_mb": round(size_mb, 1), "peak_mb": round(peak), "seconds": round(seconds, 1),
                     "met": rc == 0 and peak < TARGET_MB, "ended": ended})
        shutil.rmtree(db.parent, ignore_errors=True)

    for descending in (False, True) if "csv" in cases else ():
        folder = fresh("csv")
        count = write_csv(folder / "big.csv", csv_mb * 2**20, descending)
        order = ", newest first: sorted through a staging table" if descending else ""
        case(f"csv: {csv_mb} MB generic CSV ({count:,} 1m candles{order})", csv_mb,
             ["csv", str(folder / "big.csv"), "--symbol", "BTCUSDT", "--interval", "1m"])
        shutil.rmtree(folder)

    whole_mb = WHOLE_MEMBER_BYTES / 2**20
    for short in (False, True) if "zip" in cases else ():
        folder = fresh("zip")
        count = write_kline_zip(folder, "BTCUSDT-1s-2024-01.zip", WHOLE_MEMBER_BYTES, short=short)
        kind = "shortest valid rows" if short else "realistic rows"
        case(f"zip: member of {whole_mb:.0f} MiB, the largest parsed whole, {kind} ({count:,} candles)", whole_mb,
             ["binance-vision", str(folder)])

    if "folder" in cases:
        folder = fresh("folder")
        write_kline_zip(folder, "BTCUSDT-1s-2024-01.zip", WHOLE_MEMBER_BYTES, short=True)
        small = AHEAD_BYTES // 2
        for symbol in ("ETHUSDT", "SOLUSDT", "XRPUSDT", "ADAUSDT"):
            write_kline_zip(folder, f"{symbol}-1s-2024-01.zip", small, short=True)
        case(f"folder: one member of {whole_mb:.0f} MiB + 4 of {small / 2**20:.0f} MiB parsed ahead (shortest rows)",
             whole_mb + 4 * small / 2**20, ["binance-vision", str(folder)])

    if "monthly" in cases:
        folder = fresh("monthly")
        count = write_kline_zip(folder, "BTCUSDT-1s-2024-01.zip", 2**30, short=False)
        with zipfile.ZipFile(folder / "BTCUSDT-1s-2024-01.zip") as archive:
            member_mb = archive.infolist()[0].file_size / 2**20
        case(f"zip: monthly 1s archive, realistic rows, streamed ({count:,} candles)", member_mb,
             ["binance-vision", str(folder)])
    shutil.rmtree(WORK, ignore_errors=True)
    return rows


def report(rows: list[dict]) -> str:
    lines = [f"Ingest peak memory (target < {TARGET_MB} MB), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
             f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; peak RSS by wait4; "
             "the machine is shared: times are noisy, memory much less so.", "",
             "| case | input MB | peak MB | s | < 300 MB | ended |", "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['input_mb']:,} | {r['peak_mb']:,} | {r['seconds']} | "
                     f"{'yes' if r['met'] else '**no**'} | {r['ended']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--csv-mb", type=int, default=1024, help="size of the generic CSV (default: %(default)s)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: %(default)s")
    args = parser.parse_args()
    cases = tuple(args.cases.split(","))
    if unknown := set(cases) - set(CASES):
        parser.error(f"unknown cases: {', '.join(sorted(unknown))}")
    print(report(measure(args.csv_mb, cases)))


if __name__ == "__main__":
    main()
