"""The downloader against a real HTTP server on 127.0.0.1 serving a Binance Vision layout."""

from __future__ import annotations

import functools
import hashlib
import json
import sqlite3
import subprocess
import sys
import threading
from datetime import date
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from binance_fixtures import kline_csv, kline_rows, write_archive
from image_cache.ingest.download import Archive, daily_fallback, download, is_recent, plan_interval

ROOT = str(Path(__file__).resolve().parents[1])


# ---------------------------------------------------------------------------------------- plan

def test_plan_uses_monthly_files_for_whole_months_and_daily_for_the_rest():
    archives = plan_interval("BTCUSDT", "1m", date(2024, 1, 30), date(2024, 3, 3))
    assert [(a.kind, a.period) for a in archives] == [
        ("daily", "2024-01-30"), ("daily", "2024-01-31"), ("monthly", "2024-02"),
        ("daily", "2024-03-01"), ("daily", "2024-03-02")]
    assert archives[2].path("spot") == "data/spot/monthly/klines/BTCUSDT/1m/BTCUSDT-1m-2024-02.zip"


def test_weekly_and_monthly_intervals_exist_only_as_monthly_files():
    archives = plan_interval("BTCUSD_PERP", "1w", date(2024, 1, 30), date(2024, 3, 3))
    assert [(a.kind, a.period) for a in archives] == [("monthly", "2024-01"), ("monthly", "2024-02"),
                                                      ("monthly", "2024-03")]
    assert archives[0].path("cm") == \
        "data/futures/cm/monthly/klines/BTCUSD_PERP/1w/BTCUSD_PERP-1w-2024-01.zip"
    assert Archive("X", "1h", "daily", "2024-01-05").path("um") == \
        "data/futures/um/daily/klines/X/1h/X-1h-2024-01-05.zip"


def test_recent_periods_may_be_unpublished():
    day = Archive("X", "1h", "daily", "2024-02-04")
    assert is_recent(day, date(2024, 2, 5)) and not is_recent(day, date(2024, 2, 7))
    month = Archive("X", "1h", "monthly", "2024-01")
    assert is_recent(month, date(2024, 2, 3)) and not is_recent(month, date(2024, 2, 20))
    assert [a.period for a in daily_fallback(month, date(2024, 1, 29), date(2024, 2, 3))] == \
        ["2024-01-29", "2024-01-30", "2024-01-31"]
    assert daily_fallback(Archive("X", "1w", "monthly", "2024-01"), date(2024, 1, 1), date(2024, 2, 1)) == []


# ---------------------------------------------------------------------------------------- server

class Server:
    """Serves `root`; `errors[path]` 500s and `short[path]` cut bodies are used up one per request."""

    def __init__(self, root: Path):
        self.root = root
        self.errors: dict[str, int] = {}
        self.short: dict[str, int] = {}
        self.requests: list[str] = []
        self.lock = threading.Lock()
        handler = functools.partial(_Handler, self, directory=str(root))
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def hits(self, path: str) -> int:
        return self.requests.count("/" + path)

    def take(self, table: dict[str, int], path: str) -> bool:
        with self.lock:
            self.requests.append(path)
            if table.get(path.lstrip("/"), 0) > 0:
                table[path.lstrip("/")] -= 1
                return True
            return False


class _Handler(SimpleHTTPRequestHandler):
    def __init__(self, server_state: Server, *args, **kwargs):
        self.state = server_state
        super().__init__(*args, **kwargs)

    def do_GET(self):
        if self.state.take(self.state.errors, self.path):
            self.send_error(500, "transient")
            return
        with self.state.lock:
            cut = self.state.short.get(self.path.lstrip("/"), 0) > 0
            if cut:
                self.state.short[self.path.lstrip("/")] -= 1
        if cut:
            body = (self.state.root / self.path.lstrip("/")).read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
            return
        super().do_GET()

    def log_message(self, format, *args):
        pass


@pytest.fixture
def server(tmp_path):
    s = Server(tmp_path / "www")
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


SPOT = "data/spot/{kind}/klines/{sym}/{iv}/{sym}-{iv}-{period}.zip"


def publish(root: Path, sym: str, iv: str, period: str, count: int, checksum: str | None = "good") -> str:
    kind = "monthly" if len(period) == 7 else "daily"
    rel = SPOT.format(kind=kind, sym=sym, iv=iv, period=period)
    start = period + "-01" if kind == "monthly" else period
    path = root / rel
    write_archive(path.parent, path.name, kline_csv(kline_rows(iv, start, count)), checksum=checksum)
    return rel


