"""Tiny Binance Vision archives built by tests: kline rows, CSV bytes, zips and .CHECKSUM files.

Shared by the ingest tests and the downloader tests (which serve these zips over loopback HTTP).
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

from image_cache.core.grid import INTERVAL_MS, utc_ms

FUTURES_HEADER = ("open_time,open,high,low,close,volume,close_time,quote_volume,count,"
                  "taker_buy_volume,taker_buy_quote_volume,ignore")


def kline_rows(interval: str, start: str, count: int, *, unit: str = "ms", price: float = 100.0) -> list[list[str]]:
    """`count` consecutive valid candles from `start` (UTC date), as the 12 string fields of a kline row."""
    step = INTERVAL_MS[interval]
    scale = 1000 if unit == "us" else 1
    rows = []
    for i in range(count):
        open_ms = utc_ms(start) + i * step
        o = price + i
        c = o + (0.5 if i % 2 == 0 else -0.5)
        rows.append([str(open_ms * scale), f"{o:.8f}", f"{max(o, c) + 1:.8f}", f"{min(o, c) - 1:.8f}", f"{c:.8f}",
                     f"{1.5 + i:.8f}", str((open_ms + step) * scale - 1), f"{150.0 + i:.8f}", str(10 + i),
                     f"{0.75:.8f}", f"{75.0:.8f}", "0"])
    return rows


def kline_csv(rows: list[list[str]], *, header: bool = False, line_end: str = "\n") -> bytes:
    lines = ([FUTURES_HEADER] if header else []) + [",".join(row) for row in rows]
    return "".join(line + line_end for line in lines).encode()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def checksum_text(data: bytes, file_name: str) -> str:
    """A .CHECKSUM file's content as Binance writes it: no trailing newline."""
    return f"{hashlib.sha256(data).hexdigest()}  {file_name}"


def write_archive(directory: Path, file_name: str, csv_data: bytes | None = None, *,
                  members: dict[str, bytes] | None = None, checksum: str | None = "good") -> Path:
    """Write `file_name` (a zip holding `csv_data` as `<stem>.csv`, or `members`) and its .CHECKSUM.

    checksum: "good", "wrong" (a valid-looking hash of other bytes) or None (no .CHECKSUM file).
    """
    directory.mkdir(parents=True, exist_ok=True)
    if members is None:
        members = {file_name.removesuffix(".zip") + ".csv": csv_data or b""}
    data = zip_bytes(members)
    path = directory / file_name
    path.write_bytes(data)
    if checksum == "good":
        (directory / (file_name + ".CHECKSUM")).write_text(checksum_text(data, file_name))
    elif checksum == "wrong":
        (directory / (file_name + ".CHECKSUM")).write_text(checksum_text(data + b"x", file_name))
    return path
