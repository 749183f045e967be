"""Opening input files safely: regular files only, never blocking, hashed as a stream.

A named pipe, socket or device given as an input (or found in an input folder) is refused without
being opened for a blocking read: `open()` on a pipe with no writer waits for ever.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from typing import BinaryIO

from image_cache.ingest.validate import fail

CHUNK_BYTES = 1 << 20
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind(mode: int) -> str:
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def open_regular(path: str, name: str) -> BinaryIO:
    """`path` opened for reading, after checking it is a regular file (links are resolved).

    Raises MarketError naming `name` and the rule: not a regular file, or cannot read.
    """
    try:
        mode = os.stat(path).st_mode
        if not stat.S_ISREG(mode):
            raise fail(name, None, "not a regular file", f"{_kind(mode)}; only regular files are read")
        # O_NONBLOCK: should the path become a pipe after the check, the open still returns at once.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise fail(name, None, "cannot read", exc.strerror or str(exc)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise fail(name, None, "not a regular file", f"{_kind(mode)}; only regular files are read")
    return os.fdopen(fd, "rb")


def sha256_stream(f: BinaryIO, prefix: bytes = b"") -> tuple[str, int]:
    """SHA-256 and size of `prefix` followed by the rest of `f`, read in chunks (bounded memory)."""
    digest = hashlib.sha256(prefix)
    size = len(prefix)
    while chunk := f.read(CHUNK_BYTES):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


def line_chunks(f: BinaryIO, size: int, max_line_bytes: int) -> Iterator[bytes]:
    """Whole lines, about `size` bytes at a time (the last chunk may lack its final newline)."""
    rest = b""
    while block := f.read(size):
        block = rest + block
        cut = block.rfind(b"\n") + 1
        if cut == 0 and len(block) <= max_line_bytes:
            rest = block
            continue
        cut = cut or len(block)  # an over-long line: let split_lines report it
        rest = block[cut:]
        yield block[:cut]
    if rest:
        yield rest
