"""Ownership of the image root: its marker, and the only ways cache/ writes, reads, lists and removes files there.

A folder is an image root only when it carries our marker, written by the first render and naming
the index it belongs to; verify and repair refuse any other folder. Inside it, nothing outside the
root is ever written, read or removed: links are never followed (images are written into folders
opened one component at a time with O_NOFOLLOW, and every open, check, rename and removal is made
relative to such a folder's descriptor; walks do not descend into links), non-regular files are never
opened, and only regular files whose names are ours (images, temp files) are removed.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import itertools
import json
import os
import stat
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

from image_cache.cache import index
from image_cache.cache.layout import TEMP_SUFFIX, is_temp_name, parse_relative_path, write_atomic
from image_cache.core.errors import ImageCacheError, RootError, os_error_message, storage_error
from image_cache.core.grid import INTERVAL_MS, SYMBOL_RE

MARKER = ".image_cache_root"
MARKER_KIND = "image_cache image root"
# Each folder on the way to an image: opened relative to its parent, never through a link.
_FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
K = TypeVar("K")


@dataclass(frozen=True)
class Marker:
    index_id: str
    index_path: str


def _open_root(root: str) -> int:
    """The root's descriptor, never through a link: every marker and file call is made relative to it."""
    try:
        return os.open(root, _FOLDER_FLAGS)
    except FileNotFoundError:
        raise RootError(f"image root not found: {root}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise RootError(f"image root {root} is a symbolic link; give the real folder") from None
        if exc.errno == errno.ENOTDIR:
            raise RootError(f"image root {root} exists and is not a folder") from None
        raise RootError(os_error_message("open the image root", root, exc)) from None


@contextlib.contextmanager
def _root_fd(root: str) -> Iterator[int]:
    fd = _open_root(root)
    try:
        yield fd
    finally:
        os.close(fd)


def read_marker(root: str) -> Marker | None:
    with _root_fd(root) as fd:
        return _read_marker(fd, root)


def _read_marker(fd: int, root: str) -> Marker | None:
    path = os.path.join(root, MARKER)
    try:
        marker = os.open(MARKER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise RootError(f"cannot read the image root marker {path}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(marker).st_mode):
            raise RootError(f"{path} is not a regular file: not an image root marker")
        data = os.read(marker, 65536)
    finally:
        os.close(marker)
    try:
        content = json.loads(data)
        if content.get("kind") != MARKER_KIND:
            raise ValueError
        return Marker(str(content["index_id"]), str(content["index_path"]))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise RootError(f"{path} is not an image root marker written by image_cache") from None


def _write_marker(fd: int, index_id: str, index_path: str, replace: bool) -> bool:
    """Write the marker through a temp file created exclusively in the root. Without `replace` it is
    linked to the marker's name, which fails when a marker exists (two first renders: one owner):
    False then, and nothing changed."""
    temp = f"{MARKER}.{os.getpid()}{TEMP_SUFFIX}"
    with contextlib.suppress(FileNotFoundError):  # left by a killed process with our pid
        os.unlink(temp, dir_fd=fd)
    out = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=fd)
    try:
        with os.fdopen(out, "w") as handle:
            json.dump({"kind": MARKER_KIND, "index_id": index_id, "index_path": os.path.abspath(index_path)}, handle)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        if replace:
            os.replace(temp, MARKER, src_dir_fd=fd, dst_dir_fd=fd)
            return True
        try:
            os.link(temp, MARKER, src_dir_fd=fd, dst_dir_fd=fd, follow_symlinks=False)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=fd)


def _looks_like_ours(fd: int) -> bool:
    """Only symbol folders (a folder written by a version before markers) and our temp files (a render
    killed while writing the marker) at the top, and nothing else."""
    with os.scandir(fd) as entries:
        return all((entry.is_dir(follow_symlinks=False) and SYMBOL_RE.match(entry.name))
                   or (entry.is_file(follow_symlinks=False) and is_temp_name(entry.name)) for entry in entries)


def owner_gone(marker: Marker, own_index_path: str) -> str | None:
    """Why the index the marker names no longer owns the root (it is gone, or is not that index any
    more), or None when it is there: a healthy (or merely damaged) owner is never displaced."""
    if marker.index_path == os.path.abspath(own_index_path):
        return "was replaced by a new index at the same path"
    try:
        kind = index.identify(marker.index_path)
        if kind == "absent":
            return "no longer exists"
        if kind in ("empty", "not-sqlite", "other-sqlite"):
            return "is not an image index"
        if kind == "index" and index.id_at(marker.index_path) != marker.index_id:
            return "now holds another index"
    except (OSError, ImageCacheError):
        pass  # cannot tell: treated as present
    return None


def claim(root: str, index_id: str, index_path: str) -> str | None:
    """Before render writes: make sure `root` is ours, marking it when it is new or empty.

    A root marked for another index is refused, naming it, unless that index is gone or not an index
    (owner_gone): then it is taken over and the note returned says so. A marker naming this index's id at
    another path that is gone (a moved index, one rebuilt by `repair --reindex`) is made to name this path.
    A folder holding anything else is refused.
    """
    try:
        return _claim(root, index_id, index_path)
    except OSError as exc:  # a read-only or full file system, a folder we may not write: one line
        raise storage_error("write the marker of image root", root, exc) from None


def _claim(root: str, index_id: str, index_path: str) -> str | None:
    if not os.path.lexists(root):
        os.makedirs(root, exist_ok=True)
    with _root_fd(root) as fd:
        _take_turns(fd, root)  # two claims at once (two takeovers of a gone owner) would both win
        for _ in range(2):  # a first render racing ours may create the marker in between
            marker = _read_marker(fd, root)
            if marker is None:
                if not _looks_like_ours(fd):
                    raise RootError(f"image root {root} is not empty and has no image_cache marker ({MARKER}): "
                                    "refusing to write images into a folder that is not ours; choose an empty or "
                                    "new folder")
                if _write_marker(fd, index_id, index_path, replace=False):
                    return None
                continue
            ours = marker.index_id == index_id
            if ours and marker.index_path == os.path.abspath(index_path):
                return None
            why = owner_gone(marker, index_path)
            if why is None:
                if ours:  # this index's copy (or itself, by another path) is still where the marker says
                    return None
                raise RootError(f"image root {root} belongs to another index, {marker.index_path}: pass that "
                                "index with --index-db, or choose another --image-root")
            _write_marker(fd, index_id, index_path, replace=True)
            return f"took over image root {root}: its owner index {marker.index_path} {why}"
    raise RootError(f"the marker of image root {root} changed while it was being claimed; run again")


def _take_turns(fd: int, root: str, wait_s: float = 10.0) -> None:
    """Hold an flock on the root's folder while claiming it (released when `fd` closes); a claim takes
    milliseconds, so a root still held after `wait_s` is an error, never a wait without end."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise RootError(f"image root {root} is being claimed by another run; run again") from None
            time.sleep(0.01)


def check_owned(root: str, index_id: str | None) -> Marker:
    """For verify and repair: `root` carries our marker (for this index, when `index_id` is given)."""
    with _root_fd(root) as fd:
        marker = _read_marker(fd, root)
        if marker is None:
            hint = " (written by a version before markers? run `render` once to mark it)" if _looks_like_ours(fd) \
                else ""
            raise RootError(f"{root} is not an image root: it has no image_cache marker ({MARKER}){hint}; "
                            "expected the folder render writes images into (--image-root)")
    if index_id is not None and marker.index_id != index_id:
        raise RootError(f"image root {root} belongs to another index, {marker.index_path}: "
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
    """Every write, read, removal and listing under one root, each made relative to a folder opened
    from the root one component at a time, never through a link: a check and the act it guards use
    the same descriptor, so a folder swapped for a link in between cannot lead outside the root.
    A context manager: closing it closes the folder it keeps open (the one last used)."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self._open: tuple[str, int] | None = None  # the folder last used, and its descriptor

    def __enter__(self) -> Tree:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the folder kept open."""
        if self._open is not None:
            os.close(self._open[1])
            self._open = None

    def write_many(self, files: Sequence[tuple[str, bytes]]) -> tuple[int, RootError | OSError | None]:
        """Write (relative path, bytes) files atomically (layout.write_atomic), in order, creating their
        folders; how many were written, and the error that stopped the rest (None when none did).

        A chunk writes all its images into one folder, kept open, so each image costs an open, a
        write, a close and a rename, all relative to it.
        """
        try:  # every path is checked before anything is written
            checked = [(_plain_parts(rel), data) for rel, data in files]
        except RootError as exc:
            return 0, exc
        written = 0
        for folder, grouped in itertools.groupby(checked, key=lambda item: item[0][:-1]):
            group = list(grouped)
            try:
                fd = self._folder(folder, create=True)
            except (RootError, OSError) as exc:
                return written, exc
            count, error = write_atomic(fd, [parts[-1] for parts, _ in group], [data for _, data in group])
            written += count
            if error is not None:
                return written, error
        return written, None

    def _folder(self, parts: list[str], create: bool = False) -> int:
        """The descriptor of the folder at `parts`, opened (and, with `create`, created) when it is not the
        one kept open. FileNotFoundError when absent; RootError when a component is a link or no folder."""
        folder = "/".join(parts)
        if self._open is None or self._open[0] != folder:
            fd = self._open_folder(parts, create)
            self.close()
            self._open = (folder, fd)
        return self._open[1]

    def _open_folder(self, parts: list[str], create: bool) -> int:
        fd = _open_root(self.root)
        depth = 0
        try:
            for depth, part in enumerate(parts):  # noqa: B007 - the except below names the part that failed
                try:
                    child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise
                    with contextlib.suppress(FileExistsError):  # another worker may create it first
                        os.mkdir(part, dir_fd=fd)
                    child = os.open(part, _FOLDER_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = child
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                where = os.path.join(self.root, *parts[:depth + 1])
                raise RootError(f"{where} is a link or not a folder: never followed") from None
            raise
        return fd

    def read(self, rel_path: str, limit: int | None = None) -> tuple[int, bytes]:
        """(size, bytes) of a regular file inside the root, never through a link, never blocking.

        Raises FileNotFoundError when absent, RootError when a folder on the way is a link, and
        OSError (errno ELOOP for a link, EINVAL for a non-regular file) when it cannot be read as an image.
        """
        fd = self.open_file(rel_path)
        try:
            info = os.fstat(fd)
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

    def open_file(self, rel_path: str) -> int:
        """A read-only descriptor (the caller's to close) of the regular file at `rel_path`, opened relative
        to its folder, never through a link, never blocking; the errors of `read`."""
        parts = _plain_parts(rel_path)
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                     dir_fd=self._folder(parts[:-1]))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def entry(self, rel_path: str) -> str | None:
        """What is at `rel_path`: None (nothing), 'file' (a regular file), or what else it is (a folder, a
        link, a pipe...), which a write must never replace. RootError when a folder on the way is a link."""
        parts = _plain_parts(rel_path)
        try:
            info = os.stat(parts[-1], dir_fd=self._folder(parts[:-1]), follow_symlinks=False)
        except FileNotFoundError:
            return None
        kinds = {stat.S_IFREG: "file", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a link", stat.S_IFIFO: "a pipe"}
        return kinds.get(stat.S_IFMT(info.st_mode), "a special file")

    def remove(self, rel_path: str) -> bool:
        """Remove one of our files: a regular file named as our image or temp file, inside the root,
        checked and unlinked relative to the same folder descriptor.

        Returns False (touching nothing) for anything else; a file already gone is True. RootError
        (one line) when the removal itself fails (a read-only root, a folder we may not write).
        """
        parts = _plain_parts(rel_path)
        if parse_relative_path(rel_path) is None and not is_temp_name(parts[-1]):
            return False
        try:
            fd = self._folder(parts[:-1])
            if not stat.S_ISREG(os.stat(parts[-1], dir_fd=fd, follow_symlinks=False).st_mode):
                return False
            os.unlink(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            return True
        except RootError:
            return False
        except OSError as exc:
            raise RootError(os_error_message("remove", os.path.join(self.root, *parts), exc)) from None
        return True

    def walk(self, tops: list[str]) -> Iterator[tuple[str, str]]:
        """(kind, relative path) of every entry below the given top folders (relative, '/'-separated):
        kind is 'file' for regular files, 'temp' for our temp files, 'foreign' for links, pipes,
        sockets and devices. Each folder is opened relative to its parent; links are reported, never entered."""
        for top in tops:
            try:
                fd = self._open_folder(top.split("/") if top else [], create=False)
            except FileNotFoundError:
                continue
            except (RootError, OSError):
                yield "foreign", top
                continue
            try:
                yield from self._walk(fd, f"{top}/" if top else "")
            finally:
                os.close(fd)

    def _walk(self, fd: int, prefix: str) -> Iterator[tuple[str, str]]:
        """Entries of the folder open as `fd`, whose path relative to the root is `prefix` ('' or ending in '/'):
        depth first, each folder's entries in name order. A stack of its own, not recursion: a folder nested
        thousands deep is walked (or, past the descriptors we may open, reported), never a RecursionError."""
        entries = _listing(fd)
        if entries is None:
            yield "foreign", prefix.rstrip("/")
            return
        stack: list[tuple[int, str, Iterator[os.DirEntry]]] = [(fd, prefix, iter(entries))]  # fd: the caller's
        try:
            while stack:
                folder, where, left = stack[-1]
                entry = next(left, None)
                if entry is None:
                    stack.pop()
                    if stack:  # a folder this walk opened
                        os.close(folder)
                    continue
                rel = where + entry.name
                if not where and entry.name == MARKER:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    if parse_relative_path(rel) is not None:  # a folder where an image belongs: one entry, not entered
                        yield "foreign", rel
                        continue
                    try:
                        child = os.open(entry.name, _FOLDER_FLAGS, dir_fd=folder)
                    except OSError:  # swapped for a link since it was listed, or not readable
                        yield "foreign", rel
                        continue
                    children = _listing(child)
                    if children is None:
                        os.close(child)
                        yield "foreign", rel
                        continue
                    stack.append((child, rel + "/", iter(children)))
                elif entry.is_file(follow_symlinks=False):
                    yield ("temp" if is_temp_name(entry.name) else "file"), rel
                else:
                    yield "foreign", rel
        finally:
            for folder, _, _ in stack[1:]:
                os.close(folder)


def _listing(fd: int) -> list[os.DirEntry] | None:
    """The entries of the folder open as `fd`, in name order; None when it cannot be listed."""
    try:
        return sorted(os.scandir(fd), key=lambda e: e.name)
    except OSError:
        return None


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

    def __enter__(self) -> FileQueue[K]:
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
            files, keys = zip(*self.waiting, strict=True)
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
