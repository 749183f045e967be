"""Where a render's time goes, stage by stage: `.venv/bin/python -m bench.pipeline_stages MARKET --json`.

One render with `--jobs 1` (everything in this process) per preset into a new folder, with the library
functions of each stage wrapped in timers; milliseconds per image drawn:

- plan: read the market, reconcile with the index, stamps (runner.plan)
- draw: chart.render inside the pipeline (draw, encode, pixel hash: the engine's own stages are in
  bench/chart_speed.py)
- row: the image's path and index row, its input fingerprint and SHA-256 (work.base_rows,
  windows.fingerprint, work._ok_row)
- index: the upserts of the index rows (index.upsert_rows)
- other: the rest of the render's own seconds (startup of the run, chunking, the queue's hand-offs)
- write and flush run on threads of their own (the files thread, the syncfs thread): their time
  overlaps the stages above on a second core and is not part of the total.

Not a test: a measurement for bench/RESULTS.md. The wrappers cost about 1 µs a call.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

INLINE = ("plan", "draw", "row", "index")
THREADED = ("write", "flush")


def _timed(owner: Any, name: str, stage: str, spent: dict[str, float]) -> None:
    real = getattr(owner, name)

    @functools.wraps(real)
    def timed(*args: Any, **kwargs: Any) -> Any:
        began = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent[stage] += time.perf_counter() - began

    setattr(owner, name, timed)


def install() -> dict[str, float]:
    """Wrap each stage's functions once in this process; the seconds they spend add up in the result."""
    from image_cache import chart
    from image_cache.cache import durable, index, root, runner, work

    spent = dict.fromkeys(INLINE + THREADED, 0.0)
    for owner, name, stage in [(runner, "plan", "plan"), (chart, "render", "draw"), (work, "base_rows", "row"),
                               (work, "fingerprint", "row"), (work, "_ok_row", "row"),
                               (index, "upsert_rows", "index"), (root.Tree, "write_many", "write"),
                               (durable, "sync_tree", "flush")]:
        _timed(owner, name, stage, spent)
    return spent


def measure(spent: dict[str, float], market: str, folder: Path, flags: list[str], count: int) -> dict[str, float]:
    """Stage ms per image of one render of `count` images (15m windows of BTCUSDT and ETHUSDT), with the
    render's own flags (e.g. --size 224 --window 60)."""
    from image_cache.cache import runner
    from image_cache.cli import settings as config

    parser = argparse.ArgumentParser()
    config.add_arguments(parser)
    settings = config.from_args(parser.parse_args([
        "--market-db", market, "--index-db", str(folder / "index.sqlite"), "--image-root", str(folder / "img"),
        "--symbols", "BTCUSDT,ETHUSDT", "--intervals", "15m", "--start", "2024-05-01", "--jobs", "1", *flags]))
    spent.update(dict.fromkeys(spent, 0.0))
    result = runner.render(settings, limit=count)
    assert result.ok and result.drawn == count, result.error
    ms = {stage: seconds * 1000 / count for stage, seconds in spent.items()}
    ms["total"] = result.seconds * 1000 / count
    ms["other"] = ms["total"] - sum(ms[s] for s in INLINE)
    return ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("market")
    parser.add_argument("folder", type=Path, help="a new folder for the renders")
    parser.add_argument("--preset", action="append", nargs=3, metavar=("LABEL", "FLAGS", "COUNT"), required=True,
                        help="label, the render's flags in one argument (e.g. '--size 224 --window 60'), images")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out, spent = {}, install()
    for k, (label, flags, count) in enumerate(args.preset):
        folder = args.folder / f"{os.getpid()}-{k}"
        folder.mkdir(parents=True)
        out[label] = measure(spent, args.market, folder, flags.split(), int(count))
    if args.json:
        print(json.dumps(out))
    else:
        for label, ms in out.items():
            print(label, " ".join(f"{stage} {value:.3f}" for stage, value in ms.items()))


if __name__ == "__main__":
    main()
