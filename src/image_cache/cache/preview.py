"""`preview`: a contact sheet of labelled sample images, for a person to see what a model will see.

Not part of the determinism contract (it draws text with Pillow's default font), but the sample is
deterministic: images spread evenly over the selected samples in key order. A sheet carries a text
chunk naming it as ours: `--force` replaces such a sheet and nothing else, and the next preview of a
target removes the temp sheets that killed previews of it left.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import stat
import struct
from dataclasses import dataclass, field
from typing import Any

from PIL import Image, ImageDraw, ImageFont, PngImagePlugin

from image_cache.cache.exports.files import killed_leftovers
from image_cache.cache.exports.labels import LabelRule
from image_cache.cache.exports.select import Sample, select
from image_cache.cache.market import Filters
from image_cache.cache.root import Tree
from image_cache.core.errors import ImageCacheError, os_error_message, storage_error
from image_cache.core.hooks import Warn, no_warn
from image_cache.settings import Settings

CELL = 256  # thumbnail edge in px
TEXT_ROWS = 2
LINE_PX = 14
MARGIN = 6
SHEET_KEY, SHEET_VALUE = "image_cache", "preview sheet"  # the PNG text chunk that makes a sheet ours
_SHEET_TEXT = f"{SHEET_KEY}\0{SHEET_VALUE}".encode("latin-1")
# How every sheet begins: the PNG signature, IHDR (8 + 25 bytes), then our text chunk (Pillow writes it first).
_SHEET_HEAD = struct.pack(">I", len(_SHEET_TEXT)) + b"tEXt" + _SHEET_TEXT


@dataclass
class PreviewResult:
    out: str
    keys: list[str] = field(default_factory=list)
    available: int = 0
    ok: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {"out": self.out, "keys": self.keys, "available": self.available}

    def text(self) -> str:
        return f"wrote {self.out}: {len(self.keys)} of {self.available} labelled images"


def pick(count: int, n: int) -> list[int]:
    """n positions spread evenly over range(count), first and last included."""
    if n >= count:
        return list(range(count))
    if n == 1:
        return [0]
    return [round(k * (count - 1) / (n - 1)) for k in range(n)]


def _thumbnail(tree: Tree, rel_path: str) -> Image.Image:
    """The image at `rel_path` under the root, opened through its folders' descriptors: never through a
    link, never blocking on a pipe, nothing but a regular file."""
    try:
        handle = open(tree.open_file(rel_path), "rb")
    except OSError as exc:
        raise ImageCacheError(f"cannot read an image for the preview: "
                          f"{os_error_message('open', os.path.join(tree.root, rel_path), exc)} (run verify)") from None
    with handle, Image.open(handle, formats=["PNG"]) as opened:
        image = opened.convert("RGB")
    scale = CELL / max(image.width, image.height)
    # Nearest neighbour keeps small (jkx) images' pixels sharp when enlarged.
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.NEAREST)


def caption(sample: Sample, horizons: tuple[int, ...]) -> tuple[str, str]:
    labels = " ".join(f"h{h}:{c} ({r:+.2%})" for h, c, r in zip(horizons, sample.classes, sample.returns, strict=True))
    return sample.key, labels


def contact_sheet(root: str, paths: list[str], captions: list[tuple[str, str]]) -> Image.Image:
    """The sheet of the images at `paths` (relative to the image root `root`), each with its caption."""
    columns = math.ceil(math.sqrt(len(paths)))
    rows = math.ceil(len(paths) / columns)
    cell_w, cell_h = CELL + 2 * MARGIN, CELL + 2 * MARGIN + TEXT_ROWS * LINE_PX
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    with Tree(root) as tree:
        for k, (path, lines) in enumerate(zip(paths, captions, strict=True)):
            x, y = (k % columns) * cell_w + MARGIN, (k // columns) * cell_h + MARGIN
            sheet.paste(_thumbnail(tree, path), (x, y))
            for line_no, line in enumerate(lines):
                draw.text((x, y + CELL + line_no * LINE_PX), line, fill="black", font=font)
    return sheet


def is_our_sheet(path: str) -> bool:
    """A regular file (not a link) that is a PNG carrying our text chunk."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as handle:
            if not os.path.isfile(path) or handle.read(8) != b"\x89PNG\r\n\x1a\n":
                return False
            handle.seek(0)
            with Image.open(handle, formats=["PNG"]) as image:
                return isinstance(image, PngImagePlugin.PngImageFile) and image.text.get(SHEET_KEY) == SHEET_VALUE
    except (OSError, SyntaxError, ValueError):
        return False


