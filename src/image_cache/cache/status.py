"""`status`: what the index holds, per series and status, and the last run."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any

from image_cache.cache import index


@dataclass
class StatusResult:
    series: list[dict[str, Any]] = field(default_factory=list)
    total: dict[str, int] = field(default_factory=dict)
    bytes_on_disk: int = 0
    newest: str | None = None
    last_run: dict[str, Any] | None = None
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"series": self.series, "total": self.total, "bytes_on_disk": self.bytes_on_disk,
                "newest": self.newest, "last_run": self.last_run}

    def text(self) -> str:
        lines = [f"{'symbol':<12} {'interval':<8} {'style':<20} " + " ".join(f"{s:>8}" for s in index.STATUSES)]
        for row in self.series:
            lines.append(f"{row['symbol']:<12} {row['interval']:<8} {row['style']:<20} "
                         + " ".join(f"{row[s]:>8}" for s in index.STATUSES))
        lines.append("total: " + ", ".join(f"{n} {s}" for s, n in self.total.items())
                     + f"; {self.bytes_on_disk / 1e6:.1f} MB on disk")
        if self.newest:
            lines.append(f"newest image: {self.newest}")
        if self.last_run:
            run = self.last_run
            lines.append(f"last run: {run['command']} started {run['started_utc']}, "
                         f"finished {run['finished_utc'] or 'never (interrupted or running)'}, "
                         f"exit code {run['exit_code']}")
        return "\n".join(lines)


def status(index_db: str, symbols: list[str] | None = None, intervals: list[str] | None = None) -> StatusResult:
    """Counts per series, preset and status, bytes, the newest image and the last run; of the series of
    `symbols` and `intervals` only, when given (the last run is the index's)."""
    conn = index.connect(index_db, create=False)
    where, params = index.series_where(symbols, intervals)
    try:
        result = StatusResult(total={s: 0 for s in index.STATUSES})
        per: dict[tuple[str, str, str], dict[str, Any]] = {}
        for symbol, interval, style, size, window, version, state, count in conn.execute(
                "SELECT symbol, interval, style_name, img_size_px, window_len, style_version, status, count(*) "
                f"FROM images{where} GROUP BY 1, 2, 3, 4, 5, 6, 7 ORDER BY 1, 2, 3, 4, 5, 6", params):
            label = f"{style} {size}px w{window} v{version}"
            entry = per.setdefault((symbol, interval, label), {"symbol": symbol, "interval": interval,
                                                               "style": label, **{s: 0 for s in index.STATUSES}})
            entry[state] = count
            result.total[state] += count
        result.series = list(per.values())
        also = f"{where} AND" if where else " WHERE"
        result.bytes_on_disk = conn.execute(
            f"SELECT coalesce(sum(file_size), 0) FROM images{also} status IN ('ok', 'stale')", params).fetchone()[0]
        newest = conn.execute(f"SELECT file_path FROM images{also} status = 'ok' "
                              "ORDER BY end_open_time_ms DESC, file_path LIMIT 1", params).fetchone()
        result.newest = newest[0] if newest else None
        run = conn.execute("SELECT command, arguments, started_utc, finished_utc, counts, exit_code FROM runs "
                           "ORDER BY id DESC LIMIT 1").fetchone()
        if run:
            result.last_run = {"command": run[0], "arguments": json.loads(run[1]), "started_utc": run[2],
                               "finished_utc": run[3], "counts": json.loads(run[4]) if run[4] else None,
                               "exit_code": run[5]}
        return result
    except sqlite3.Error as exc:  # status reads the index alone: its error
        raise index.failure(index_db, exc) from None
    finally:
        conn.close()
