"""What every bench section shares: figures, targets, the section they form, and measured subprocesses.

A section is a function `section(ctx: Context) -> Section`; bench/__main__.py lists them in SECTIONS
and writes their figures, tables and targets into bench/RESULTS.md in that order.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work"
MARKET = WORK / "market.sqlite"
PY = sys.executable


@dataclass
class Figure:
    """One row of the main table: a command repeated `len(runs)` times."""

    name: str
    runs: list[float] = field(default_factory=list)  # seconds per repetition
    count: int = 0  # items per repetition (images, candles, files)
    unit: str = "images/s"
    png_bytes: float | None = None
    peak_mb: float | None = None
    note: str = ""
    compare: bool = True  # show "× baseline" (images/s figures only)
    own_seconds: float | None = None  # median seconds the command reports for itself (start-up excluded)

    @property
    def seconds(self) -> float:
        return statistics.median(self.runs)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


@dataclass
class Target:
    name: str
    measured: str
    met: bool
    machine: str = ""  # where the target is meant to be measured, when not here


@dataclass
class Section:
    """Rows for the main table, free-form markdown (own tables), and targets."""

    figures: list[Figure] = field(default_factory=list)
    markdown: list[str] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)


@dataclass
class Context:
    """Run-wide settings and what earlier sections measured (e.g. the baseline, for ratios)."""

    reps: int
    quick: bool
    cores: int
    found: dict[str, Any] = field(default_factory=dict)

    def n(self, base: int) -> int:
        """A count scaled down in quick mode."""
        return max(10, int(base * (0.2 if self.quick else 1.0)))


def fresh(folder: Path) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def run_measured(args: list[str], cwd: Path = REPO) -> tuple[float, float, list[float], str]:
    """Run a command; (seconds, peak RSS in MB summed over the process and its workers, the samples, stdout).

    RSS is sampled every 20 ms (psutil): wait4's maxrss would count the bench's own memory, which a
    forked child carries until it execs. stdout must stay small (a JSON result): it is read at the end.
    """
    import psutil

    began = time.perf_counter()
    process = psutil.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env={**os.environ, "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}"})
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
    out, err = process.communicate()
    if process.returncode != 0:
        raise SystemExit(f"bench: {' '.join(args)} failed:\n{err.decode()}")
    return seconds, max(samples, default=0.0), samples, out.decode()


def json_of(stdout: str) -> Any:
    """A command's output (one JSON document), parsed."""
    return json.loads(stdout)