def publish_truncated(root: Path, sym: str, iv: str, period: str, count: int) -> str:
    """A zip cut in half on the server, with a .CHECKSUM of the cut bytes (a bad upload)."""
    rel = publish(root, sym, iv, period, count, checksum=None)
    path = root / rel
    data = path.read_bytes()[:-40]
    path.write_bytes(data)
    Path(str(path) + ".CHECKSUM").write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}")
    return rel


def registry(db: Path) -> dict[str, list[str]]:
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT file_name, status FROM ingested_files ORDER BY id").fetchall()
    out: dict[str, list[str]] = {}
    for name, status in rows:
        out.setdefault(name, []).append(status)
    return out


def candle_count(db: Path, symbol: str, interval: str) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("""SELECT count(*) FROM candles c JOIN series se ON se.id = c.series_id
                               JOIN symbols s ON s.id = se.symbol_id JOIN intervals i ON i.id = se.interval_id
                               WHERE s.symbol = ? AND i.code = ?""", (symbol, interval)).fetchone()[0]


def test_download_then_ingest_with_every_kind_of_trouble(tmp_path, server):
    www, mirror, db = server.root, tmp_path / "mirror", tmp_path / "market.sqlite"
    publish(www, "BTCUSDT", "1h", "2024-01", 31 * 24)
    publish(www, "BTCUSDT", "1h", "2024-02-01", 24)
    wrong = publish(www, "BTCUSDT", "1h", "2024-02-02", 24, checksum="wrong")
    truncated = publish_truncated(www, "BTCUSDT", "1h", "2024-02-04", 24)
    flaky = publish(www, "BTCUSDT", "1h", "2024-02-05", 24)
    server.errors[flaky] = 2
    server.errors[flaky + ".CHECKSUM"] = 1
    cut = publish(www, "ETHUSDT", "1h", "2024-01", 31 * 24)
    server.short[cut] = 1
    for day in range(1, 5):
        publish(www, "ETHUSDT", "1h", f"2024-02-0{day}", 24)
    warnings: list[str] = []
    args = dict(symbols=["BTCUSDT", "ETHUSDT"], intervals=["1h"], start="2024-01-01", end="2024-02-06",
                base_url=server.url, mirror=str(mirror), jobs=3, today=date(2024, 2, 6), backoff=0.01,
                warn=warnings.append)

    result = download(str(db), **args, verbose=True)

    status = {(a.symbol, a.period): a.status for a in result.archives}
    assert status[("BTCUSDT", "2024-02-03")] == "missing"  # an old day: 404 is "missing"
    assert status[("ETHUSDT", "2024-02-05")] == "pending"  # yesterday: not published yet
    assert {k: v for k, v in status.items() if v not in ("missing", "pending")} == {
        ("BTCUSDT", p): "downloaded" for p in ("2024-01", "2024-02-01", "2024-02-02", "2024-02-04", "2024-02-05")
    } | {("ETHUSDT", p): "downloaded" for p in ("2024-01", "2024-02-01", "2024-02-02", "2024-02-03", "2024-02-04")}
    assert server.hits(flaky) == 3 and server.hits(cut) == 2
    assert any("HTTP 500" in w for w in warnings) and any("short body" in w for w in warnings)
    assert (mirror / flaky).read_bytes() == (www / flaky).read_bytes()
    assert (mirror / cut).read_bytes() == (www / cut).read_bytes()
    assert not [p for p in mirror.rglob("*") if p.name.startswith(".")]  # no temp file left behind

    files = registry(db)
    assert files["BTCUSDT-1h-2024-02-02.zip"] == ["rejected"]
    assert files["BTCUSDT-1h-2024-02-04.zip"] == ["rejected"]
    assert files["BTCUSDT-1h-2024-02-05.zip"] == ["ok"]
    assert candle_count(db, "BTCUSDT", "1h") == 31 * 24 + 2 * 24
    assert candle_count(db, "ETHUSDT", "1h") == 31 * 24 + 4 * 24
    assert not result.ok  # two files were rejected
    text = result.text()
    assert "  ETHUSDT 1h: 6 archives: 5 downloaded, 1 not published yet" in text.splitlines()
    assert "not published yet: ETHUSDT-1h-2024-02-05.zip" in text
    assert "missing: BTCUSDT-1h-2024-02-03.zip" in text
    assert "checksum mismatch" in text

    # Second run: verified files stay; the mismatching one is fetched again, the rejected truncated one is not.
    before = list(server.requests)
    again = download(str(db), **args)
    fetched = [p.lstrip("/") for p in server.requests[len(before):] if p.endswith(".zip")]
    missing = [SPOT.format(kind="daily", sym=s, iv="1h", period=d)
               for s, d in (("BTCUSDT", "2024-02-03"), ("ETHUSDT", "2024-02-05"))]
    assert sorted(fetched) == sorted([wrong, *missing])
    again_status = {(a.symbol, a.period): a.status for a in again.archives}
    assert again_status[("BTCUSDT", "2024-01")] == "cached"
    assert again_status[("BTCUSDT", "2024-02-04")] == "rejected-earlier"
    assert candle_count(db, "BTCUSDT", "1h") == 31 * 24 + 2 * 24
    assert registry(db)["BTCUSDT-1h-2024-01.zip"] == ["ok", "skipped"]

    # --retry-failed: the rejected file is downloaded and ingested again.
    before = list(server.requests)
    download(str(db), **args, retry_failed=True)
    fetched = [p.lstrip("/") for p in server.requests[len(before):] if p.endswith(".zip")]
    assert sorted(fetched) == sorted([wrong, truncated, *missing])
    assert registry(db)["BTCUSDT-1h-2024-02-04.zip"] == ["rejected", "rejected"]