def _begun_as_sheet(path: str) -> bool:
    """A regular file (never a link) that begins as preview writes a sheet: a killed preview's temp file,
    whole or cut short after its text chunk. One cut shorter is not provably ours and is left alone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with open(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        head = handle.read(33 + len(_SHEET_HEAD))
    return head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[33:] == _SHEET_HEAD


def _clear_leftovers(target: str) -> None:
    """The temp sheets (`.OUT.PID.tmp`) that previews of `target` killed before they finished left next to
    it: removed when they are ours. Those of previews still running, and anything else, are left alone."""
    for path, kind in killed_leftovers(target):
        if kind == "tmp" and _begun_as_sheet(path):
            with contextlib.suppress(FileNotFoundError):  # another preview of it cleared it first
                os.remove(path)  # the name itself: a link put there meanwhile is removed, never its target


def check_target(out: str, force: bool) -> None:
    """Refuse an existing OUT, unless `force` and it is a sheet we wrote."""
    if not os.path.lexists(out):
        return
    if not force:
        raise ImageCacheError(f"{out} exists: choose a new file name (--force replaces a sheet written by preview)")
    if not is_our_sheet(out):
        raise ImageCacheError(f"{out} is not a preview sheet written by this tool: not replacing it")


def preview(settings: Settings, filters: Filters, out: str, n: int, horizons: tuple[int, ...], label: LabelRule,
            force: bool = False, warn: Warn = no_warn) -> PreviewResult:
    """Write a contact sheet of n labelled images of the configured preset to `out` (a new PNG)."""
    _clear_leftovers(os.path.abspath(out))
    check_target(out, force)
    samples = sorted(select(settings, filters, horizons, label, warn).samples, key=lambda s: s.key)
    if not samples:
        raise ImageCacheError("nothing to preview: no labelled images of this preset in range (run render first?)")
    chosen = [samples[i] for i in pick(len(samples), n)]
    root = os.path.abspath(settings.image_root_dir)
    try:
        sheet = contact_sheet(root, [s.file_path for s in chosen],
                              [caption(s, horizons) for s in chosen])
    except OSError as exc:
        raise ImageCacheError(f"cannot read an image for the preview: {exc} (run verify)") from None
    _save(sheet, out, force)
    return PreviewResult(out, [s.key for s in chosen], len(samples))


def _save(sheet: Image.Image, out: str, force: bool) -> None:
    """Write a temp file next to OUT, created exclusively and never through a link, then link it into place
    (which never replaces a file that appeared meanwhile) or, with `force`, rename it over a sheet of ours;
    all relative to OUT's folder, opened once."""
    folder, name = os.path.split(os.path.abspath(out))
    temp = f".{name}.{os.getpid()}.tmp"
    info = PngImagePlugin.PngInfo()
    info.add_text(SHEET_KEY, SHEET_VALUE)
    created = False
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise storage_error("write", out, exc) from None
    try:
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
        except FileExistsError:
            raise ImageCacheError(f"{os.path.join(folder, temp)} exists and is not this preview's: remove it") from None
        created = True
        with os.fdopen(fd, "wb") as handle:
            sheet.save(handle, format="PNG", pnginfo=info)
        if force and os.path.lexists(out):
            check_target(out, force)
            os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        else:
            _link_new(dir_fd, temp, name)
    except FileExistsError:
        raise ImageCacheError(f"{out} exists: choose a new file name (--force replaces a sheet written by preview)") \
            from None
    except OSError as exc:
        raise storage_error("write", out, exc) from None
    finally:
        if created:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=dir_fd)
        os.close(dir_fd)


def _link_new(dir_fd: int, temp: str, name: str) -> None:
    """`name` as a new name of the finished temp file; a plain exclusive create where links are not allowed."""
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise
    except OSError:
        with open(os.open(temp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd), "rb") as source, \
                open(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                             dir_fd=dir_fd), "wb") as handle:
            shutil.copyfileobj(source, handle)
