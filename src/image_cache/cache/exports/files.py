"""File helpers shared by the format writers: checked reads, copies that share no inode with the cache,
deterministic tar members, SHA256SUMS and the export marker; the leftovers of killed exports and previews."""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import tarfile
from typing import Any, BinaryIO

from image_cache.cache.exports.select import Sample
from image_cache.cache.root import RootError, Tree
from image_cache.core.errors import ImageCacheError

FICLONE = 0x40049409  # Linux ioctl: copy-on-write clone of a whole file (btrfs, XFS); never a shared inode
MARKER = ".image_cache-export.json"  # names a folder as an export we wrote, which `--force` may replace
MARKER_TEXT = '{"written_by": "image_cache export"}\n'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return pid != os.getpid()  # ours: a leftover of this process is its own to clear


def killed_leftovers(target: str) -> list[tuple[str, str]]:
    """(path, 'tmp' or 'old') of each `.NAME.PID.tmp` / `.NAME.PID.old` next to `target` (NAME its base name)
    whose process is gone: what an export or preview of `target` killed before it finished left. Links are
    never listed; whether an entry is the caller's own is the caller's to check. `.old` first: it may go
    back into place."""
    parent, base = os.path.split(target)
    ours = re.compile(rf"\.{re.escape(base)}\.(\d+)\.(tmp|old)")
    try:
        names = os.listdir(parent)
    except OSError:
        return []  # no folder to clear: the command itself says why it cannot write there
    found = []
    for name in sorted(names, key=lambda n: n.endswith(".tmp")):
        match = ours.fullmatch(name)
        path = os.path.join(parent, name)
        if match and not _alive(int(match[1])) and not os.path.islink(path):
            found.append((path, match[2]))
    return found


def dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _read_checked(handle, path: str, sample: Sample) -> bytes:
    data = handle.read()
    if hashlib.sha256(data).hexdigest() != sample.sha256:
        raise ImageCacheError(f"{path} differs from its index row (run verify --deep, then repair)")
    return data


def _open_image(image_root: str, sample: Sample) -> BinaryIO:
    """The image file, opened through folders opened one at a time from the root: never through a link
    (its own or a folder's on the way), never blocking on a pipe, nothing but a regular file."""
    path = os.path.join(image_root, sample.file_path)
    try:
        with Tree(image_root) as tree:
            return open(tree.open_file(sample.file_path), "rb")
    except RootError as exc:
        raise ImageCacheError(f"cannot read {path}: {exc} (run verify, then repair)") from None
    except OSError as exc:
        raise _unreadable(path, exc) from None


def checked_bytes(image_root: str, sample: Sample) -> bytes:
    """The image's bytes, refused unless they hash to the index's SHA-256 (links are not followed)."""
    path = os.path.join(image_root, sample.file_path)
    with _open_image(image_root, sample) as handle:
        try:
            return _read_checked(handle, path, sample)
        except OSError as exc:
            raise _unreadable(path, exc) from None


def _unreadable(path: str, exc: OSError) -> ImageCacheError:
    return ImageCacheError(f"cannot read {path}: {exc.strerror or exc} (run verify, then repair)")


def copy_image(image_root: str, sample: Sample, target: str) -> None:
    """A checked copy of the image at `target`: a copy-on-write clone where the file system has them,
    else the bytes; never a hard link, so editing the export cannot change the cache."""
    path = os.path.join(image_root, sample.file_path)
    with _open_image(image_root, sample) as source:
        try:
            data = _read_checked(source, path, sample)
        except OSError as exc:
            raise _unreadable(path, exc) from None
        # A failed write (a full disk) is the export's, not the cache's: its OSError goes to the caller.
        with open(target, "xb") as out:
            try:
                fcntl.ioctl(out.fileno(), FICLONE, source.fileno())
            except OSError:
                out.write(data)


def tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member with fixed mtime, owner and mode, so that the same samples give the same tar bytes."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_sha256sums(folder: str) -> int:
    """SHA256SUMS of every other file, sorted by path, in `sha256sum -c` format; returns the file count."""
    entries = []
    for parent, dirs, names in os.walk(folder):
        dirs.sort()
        for name in names:
            path = os.path.join(parent, name)
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            entries.append((os.path.relpath(path, folder).replace(os.sep, "/"), digest.hexdigest()))
    entries.sort()
    with open(os.path.join(folder, "SHA256SUMS"), "w", encoding="ascii") as handle:
        handle.writelines(f"{digest}  {path}\n" for path, digest in entries)
    return len(entries) + 1