def test_unpublished_monthly_file_falls_back_to_daily_files(tmp_path, server):
    for day in range(1, 32):
        publish(server.root, "BTCUSDT", "1d", f"2024-01-{day:02d}", 1)
    publish(server.root, "BTCUSDT", "1d", "2024-02-01", 1)
    db = tmp_path / "market.sqlite"

    result = download(str(db), symbols=["BTCUSDT"], intervals=["1d"], start="2024-01-01",
                      base_url=server.url, mirror=str(tmp_path / "mirror"), today=date(2024, 2, 3), backoff=0.01)

    statuses = [(a.period, a.status) for a in result.archives]
    assert ("2024-01", "pending") not in statuses
    assert statuses.count(("2024-02-02", "pending")) == 1  # --end defaults to today
    assert sum(s == "downloaded" for _, s in statuses) == 32
    assert candle_count(db, "BTCUSDT", "1d") == 32
    assert result.ok


def test_retries_are_bounded_and_leave_no_partial_file(tmp_path, server):
    rel = publish(server.root, "BTCUSDT", "1d", "2024-01-01", 1)
    server.errors[rel] = 100
    result = download(str(tmp_path / "m.sqlite"), symbols=["BTCUSDT"], intervals=["1d"], start="2024-01-01",
                      end="2024-01-02", base_url=server.url, mirror=str(tmp_path / "mirror"),
                      today=date(2024, 3, 1), retries=3, backoff=0.001)
    [outcome] = result.archives
    assert outcome.status == "failed" and "gave up after 4 attempts" in outcome.reason
    assert server.hits(rel) == 4
    assert not (tmp_path / "mirror" / rel).exists()
    assert not [p for p in (tmp_path / "mirror").rglob("*") if p.is_file() and p.suffix != ".CHECKSUM"]
    assert not result.ok and result.ingest is None


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ingest", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_cli_downloads_and_requires_checksums_when_asked(tmp_path, server):
    publish(server.root, "BTCUSDT", "1d", "2024-01-01", 1)
    publish(server.root, "BTCUSDT", "1d", "2024-01-02", 1, checksum=None)
    common = ["--market-db", str(tmp_path / "m.sqlite"), "--symbols", "BTCUSDT", "--intervals", "1d",
              "--start", "2024-01-01", "--end", "2024-01-03", "--base-url", server.url,
              "--mirror", str(tmp_path / "mirror"), "--jobs", "2"]

    run = _cli("download", *common, "--require-checksum", "--json")

    assert run.returncode == 1, run.stderr
    report = json.loads(run.stdout)
    assert report["archives"]["downloaded"] == 2
    assert report["ingest"]["files"] == {"ok": 1, "skipped": 0, "rejected": 1, "unverified": 0}
    assert "no .CHECKSUM" in json.dumps(report["ingest"]["file_outcomes"])

    run = _cli("download", *common)
    assert run.returncode == 0, run.stderr
    assert "download: 2 archives: 1 downloaded, 1 cached" in run.stdout
    assert candle_count(tmp_path / "m.sqlite", "BTCUSDT", "1d") == 2


def test_cli_rejects_an_empty_date_range(tmp_path):
    run = _cli("download", "--market-db", str(tmp_path / "m.sqlite"), "--symbols", "BTCUSDT", "--intervals", "1d",
               "--start", "2024-02-01", "--end", "2024-01-01", "--mirror", str(tmp_path / "mirror"))
    assert run.returncode == 1
    assert run.stderr.startswith("Error: --start 2024-02-01 must be before --end 2024-01-01")
