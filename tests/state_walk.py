"""A model-based walk over the cache's state machine: random sequences of market changes, renders
with random filters, preset and gap-policy switches, verify, repair, file damage and index-row
deletion, with the invariants checked after every step. Driven in-process (the library, not the CLI).

Used by tests/test_state_machine.py (a few hundred sequences in `make test`) and by `make soak`
(`python tests/state_walk.py --sequences 10000`).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from image_cache import chart  # noqa: E402
from image_cache.cache import runner, verify  # noqa: E402
from image_cache.cache.market import Filters, open_market, read_series  # noqa: E402
from image_cache.cache.windows import fingerprint, window_rows  # noqa: E402
from image_cache.core.db import lock_is_held  # noqa: E402
from image_cache.core.errors import ImageCacheError  # noqa: E402
from image_cache.core.grid import iso_utc  # noqa: E402
from image_cache.ingest.schema import CANDLE_DTYPE, connect_writer, series_id, upsert_candles  # noqa: E402
from image_cache.ingest.venues import BINANCE_SPOT  # noqa: E402
from image_cache.settings import Settings  # noqa: E402

HOUR = 3_600_000
T0 = 1_719_792_000_000  # 2024-07-01T00:00Z
SYMBOLS = ("AAAUSDT", "BBBUSDT")
PRESETS = ({"style_name": "mike", "img_size_px": 32, "window_len": 5},
           {"style_name": "jkx", "img_size_px": 32, "window_len": 5})


REPO = Path(__file__).resolve().parents[1]
# What a signalled render may exit with: done before the signal, stopped by it (128 + its number), or
# ended by it before Python ran any of our code (minus its number: nothing was held yet).
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
STOPPED = {0} | {128 + s for s in SIGNALS} | {-s for s in SIGNALS}


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

    def __init__(self, folder: Path, seed: int, signals: bool = False):
        self.rng = random.Random(seed)
        self.folder = folder
        self.market = str(folder / "market.sqlite")
        self.preset = self.rng.choice(PRESETS)
        self.gap_policy = "skip"
        self.damaged: set[str] = set()  # files the walk damaged that no verify/repair has seen yet
        # Things that are not ours, planted at image paths (relative path -> 'link', 'folder' or 'fifo'):
        # every command must leave them exactly as they are, and judge them once.
        self.planted: dict[str, str] = {}
        # Files outside the root that planted links point at: never changed, whatever the walk does.
        self.outside = folder / "outside"
        self.outside.mkdir()
        self.victims = {}
        for name in ("victim.png", "victim.lock", "marker-copy"):
            (self.outside / name).write_bytes(f"not image_cache's: {name}\n".encode())
            self.victims[name] = (self.outside / name).read_bytes()
        self.signals = signals
        self.log: list[str] = []
        conn = connect_writer(self.market)
        with conn:
            for symbol in SYMBOLS:
                sid = series_id(conn, symbol, "1h", BINANCE_SPOT)
                n = self.rng.randint(12, 30)
                # Some series jump over whole buckets of change tracking (2**31 ms, ~597 h): stamps of
                # empty buckets and of windows that reach back across a gap.
                jump = self.rng.choice((0, 0, 700, 2000))
                upsert_candles(conn, sid, _candles(self.rng, [T0 + (k + jump * (k > n // 2)) * HOUR
                                                              for k in range(n)]))
        conn.close()

    @property
    def index_path(self) -> Path:
        return self.folder / "image_cache.sqlite"

    def settings(self, **extra) -> Settings:
        values = dict(market_db_path=self.market, image_index_db=str(self.index_path),
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
        extra, filters = {}, Filters()
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

    def _render(self, extra: dict, filters: Filters, limit: int | None) -> str:
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
            self.damaged = {p for p in self.damaged
                            if os.path.isfile(self.root / p) and not os.path.islink(self.root / p)
                            and (self.root / p).stat().st_size == self._row_size(p)}
        self._check_planted_judged(first)
        return f"verify deep={deep}: {first['counts']}"

    def repair(self) -> str:
        result = verify.repair(self.settings())
        # Only what the walk planted may stay unsettled, and one such path never stops the rest.
        left = [text for text in result.unrepairable if not self._names_planted(text)]
        if left:
            raise Violation(f"repair left unrepairable: {left}")
        self.damaged.clear()
        after = verify.verify(self.settings(), deep=True)
        problems = [p.__dict__ for p in after.problems if p.path not in self.planted]
        if problems:
            raise Violation(f"verify --deep after repair: {problems}")
        self._check_planted_judged(after.as_dict())
        self._check_ok_rows_fresh()
        return f"repair: {result.as_dict()['found']}"

    def _names_planted(self, text: str) -> bool:
        return any(text == path or text.startswith(path + " ") or text.startswith(path + ":")
                   for path in self.planted)

    def _check_planted_judged(self, report: dict) -> None:
        """Each planted path at an image path is reported exactly once: a problem or a foreign entry."""
        mentioned = [p["path"] for p in report["problems"]] + list(report["foreign"])
        for path in self.planted:
            hits = sum(m == path or m.startswith(path + "/") for m in mentioned)
            if hits != 1:
                raise Violation(f"{self.planted[path]} planted at {path} reported {hits} times: "
                                f"{[m for m in mentioned if m.startswith(path)]}")

    def damage(self) -> str:
        paths = [p for p in self._ok_paths() if p not in self.planted and (self.root / p).is_file()]
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

    # ------------------------------------------------------------------ the tool's boundaries

    def _snapshot(self) -> dict[str, tuple]:
        """Every entry under the root (the marker included) with its kind and content."""
        found = {}
        for folder, dirs, files in os.walk(self.root):
            for name in dirs + files:
                full = os.path.join(folder, name)
                info = os.lstat(full)
                content = (os.readlink(full) if stat.S_ISLNK(info.st_mode) else
                           hashlib.sha256(Path(full).read_bytes()).hexdigest() if stat.S_ISREG(info.st_mode) else None)
                found[os.path.relpath(full, self.root)] = (stat.S_IFMT(info.st_mode), content)
        return found

    def second_index(self) -> str:
        """Another index (a typo in --index-db, a second dataset's config, maybe another preset) on our
        root, while ours is healthy: every command refuses, naming the owner, and changes nothing."""
        other = self.folder / self.rng.choice(("other.sqlite", "image_cache.sqlite.bak"))
        extra = {"image_index_db": str(other)}
        if self.rng.random() < 0.5:
            extra.update(self.rng.choice(PRESETS))
        command = self.rng.choice(("render", "verify", "repair"))
        before = self._snapshot()
        settings = self.settings(**extra)
        try:
            if command == "render":
                runner.render(settings)
            elif command == "verify":
                verify.verify(settings)
            else:
                verify.repair(settings)
        except ImageCacheError as exc:
            if str(self.index_path) not in str(exc) and command == "render":
                raise Violation(f"second index refused without naming the owner: {exc}") from None
        else:
            raise Violation(f"{command} with a second index {other.name} on a root another index owns went ahead")
        if self._snapshot() != before:
            raise Violation(f"{command} with a second index changed the root")
        return f"second index {other.name} {command}: refused"

    def lose_index(self) -> str:
        """The index is deleted: the next render takes the root over (its owner is gone), saying so."""
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.index_path}{suffix}")
        self.damaged.clear()
        return "lose index"

    def plant(self) -> str:
        """A link, a folder or a FIFO where one of our images is, or will be: not ours, never touched."""
        paths = [p for p in self._ok_paths() if p not in self.planted]
        if not paths:
            return "plant: no image path"
        path = self.rng.choice(paths)
        kind = self.rng.choice(("link", "folder", "fifo"))
        full = self.root / path
        with contextlib.suppress(FileNotFoundError):
            full.unlink()
        if kind == "link":
            full.symlink_to(self.outside / "victim.png")
        elif kind == "folder":
            full.mkdir()
            (full / "keep.txt").write_text("a user's note\n")
        else:
            os.mkfifo(full)
        self.planted[path] = kind
        self.damaged.add(path)
        return f"plant {kind} at {path}"

    def unplant(self) -> str:
        if not self.planted:
            return "unplant: nothing planted"
        path = self.rng.choice(sorted(self.planted))
        full = self.root / path
        shutil.rmtree(full) if self.planted.pop(path) == "folder" else full.unlink()
        return f"unplant {path}"

    def link_lock_or_marker(self) -> str:
        """The index's lock file or the root's marker is a link: commands refuse, the target is untouched."""
        which = self.rng.choice(("lock", "marker"))
        if which == "lock":
            place, target = Path(f"{self.index_path}.lock"), self.outside / "victim.lock"
        else:
            place, target = self.root / ".image_cache_root", self.outside / "marker-copy"
            if not place.is_file():
                return "link marker: no marker yet"
            target.write_bytes(place.read_bytes())  # a valid marker, reached through a link
            self.victims["marker-copy"] = target.read_bytes()
        saved = place.read_bytes() if place.is_file() else None
        with contextlib.suppress(FileNotFoundError):
            place.unlink()
        place.symlink_to(target)
        command = self.rng.choice(("render", "verify", "repair"))
        try:
            try:
                (runner.render if command == "render" else getattr(verify, command))(self.settings())
            except ImageCacheError as exc:
                outcome = f"refused: {exc}"
            else:
                raise Violation(f"{command} went ahead with its {which} file a link")
            self._check_outside()
        finally:
            place.unlink()
            if saved is not None and which == "marker":
                place.write_bytes(saved)
        return f"link {which}: {command} {outcome[:60]}"

    def interrupt(self) -> str:
        """A real render process stopped by SIGINT, SIGTERM or SIGHUP at a random moment: it ends within
        10 s, frees the lock, and what it leaves is what the next render or repair settles."""
        sig = self.rng.choice(SIGNALS)
        p = self.preset
        command = [sys.executable, str(REPO / "image_cache.py"), "render", "--market-db", self.market,
                   "--index-db", str(self.index_path), "--image-root", str(self.root), "--symbols", ",".join(SYMBOLS),
                   "--intervals", "1h", "--start", "2024-06-01", "--gap-policy", self.gap_policy,
                   "--style", p["style_name"], "--size", str(p["img_size_px"]), "--window", str(p["window_len"]),
                   "--jobs", str(self.rng.choice((1, 2)))]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        delay = self.rng.uniform(0, 1.5)
        time.sleep(delay)
        process.send_signal(sig)
        began = time.monotonic()
        try:
            _, err = process.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
            raise Violation(f"render still running 10 s after {sig.name}") from None
        if process.returncode not in STOPPED:
            raise Violation(f"render stopped by {sig.name} exited {process.returncode}: {err.decode()[-500:]}")
        if b"Traceback" in err:
            raise Violation(f"traceback after {sig.name}: {err.decode()[-800:]}")
        return (f"{sig.name} after {delay:.2f} s: exit {process.returncode} in {time.monotonic() - began:.1f} s")

    STEPS = (("correct", 3), ("append", 2), ("remove", 1), ("flatten", 1), ("render", 5), ("switch", 1),
             ("verify", 2), ("repair", 2), ("damage", 2), ("delete_row", 1), ("second_index", 1),
             ("lose_index", 0.3), ("plant", 1), ("unplant", 1), ("link_lock_or_marker", 0.5))

    def step(self) -> str:
        steps = self.STEPS + ((("interrupt", 2),) if self.signals else ())
        name = self.rng.choices([s for s, _ in steps], [w for _, w in steps])[0]
        if not self.index_path.exists() and name in ("verify", "repair", "damage", "delete_row", "second_index",
                                                     "plant", "link_lock_or_marker"):
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

    def _blocked_paths(self) -> list[str]:
        with self._index() as conn:
            paths = [r[0] for r in conn.execute("SELECT file_path FROM images WHERE style_name = ? "
                                                "AND status = 'missing' AND reason LIKE 'blocked: %'",
                                                (self.preset["style_name"],))]
        conn.close()
        return paths

    def _row_size(self, path: str) -> int | None:
        with self._index() as conn:
            row = conn.execute("SELECT file_size FROM images WHERE file_path = ?", (path,)).fetchone()
        conn.close()
        return row[0] if row else None

    def _check_outside(self) -> None:
        for name, content in self.victims.items():
            if (self.outside / name).read_bytes() != content:
                raise Violation(f"a file outside the root, reached through a planted link, changed: {name}")

    def check(self) -> None:
        """Nothing outside the root or planted in it changed, no lock is left held, and no `ok` row's file
        is missing or differs from its SHA-256 (but for damage not yet seen)."""
        self._check_outside()
        for path, kind in self.planted.items():
            info = os.lstat(self.root / path)
            same = {"link": stat.S_ISLNK, "folder": stat.S_ISDIR, "fifo": stat.S_ISFIFO}[kind](info.st_mode)
            if not same or (kind == "folder" and not (self.root / path / "keep.txt").is_file()):
                raise Violation(f"the {kind} planted at {path} was changed")
        if lock_is_held(f"{self.index_path}.lock"):
            raise Violation("the index lock is still held after the step")
        if not self.index_path.exists():
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
                                f"{sorted(map(iso_utc, unindexed))[:3]}, "
                                f"rows of no candle at {sorted(map(iso_utc, gone))[:3]}")

    def _check_counts(self) -> None:
        """Right after a full render, a dry run counts every row of the preset (most from stamps)."""
        plan = runner.render(self.settings(), dry_run=True)
        with self._index() as conn:
            ok, engine = conn.execute("SELECT count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE "
                                      "reason LIKE 'engine: %') FROM images WHERE style_name = ?",
                                      (self.preset["style_name"],)).fetchone()
        conn.close()
        # A planted link, folder or FIFO blocks its window's image: render leaves it alone, so that
        # window stays due (and is counted as such) until the thing is gone.
        blocked = sum(path in self.planted for path in self._blocked_paths())
        if (plan.drawn, plan.up_to_date, plan.undrawable) != (blocked, ok, engine):
            raise Violation(f"dry run after a full render: drawn {plan.drawn}, up to date {plan.up_to_date}, "
                            f"undrawable {plan.undrawable}; the index holds {ok} ok and {engine} engine refusals")

    def _check_ok_rows_fresh(self, preset: dict | None = None, symbols: list[str] | None = None,
                             from_ms: int | None = None) -> None:
        """Every ok row's fingerprint equals its candles' and its bytes equal a fresh render (with `preset`:
        that preset's rows of `symbols` ending at `from_ms` or later, but for files damaged since the
        last verify)."""
        conn = open_market(self.market)
        series = {s: read_series(conn, s, "1h", sid) for (s, _), sid in
                  __import__("image_cache.cache.market", fromlist=["list_series"]).list_series(conn).items()}
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


def run_sequence(seed: int, steps: int, folder: Path, signals: bool = False) -> list[str]:
    """Run one sequence; raises Violation (with the steps so far) when an invariant breaks."""
    walk = Walk(folder, seed, signals)
    for _ in range(steps):
        try:
            walk.log.append(walk.step())
            walk.check()
        except Exception as exc:  # an invariant broken, or a command failing where it must not
            detail = str(exc) if isinstance(exc, Violation) else "".join(traceback.format_exception(exc))
            raise Violation(f"seed {seed}, after steps:\n  " + "\n  ".join(walk.log) + f"\n{detail}") from None
    return walk.log


def run_many(first_seed: int, count: int, steps: int, signals: bool = False) -> tuple[int, list[str]]:
    violations = []
    for seed in range(first_seed, first_seed + count):
        # On tmpfs where there is one: the walk measures states, not the disk's flushes.
        folder = Path(tempfile.mkdtemp(prefix="walk-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        try:
            run_sequence(seed, steps, folder, signals)
        except Violation as exc:
            violations.append(str(exc))
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    return count, violations


def _block(args: tuple[int, int, int, bool]) -> tuple[int, list[str]]:
    return run_many(*args)


def main() -> int:
    parser = argparse.ArgumentParser(description="Soak: random sequences over the cache's state machine")
    parser.add_argument("--sequences", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--signals", type=float, default=0.02,
                        help="share of sequences that also stop real render processes with signals")
    parser.add_argument("--record", action="store_true", help="write the figure to bench/soak.json")
    args = parser.parse_args()
    began = time.monotonic()
    block = 50
    # Signal sequences start real processes (about a second each): a share of the blocks only.
    every = round(1 / args.signals) if args.signals > 0 else 0
    blocks = [(seed, min(block, args.seed + args.sequences - seed), args.steps, bool(every) and k % every == 0)
              for k, seed in enumerate(range(args.seed, args.seed + args.sequences, block))]
    count, violations = 0, []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for n, found in pool.map(_block, blocks):
            count += n
            violations += found
            for text in found:
                print(text, file=sys.stderr, flush=True)
            print(f"{count} sequences, {len(violations)} violations", file=sys.stderr, flush=True)
    result = {"sequences": count, "steps_per_sequence": args.steps, "violations": len(violations),
              "sequences_with_signals": sum(n for _, n, _, sig in blocks if sig),
              "seconds": round(time.monotonic() - began, 1), "workers": args.workers,
              "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores"}
    print(json.dumps(result))
    if args.record:  # make soak: the figure bench/RESULTS.md shows
        (Path(__file__).resolve().parents[1] / "bench" / "soak.json").write_text(json.dumps(result, indent=1) + "\n")
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
