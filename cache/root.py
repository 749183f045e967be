"""Ownership of the image root: its marker, and the only ways cache/ writes, reads, lists and removes files there.

A folder is an image root only when it carries our marker, written by the first render and naming
the index it belongs to; verify and repair refuse any other folder. Inside it, nothing outside the
root is ever written, read or removed: links are never followed (images are written into folders
opened one component at a time with O_NOFOLLOW, walks do not descend into links, files are opened
with O_NOFOLLOW, every folder's real path is checked to lie inside the root), non-regular files are
never opened, and only regular files whose names are ours (images, temp files) are removed.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import itertools
import json
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from cache.layout import TEMP_SUFFIX, is_temp_name, parse_relative_path, write_atomic
from core.errors import MarketError
from core.grid import INTERVAL_MS, SYMBOL_RE

MARKER = ".image_cache_root"
MARKER_KIND = "image_cache image root"
# Each folder on the way to an image: opened relative to its parent, never through a link.
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
K = TypeVar("K")


class RootError(MarketError):
    """The image root is not ours, or a path would leave it."""


@dataclass(frozen=True)
class Marker:
    index_id: str
    index_path: str


def read_marker(root: str) -> Marker | None:
    path = os.path.join(root, MARKER)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RootError(f"cannot read the image root marker {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RootError(f"{path} is not a regular file: not an image root marker")
        data = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        content = json.loads(data)
        if content.get("kind") != MARKER_KIND:
            raise ValueError
        return Marker(str(content["index_id"]), str(content["index_path"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RootError(f"{path} is not an image root marker written by image_cache") from None


def write_marker(root: str, index_id: str, index_path: str) -> None:
    """Mark `root` as ours (atomic: a temp file renamed into place)."""
    os.makedirs(root, exist_ok=True)
    temp = os.path.join(root, f"{MARKER}.{os.getpid()}{TEMP_SUFFIX}")
    with open(temp, "w") as handle:
        json.dump({"kind": MARKER_KIND, "index_id": index_id, "index_path": os.path.abspath(index_path)}, handle)
        handle.write("\n")
    os.replace(temp, os.path.join(root, MARKER))


def _looks_like_ours(root: str) -> bool:
    """Only symbol folders (a folder written by a version before markers) and our temp files (a render
    killed while writing the marker) at the top, and nothing else."""
    with os.scandir(root) as entries:
        return all((entry.is_dir(follow_symlinks=False) and SYMBOL_RE.match(entry.name))
                   or (entry.is_file(follow_symlinks=False) and is_temp_name(entry.name)) for entry in entries)


def claim(root: str, index_id: str, index_path: str, index_is_new: bool) -> None:
    """Before render writes: make sure `root` is ours, marking it when it is new or empty.

    A root marked for another index is refused unless this index is new (a lost index being rebuilt
    by render adopts the root's marker). A folder holding anything else is refused.
    """
    if os.path.islink(root):
        raise RootError(f"image root {root} is a symbolic link; give the real folder")
    if os.path.exists(root) and not os.path.isdir(root):
        raise RootError(f"image root {root} exists and is not a folder")
    marker = read_marker(root) if os.path.isdir(root) else None
    if marker is None:
        if os.path.isdir(root) and not _looks_like_ours(root):
            raise RootError(f"image root {root} is not empty and has no image_cache marker ({MARKER}): "
                            "refusing to write images into a folder that is not ours; choose an empty or new folder")
        write_marker(root, index_id, index_path)
    elif marker.index_id != index_id:
        if not index_is_new:
            raise RootError(f"image root {root} belongs to another index ({marker.index_path}); "
                            "pass that index with --index-db, or choose another --image-root")
        write_marker(root, index_id, index_path)


def check_owned(root: str, index_id: str | None) -> Marker:
    """For verify and repair: `root` carries our marker (for this index, when `index_id` is given)."""
    if os.path.islink(root):
        raise RootError(f"image root {root} is a symbolic link; give the real folder")
    if not os.path.isdir(root):
        raise RootError(f"image root not found: {root}")
    marker = read_marker(root)
    if marker is None:
        hint = " (written by a version before markers? run `render` once to mark it)" if _looks_like_ours(root) else ""
        raise RootError(f"{root} is not an image root: it has no image_cache marker ({MARKER}){hint}; "
                        "expected the folder render writes images into (--image-root)")
    if index_id is not None and marker.index_id != index_id:
        raise RootError(f"image root {root} belongs to another index ({marker.index_path}); "
                        "pass that index with --index-db")
    return marker


def check_part(kind: str, value: str) -> str:
    """A symbol or interval about to become a path component: validated before any file-system call."""
    if kind == "symbol" and not SYMBOL_RE.match(value):
        raise RootError(f"invalid symbol {value!r}: must match {SYMBOL_RE.pattern}")
    if kind == "interval" and value not in INTERVAL_MS:
        raise RootError(f"unknown interval {value!r}")
    return value


def _plain_parts(rel_path: str) -> list[str]:
    """The components of a '/'-separated path relative to the root, refused unless plain."""
    parts = rel_path.split("/")
    if rel_path.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise RootError(f"path {rel_path!r} is not a plain path inside the image root")
    return parts


class Tree:
    """Containment checks against one root, with each folder's real path resolved once, and writes
    into it (a context manager: closing it closes the folder `write_many` keeps open)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.real_root = os.path.realpath(self.root)
        self._inside: dict[str, bool] = {}
        self._open: tuple[str, int] | None = None  # the folder last written into, and its descriptor

    def __enter__(self) -> "Tree":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the folder `write_many` keeps open."""
        if self._open is not None:
            os.close(self._open[1])
            self._open = None

    def folder_inside(self, folder: str) -> bool:
        known = self._inside.get(folder)
        if known is None:
            real = os.path.realpath(folder)
            known = self._inside[folder] = real == self.real_root or real.startswith(self.real_root + os.sep)
        return known

    def full(self, rel_path: str) -> str:
        """The absolute path of `rel_path`, refused when it would leave the root."""
        full = os.path.join(self.root, *_plain_parts(rel_path))
        if not self.folder_inside(os.path.dirname(full)):
            raise RootError(f"{full} lies outside the image root {self.root} (through a link)")
        return full

    def write_many(self, files: Sequence[tuple[str, bytes]]) -> tuple[int, RootError | OSError | None]:
        """Write (relative path, bytes) files atomically (layout.write_atomic), in order, creating their
        folders; how many were written, and the error that stopped the rest (None when none did).

        Each folder is reached from the root one component at a time, never through a link (RootError
        when a component is a link or not a folder), and kept open: a chunk writes all its images into
        one folder, so each image costs an open, a write, a close and a rename, all relative to it.
        """
        try:  # every path is checked before anything is written
            checked = [(_plain_parts(rel), data) for rel, data in files]
        except RootError as exc:
            return 0, exc
        written = 0
        for folder, group in itertools.groupby(checked, key=lambda item: item[0][:-1]):
            group = list(group)
            try:
                fd = self._folder(folder)
            except (RootError, OSError) as exc:
                return written, exc
            count, error = write_atomic(fd, [parts[-1] for parts, _ in group], [data for _, data in group])
            written += count
            if error is not None:
                return written, error
        return written, None

    def _folder(self, parts: list[str]) -> int:
        """The descriptor of the folder at `parts`, opened (and created) when it is not the one kept open."""
        folder = "/".join(parts)
        if self._open is None or self._open[0] != folder:
            fd = self._open_folder(parts)
            self.close()
            self._open = (folder, fd)
        return self._open[1]

    def _open_folder(self, parts: list[str]) -> int:
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for depth, part in enumerate(parts):
                try:
                    child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    with contextlib.suppress(FileExistsError):  # another worker may create it first
                        os.mkdir(part, dir_fd=fd)
                    child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                where = os.path.join(self.root, *parts[:depth + 1])
                raise RootError(f"{where} is a link or not a folder: images are never written through it") from None
            raise
        return fd

    def read(self, rel_path: str, limit: int | None = None) -> tuple[int, bytes]:
        """(size, bytes) of a regular file inside the root, never through a link, never blocking.

        Raises FileNotFoundError when absent and OSError (errno ELOOP for a link, EINVAL for a
        non-regular file) when it cannot be read as an image.
        """
        fd = os.open(self.full(rel_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            chunks, left = [], info.st_size if limit is None else min(limit, info.st_size)
            while left > 0:
                chunk = os.read(fd, left)
                if not chunk:
                    break
                chunks.append(chunk)
                left -= len(chunk)
            return info.st_size, b"".join(chunks)
        finally:
            os.close(fd)

    def remove(self, rel_path: str) -> bool:
        """Remove one of our files: a regular file named as our image or temp file, inside the root.

        Returns False (touching nothing) for anything else; a file already gone is True.
        """
        name = os.path.basename(rel_path)
        if parse_relative_path(rel_path) is None and not is_temp_name(name):
            return False
        try:
            full = self.full(rel_path)
        except RootError:
            return False
        try:
            info = os.lstat(full)
        except FileNotFoundError:
            return True
        if not stat.S_ISREG(info.st_mode):
            return False
        os.unlink(full)
        return True

    def walk(self, tops: list[str]) -> Iterator[tuple[str, str]]:
        """(kind, relative path) of every entry below the given top folders (relative, '/'-separated):
        kind is 'file' for regular files, 'temp' for our temp files, 'foreign' for links, pipes,
        sockets and devices. Links to folders are reported, never entered."""
        for top in tops:
            start = os.path.join(self.root, *top.split("/")) if top else self.root
            try:
                info = os.lstat(start)
            except FileNotFoundError:
                continue
            if not stat.S_ISDIR(info.st_mode):
                yield "foreign", top
                continue
            yield from self._walk(start, f"{top}/" if top else "")

    def _walk(self, folder: str, prefix: str) -> Iterator[tuple[str, str]]:
        """Entries of `folder`, whose path relative to the root is `prefix` ('' or ending in '/')."""
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            yield "foreign", prefix.rstrip("/")
            return
        for entry in entries:
            rel = prefix + entry.name
            if not prefix and entry.name == MARKER:
                continue
            if entry.is_dir(follow_symlinks=False):
                yield from self._walk(entry.path, rel + "/")
            elif entry.is_file(follow_symlinks=False):
                yield ("temp" if is_temp_name(entry.name) else "file"), rel
            else:
                yield "foreign", rel


class FileQueue(Generic[K]):
    """Files written under an image root on a background thread while the caller goes on (draws the
    next image).

    Files go out in batches of `batch`, in the order added; each batch is one `Tree.write_many` call,
    which writes with the GIL released (cache/_files.c), so writing costs the drawing thread almost
    nothing where a second core is free. At most `ahead` batches wait (flat memory). After a failure
    nothing more is written, and `failed` tells the caller to stop drawing. A context manager: leaving
    it drops what is not yet written. The Tree, and the folder it keeps open, belong to the writing
    thread alone, which also closes it: a second interrupt while the caller waits for the thread can
    never close a folder under a write (its descriptor number reused, the write would land elsewhere).
    """

    def __init__(self, root: str, batch: int = 64, ahead: int = 4) -> None:
        self.tree, self.batch, self.ahead = Tree(root), batch, ahead
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="files")
        self.waiting: list[tuple[tuple[str, bytes], K]] = []
        self.sent: collections.deque[tuple[Future, tuple, list[K]]] = collections.deque()
        self.written: list[K] = []
        self.failure: tuple[str, RootError | OSError] | None = None
        self.failed = False  # set by the writing thread (after a failure, or when the queue is left)

    def __enter__(self) -> "FileQueue[K]":
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.pool.submit(self.tree.close)  # on the writing thread, after its last write
        finally:
            self.failed = True  # batches still queued write nothing
            self.pool.shutdown(wait=True)

    def add(self, rel_path: str, data: bytes, key: K) -> None:
        """Queue a file; `key` (e.g. its index row) comes back from `finish` once the file is written."""
        self.waiting.append(((rel_path, data), key))
        if len(self.waiting) >= self.batch:
            self._send()

    def finish(self) -> tuple[list[K], tuple[str, RootError | OSError] | None]:
        """Wait for every queued file: the keys of those written, in order, and the path and error of
        the file that stopped the rest (None when none did)."""
        self._send()
        while self.sent:
            self._collect()
        return self.written, self.failure

    def _send(self) -> None:
        if self.waiting:
            files, keys = zip(*self.waiting)
            self.waiting = []
            self.sent.append((self.pool.submit(self._write, files), files, list(keys)))
        while len(self.sent) > self.ahead:
            self._collect()

    def _write(self, files: Sequence[tuple[str, bytes]]) -> tuple[int, RootError | OSError | None]:
        if self.failed:
            return 0, None
        try:
            written, error = self.tree.write_many(files)
        except BaseException:
            self.failed = True
            raise
        if error is not None:
            self.failed = True  # never set back: leaving the queue sets it too
        return written, error

    def _collect(self) -> None:
        future, files, keys = self.sent.popleft()
        written, error = future.result()
        self.written += keys[:written]
        if error is not None and self.failure is None:
            self.failure = files[written][0], error
