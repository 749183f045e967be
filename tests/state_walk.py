"""A model-based walk over the cache's state machine: random sequences of market changes, renders
with random filters, preset and gap-policy switches, verify, repair, file damage and index-row
deletion, with the invariants checked after every step. Driven in-process (the library, not the CLI).

Used by tests/test_state_machine.py (a few hundred sequences in `make test`) and by `make soak`
(`python tests/state_walk.py --sequences 10000`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import chart  # noqa: E402
from cache import runner, verify  # noqa: E402
from cache.market import open_market, read_series  # noqa: E402
from cache.windows import fingerprint, window_rows  # noqa: E402
from config import Settings  # noqa: E402
from core.grid import iso_utc  # noqa: E402
from ingest.schema import CANDLE_DTYPE, connect_writer, series_id, upsert_candles  # noqa: E402

HOUR = 3_600_000
T0 = 1_719_792_000_000  # 2024-07-01T00:00Z
SYMBOLS = ("AAAUSDT", "BBBUSDT")
PRESETS = ({"style_name": "mike", "img_size_px": 32, "window_len": 5},
           {"style_name": "jkx", "img_size_px": 32, "window_len": 5})


class Violation(AssertionError):
    pass


def _candles(rng: random.Random, times: list[int]) -> np.ndarray:
    rows = np.zeros(len(times), dtype=CANDLE_DTYPE)
    price = 100.0
    for i, t in enumerate(times):
        o = price
        c = round(o * (1 + rng.uniform(-0.02, 0.02)), 2)
        rows[i] = (t, o, max(o, c) + 0.5, min(o, c) - 0.5, c, 10.0 + i, 1000.0, 5, 1.0, 100.0)
        price = c
    return rows


class Walk:
    """One sequence: a folder with a market, an index and an image root, and the model's state."""

    def __init__(self, folder: Path, seed: int):
        self.rng = random.Random(seed)
        self.folder = folder
        self.market = str(folder / "market.sqlite")
        self.preset = self.rng.choice(PRESETS)
        self.gap_policy = "skip"
        self.damaged: set[str] = set()  # files the walk damaged that no verify/repair has seen yet
        self.log: list[str] = []
        conn = connect_writer(self.market)
        with conn:
            for symbol in SYMBOLS:
                sid = series_id(conn, symbol, "1h")
                n = self.rng.randint(12, 30)
                # Some series jump over whole buckets of change tracking (2**31 ms, ~597 h): stamps of
                # empty buckets and of windows that reach back across a gap.
                jump = self.rng.choice((0, 0, 700, 2000))
                upsert_candles(conn, sid, _candles(self.rng, [T0 + (k + jump * (k > n // 2)) * HOUR
                                                              for k in range(n)]))
        conn.close()

    def settings(self, **extra) -> Settings:
        values = dict(market_db_path=self.market, image_index_db=str(self.folder / "image_cache.sqlite"),
                      image_root_dir=str(self.folder / "image-cache"), pairs=SYMBOLS, intervals=("1h",),
                      start="2024-06-01", jobs=1, gap_policy=self.gap_policy, **self.preset)
        return Settings(**{**values, **extra})

    # ------------------------------------------------------------------ market changes

    def _market(self, sql: str, args: tuple) -> None:
        with sqlite3.connect(self.market) as conn:
            conn.execute(sql, args)
        conn.close()

    def _times(self, symbol: str) -> list[int]:
        with sqlite3.connect(self.market) as conn:
            rows = conn.execute("SELECT open_time FROM candles c JOIN series se ON se.id = c.series_id JOIN symbols s "
                                "ON s.id = se.symbol_id WHERE s.symbol = ? ORDER BY 1", (symbol,)).fetchall()
        conn.close()
        return [r[0] for r in rows]

    _SID = "(SELECT se.id FROM series se JOIN symbols s ON s.id = se.symbol_id WHERE s.symbol = ?)"

    def correct(self) -> str:
        symbol = self.rng.choice(SYMBOLS)
        t = self.rng.choice(self._times(symbol))
        self._market(f"UPDATE candles SET close = round((high + low) / 2 + 0.01, 2), volume = volume + 1 "
                     f"WHERE series_id = {self._SID} AND open_time = ?", (symbol, t))
        return f"correct {symbol} {iso_utc(t)}"

    def append(self) -> str:
        symbol = self.rng.choice(SYMBOLS)
        t = max(self._times(symbol)) + HOUR * self.rng.choice((1, 1, 1, 3, 650))
        self._market(f"INSERT INTO candles SELECT {self._SID}, ?, 100, 101, 99, 100.5, 7, 1, 1, 1, 1", (symbol, t))
        return f"append {symbol} {iso_utc(t)}"

    def remove(self) -> str:
        symbol = self.rng.choice(SYMBOLS)
        t = self.rng.choice(self._times(symbol))
        self._market(f"DELETE FROM candles WHERE series_id = {self._SID} AND open_time = ?", (symbol, t))
        return f"remove {symbol} {iso_utc(t)}"

    def flatten(self) -> str:
        """A run of candles where nothing traded: jkx cannot draw windows with no price range."""
        symbol = self.rng.choice(SYMBOLS)
        times = self._times(symbol)
        start = self.rng.randrange(len(times))
        span = times[start:start + self.rng.randint(4, 12)]
        for t in span:
            self._market(f"UPDATE candles SET open = 50, high = 50, low = 50, close = 50 "
                         f"WHERE series_id = {self._SID} AND open_time = ?", (symbol, t))
        return f"flatten {symbol} {len(span)} candles from {iso_utc(times[start])}"

    # ------------------------------------------------------------------ commands

    def render(self) -> str:
        rng = self.rng
        extra, filters = {}, runner.Filters()
        if rng.random() < 0.5:  # the nightly run: the same plain render again and again (bucket stamps)
            return self._render(extra, filters, None)
        if rng.random() < 0.3:
            extra["start"] = iso_utc(T0 + rng.randint(0, 30) * HOUR)[:16]
        if rng.random() < 0.3:
            extra["end"] = iso_utc(T0 + rng.randint(31, 60) * HOUR)[:16]
        if rng.random() < 0.3:
            extra["stride"] = rng.choice((2, 3, 5))
        if rng.random() < 0.3:
            filters.symbols = [rng.choice(SYMBOLS)]
        if rng.random() < 0.2:
            filters.intervals = ["1h"]
        return self._render(extra, filters, rng.choice((None, None, None, 0, 3, 10)))

    def _render(self, extra: dict, filters: runner.Filters, limit: int | None) -> str:
        result = runner.render(self.settings(**extra), filters, limit=limit)
        if result.error:
            raise Violation(f"render failed: {result.error}")
        full = not extra and not filters.symbols and limit is None
        if full:
            self._check_full_render()
            self._check_counts()
        # Whatever its filters, a render judges every row of its series from its start on: none may
        # stay ok once its candles changed (skipped buckets included).
        settings = self.settings(**extra)
        self._check_ok_rows_fresh(self.preset, filters.symbols, settings.start_ms)
        return f"render {extra} {filters.__dict__} limit={limit}: drawn {result.drawn}"

    def switch(self) -> str:
        if self.rng.random() < 0.5:
            self.preset = self.rng.choice(PRESETS)
            return f"preset {self.preset['style_name']}"
        self.gap_policy = "render" if self.gap_policy == "skip" else "skip"
        return f"gap policy {self.gap_policy}"

    def verify(self) -> str:
        deep = self.rng.random() < 0.5
        first = verify.verify(self.settings(), deep=deep).as_dict()
        second = verify.verify(self.settings(), deep=deep).as_dict()
        first.pop("seconds"), second.pop("seconds")
        if first != second:
            raise Violation(f"two verifies differ:\n{json.dumps(first, sort_keys=True)}\n"
                            f"{json.dumps(second, sort_keys=True)}")
        if deep:
            self.damaged.clear()
        else:  # fast mode sees changed sizes only; a flipped byte waits for a deep verify
            self.damaged = {p for p in self.damaged if (self.root / p).exists()
                            and (self.root / p).stat().st_size == self._row_size(p)}
        return f"verify deep={deep}: {first['counts']}"

    def repair(self) -> str:
        result = verify.repair(self.settings())
        if not result.ok:
            raise Violation(f"repair left unrepairable: {result.unrepairable}")
        self.damaged.clear()
        after = verify.verify(self.settings(), deep=True)
        if not after.ok:
            raise Violation(f"verify --deep after repair: {[p.__dict__ for p in after.problems]}")
        self._check_ok_rows_fresh()
        return f"repair: {result.as_dict()['found']}"

    def damage(self) -> str:
        paths = [p for p in self._ok_paths() if (self.root / p).is_file()]
        if not paths:
            return "damage: nothing to damage"
        path = self.rng.choice(paths)
        full = self.root / path
        how = self.rng.choice(("delete", "truncate", "flip"))
        if how == "delete":
            full.unlink()
        elif how == "truncate":
            full.write_bytes(full.read_bytes()[:40])
        else:
            data = bytearray(full.read_bytes())
            data[len(data) // 2] ^= 0x10
            full.write_bytes(bytes(data))
        self.damaged.add(path)
        return f"damage {how} {path}"

    def delete_row(self) -> str:
        with self._index() as conn:
            row = conn.execute("SELECT id, file_path FROM images ORDER BY random() LIMIT 1").fetchone()
            if row:
                conn.execute("DELETE FROM images WHERE id = ?", (row[0],))
        conn.close()
        self.damaged.discard(row[1] if row else "")
        return f"delete row {row[1] if row else None}"

    STEPS = (("correct", 3), ("append", 2), ("remove", 1), ("flatten", 1), ("render", 5), ("switch", 1),
             ("verify", 2), ("repair", 2), ("damage", 2), ("delete_row", 1))

    def step(self) -> str:
        name = self.rng.choices([s for s, _ in self.STEPS], [w for _, w in self.STEPS])[0]
        if not (self.folder / "image_cache.sqlite").exists() and name in ("verify", "repair", "damage", "delete_row"):
            name = "render"
        return getattr(self, name)()

    # ------------------------------------------------------------------ invariants

    @property
    def root(self) -> Path:
        return self.folder / "image-cache"

    def _index(self) -> sqlite3.Connection:
        return sqlite3.connect(self.folder / "image_cache.sqlite")

    def _ok_paths(self) -> list[str]:
        with self._index() as conn:
            paths = [r[0] for r in conn.execute("SELECT file_path FROM images WHERE status = 'ok' ORDER BY 1")]
        conn.close()
        return paths

    def _row_size(self, path: str) -> int | None:
        with self._index() as conn:
            row = conn.execute("SELECT file_size FROM images WHERE file_path = ?", (path,)).fetchone()
        conn.close()
        return row[0] if row else None

    def check(self) -> None:
        """No `ok` row whose file is missing or differs from its SHA-256 (but for damage not yet seen)."""
        if not (self.folder / "image_cache.sqlite").exists():
            return
        with self._index() as conn:
            rows = conn.execute("SELECT file_path, sha256 FROM images WHERE status = 'ok'").fetchall()
        conn.close()
        for path, sha in rows:
            if path in self.damaged:
                continue
            full = self.root / path
            if not full.is_file():
                raise Violation(f"ok row, file missing: {path}")
            if hashlib.sha256(full.read_bytes()).hexdigest() != sha:
                raise Violation(f"ok row, file differs from its SHA-256: {path}")

    def _check_full_render(self) -> None:
        """A full render leaves no stale row of its preset, and a row for every window of every series."""
        with self._index() as conn:
            stale = conn.execute("SELECT file_path, reason FROM images WHERE status = 'stale' AND style_name = ?",
                                 (self.preset["style_name"],)).fetchall()
            ends = {symbol: {r[0] for r in conn.execute(
                "SELECT end_open_time_ms FROM images WHERE style_name = ? AND symbol = ?",
                (self.preset["style_name"], symbol))} for symbol in SYMBOLS}
        conn.close()
        if stale:
            raise Violation(f"stale rows after a full render: {stale[:3]}")
        for symbol in SYMBOLS:
            times = self._times(symbol)
            # Every window has a row; rows of candles with too few before them record 'history'.
            unindexed = set(times[self.preset["window_len"] - 1:]) - ends[symbol]
            gone = ends[symbol] - set(times)
            if unindexed or gone:
                raise Violation(f"{symbol} after a full render: windows without a row at "
                                f"{sorted(map(iso_utc, unindexed))[:3]}, rows of no candle at {sorted(map(iso_utc, gone))[:3]}")

    def _check_counts(self) -> None:
        """Right after a full render, a dry run counts every row of the preset (most from stamps)."""
        plan = runner.render(self.settings(), dry_run=True)
        with self._index() as conn:
            ok, engine = conn.execute("SELECT count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE "
                                      "reason LIKE 'engine: %') FROM images WHERE style_name = ?",
                                      (self.preset["style_name"],)).fetchone()
        conn.close()
        if (plan.drawn, plan.up_to_date, plan.undrawable) != (0, ok, engine):
            raise Violation(f"dry run after a full render: drawn {plan.drawn}, up to date {plan.up_to_date}, "
                            f"undrawable {plan.undrawable}; the index holds {ok} ok and {engine} engine refusals")

    def _check_ok_rows_fresh(self, preset: dict | None = None, symbols: list[str] | None = None,
                             from_ms: int | None = None) -> None:
        """Every ok row's fingerprint equals its candles' and its bytes equal a fresh render (with `preset`:
        that preset's rows of `symbols` ending at `from_ms` or later, but for files damaged since the
        last verify)."""
        conn = open_market(self.market)
        series = {s: read_series(conn, s, "1h", sid) for (s, _), sid in
                  __import__("cache.market", fromlist=["list_series"]).list_series(conn).items()}
        conn.close()
        with self._index() as index:
            rows = index.execute("SELECT symbol, end_open_time_ms, style_name, img_size_px, window_len, "
                                 "style_version, input_fingerprint, sha256, file_path FROM images "
                                 "WHERE status = 'ok'").fetchall()
        index.close()
        for symbol, end, style, size, window, version, fp, sha, path in rows:
            if preset is not None and (style != preset["style_name"] or path in self.damaged
                                       or (symbols and symbol not in symbols) or end < (from_ms or 0)):
                continue
            spec = chart.make_spec(style, size, window, version, jkx_height=size)
            s = series[symbol]
            pos = int(np.searchsorted(s.times, end))
            if pos >= len(s.times) or s.times[pos] != end:
                raise Violation(f"ok row for a window not in the market: {path}")
            rows_ = window_rows(pos, spec.window_len, spec.history)
            if fingerprint(s, rows_) != fp:
                raise Violation(f"ok row with an old fingerprint after repair: {path}")
            fresh = chart.render(spec, s.times[rows_], s.ohlcv[rows_]).png
            if hashlib.sha256(fresh).hexdigest() != sha or (self.root / path).read_bytes() != fresh:
                raise Violation(f"ok row whose bytes differ from a fresh render: {path}")


def run_sequence(seed: int, steps: int, folder: Path) -> list[str]:
    """Run one sequence; raises Violation (with the steps so far) when an invariant breaks."""
    walk = Walk(folder, seed)
    for _ in range(steps):
        try:
            walk.log.append(walk.step())
            walk.check()
        except Exception as exc:  # an invariant broken, or a command failing where it must not
            detail = str(exc) if isinstance(exc, Violation) else "".join(traceback.format_exception(exc))
            raise Violation(f"seed {seed}, after steps:\n  " + "\n  ".join(walk.log) + f"\n{detail}") from None
    return walk.log


def run_many(first_seed: int, count: int, steps: int) -> tuple[int, list[str]]:
    violations = []
    for seed in range(first_seed, first_seed + count):
        # On tmpfs where there is one: the walk measures states, not the disk's flushes.
        folder = Path(tempfile.mkdtemp(prefix="walk-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        try:
            run_sequence(seed, steps, folder)
        except Violation as exc:
            violations.append(str(exc))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return count, violations


def _block(args: tuple[int, int, int]) -> tuple[int, list[str]]:
    return run_many(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak: random sequences over the cache's state machine")
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--record", action="store_true", help="write the figure to bench/soak.json")
    args = parser.parse_args()
    began = time.monotonic()
    block = 50
    blocks = [(seed, min(block, args.seed + args.sequences - seed), args.steps)
              for seed in range(args.seed, args.seed + args.sequences, block)]
    count, violations = 0, []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for done, (n, found) in enumerate(pool.map(_block, blocks), 1):
            count += n
            violations += found
            for text in found:
                print(text, file=sys.stderr, flush=True)
            print(f"{count} sequences, {len(violations)} violations", file=sys.stderr, flush=True)
    result = {"sequences": count, "steps_per_sequence": args.steps, "violations": len(violations),
              "seconds": round(time.monotonic() - began, 1), "workers": args.workers,
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    print(json.dumps(result))
    if args.record:  # make soak: the figure bench/RESULTS.md shows
        (Path(__file__).resolve().parents[1] / "bench" / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
