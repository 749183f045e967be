"""A fake Binance on 127.0.0.1 for tests: the REST klines and exchangeInfo endpoints, plus static files.

The klines endpoints take the real parameters (symbol, interval, startTime, endTime, limit) and
enforce the real limits (spot at most 1000 rows per call, futures 1500; error -1130 above), answer
with 12-field kline arrays (decimal strings, like the exchange) and the used weight in
`X-MBX-USED-WEIGHT-1M`. Faults are scripted per request: `429` (with Retry-After), `418`, `5xx`,
`slow:SECONDS` and `malformed`; `delay` slows every request alike (a slow link). The 24-hour tickers serve
`tickers`; CCXT's `binance` class runs against all of it (its API URLs pointed here). Any other path is served from
`root` (a Binance Vision layout for the downloader).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from image_cache.core.grid import INTERVAL_MS, close_time_ms

KLINES = {"/api/v3/klines": ("spot", 1000), "/fapi/v1/klines": ("um", 1500), "/dapi/v1/klines": ("cm", 1500)}
EXCHANGE_INFO = {"/api/v3/exchangeInfo": "spot", "/fapi/v1/exchangeInfo": "um", "/dapi/v1/exchangeInfo": "cm"}
TICKERS = {"/api/v3/ticker/24hr": "spot", "/fapi/v1/ticker/24hr": "um", "/dapi/v1/ticker/24hr": "cm"}
API_INTERVALS = {code: ("1M" if code == "1mo" else code) for code in INTERVAL_MS}


def kline(interval: str, open_ms: int, i: int, price: float = 100.0) -> list:
    """One valid kline as the exchange serves it (prices as decimal strings)."""
    o = price + (i % 50)
    c = o + (0.5 if i % 2 == 0 else -0.5)
    return [open_ms, f"{o:.8f}", f"{max(o, c) + 1:.8f}", f"{min(o, c) - 1:.8f}", f"{c:.8f}", f"{1.5 + i:.8f}",
            close_time_ms(interval, open_ms) - 1, f"{150.0 + i:.8f}", 10 + i, "0.75000000", "75.00000000", "0"]


class FakeBinance:
    def __init__(self, root: Path | None = None, *, weight_limit: int = 6000):
        self.root = root
        self.series: dict[tuple[str, str, str], list[list]] = {}
        self.instruments: dict[str, list[dict]] = {}
        self.tickers: dict[str, list[dict]] = {}  # market → 24-hour statistics, e.g. {"symbol", "quoteVolume"}
        self.faults: list[str] = []
        self.delay = 0.0  # seconds each request waits before its answer
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.weight = 0
        self.weight_per_call = 2
        self.weight_limit = weight_limit
        self.lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add_series(self, market: str, symbol: str, interval: str, first_ms: int, count: int) -> list[list]:
        rows = []
        t = first_ms
        for i in range(count):
            rows.append(kline(interval, t, i))
            t = close_time_ms(interval, t)
        self.series[(market, symbol, API_INTERVALS[interval])] = rows
        return rows

    def api_requests(self, path: str | None = None) -> list[dict[str, str]]:
        return [q for p, q in self.requests if (path is None and p in KLINES) or p == path]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _handler(fake: FakeBinance) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None,
                  content_type: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            try:
                self.wfile.write(body)
            except BrokenPipeError:  # a client that timed out has gone
                pass

        def _error(self, status: int, code: int, msg: str, headers: dict[str, str] | None = None) -> None:
            self._send(status, json.dumps({"code": code, "msg": msg}).encode(), headers)

        def do_GET(self) -> None:
            parts = urllib.parse.urlsplit(self.path)
            query = dict(urllib.parse.parse_qsl(parts.query))
            with fake.lock:
                fake.requests.append((parts.path, query))
                fault = fake.faults.pop(0) if fake.faults and parts.path in KLINES else None
                # The exchange counts a call's weight when it arrives, whatever the answer.
                if parts.path in KLINES:
                    fake.weight += fake.weight_per_call
                used = fake.weight
            time.sleep(fake.delay)
            if fault is not None:
                if fault in ("429", "418"):
                    return self._error(int(fault), -1003, "Too many requests", {"Retry-After": "1"})
                if fault == "malformed":  # 200 OK, but klines of 11 fields
                    klines = [[0, "1", "1", "1", "1", "1", 59_999, "1", 1, "1", "1"]]
                    return self._send(200, json.dumps(klines).encode())
                if fault.startswith("slow:"):
                    time.sleep(float(fault[5:]))
                else:
                    return self._error(int(fault), -1000, "An unknown error occured while processing the request.")
            if parts.path in KLINES:
                return self._klines(*KLINES[parts.path], query, used)
            if parts.path in EXCHANGE_INFO:
                body = {"timezone": "UTC", "symbols": fake.instruments.get(EXCHANGE_INFO[parts.path], [])}
                return self._send(200, json.dumps(body).encode())
            if parts.path in TICKERS:
                return self._send(200, json.dumps(fake.tickers.get(TICKERS[parts.path], [])).encode())
            file = (fake.root / parts.path.lstrip("/")) if fake.root else None
            if file is None or ".." in parts.path or not file.is_file():
                return self._send(404, b"not found", content_type="text/plain")
            self._send(200, file.read_bytes(), content_type="application/octet-stream")

        def _klines(self, market: str, max_limit: int, query: dict[str, str], used: int) -> None:
            limit = int(query.get("limit", 500))
            if not 1 <= limit <= max_limit:
                return self._error(400, -1130, f"Data sent for parameter 'limit' is not valid (max {max_limit}).")
            if query.get("interval") not in API_INTERVALS.values():
                return self._error(400, -1120, "Invalid interval.")
            rows = fake.series.get((market, query.get("symbol", ""), query["interval"]))
            if rows is None:
                return self._error(400, -1121, "Invalid symbol.")
            start = int(query.get("startTime", 0))
            end = int(query.get("endTime", 2**62))
            page = [r for r in rows if start <= r[0] <= end][:limit]
            self._send(200, json.dumps(page).encode(), {"X-MBX-USED-WEIGHT-1M": str(used)})

    return Handler
