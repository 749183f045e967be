"""numpy: per split `SPLIT/images.npy` (N, H, W) uint8 that opens with `np.load(mmap_mode="r")`, and
`SPLIT/labels.parquet` in the same order, as the Jiang-Kelly-Xiu replication data is shared.

Grayscale presets store the gray levels; palette presets store palette indices, with the palette in
`palette.npy` (K, 3); RGB presets store (N, H, W, 3).
"""

from __future__ import annotations

import io
import os

import numpy as np
from PIL import Image

from image_cache.cache.exports.base import Feature, Format, Job, record_features
from image_cache.cache.exports.files import checked_bytes
from image_cache.cache.exports.parquet import write_table
from image_cache.core.errors import ImageCacheError


class Palette:
    """One palette for the whole export, in order of first appearance; maps each image's indices onto it."""

    def __init__(self) -> None:
        self.colours: list[bytes] = []
        self._lookup: dict[bytes, np.ndarray | None] = {}  # an image palette -> index map (None: identity)

    def indices(self, image: Image.Image) -> np.ndarray:
        raw = bytes(image.getpalette() or b"")
        if raw not in self._lookup:
            table = np.zeros(256, dtype=np.uint8)
            for k in range(len(raw) // 3):
                colour = raw[3 * k:3 * k + 3]
                if colour not in self.colours:
                    if len(self.colours) == 256:
                        raise ImageCacheError("the images use more than 256 colours together: no common palette")
                    self.colours.append(colour)
                table[k] = self.colours.index(colour)
            # The usual case, one palette for every image: its indices are already ours, no remapping.
            self._lookup[raw] = None if (table[:len(raw) // 3] == np.arange(len(raw) // 3)).all() else table
        table = self._lookup[raw]
        pixels = np.asarray(image)
        return pixels if table is None else table[pixels]

    def array(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.colours), dtype=np.uint8).reshape(-1, 3)


def _pixels(data: bytes, palette: Palette) -> tuple[np.ndarray, str]:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if image.mode == "P":
            return palette.indices(image), "P"
        if image.mode not in ("L", "RGB"):
            image = image.convert("RGB")
        return np.asarray(image), image.mode


def _write_images(path: str, job: Job, samples: list, palette: Palette) -> None:
    """images.npy written front to back with plain writes, never through a memory map: a full disk is
    then an OSError (ENOSPC) to report, where a store into a mapped page past the disk's end is SIGBUS."""
    with open(path, "xb") as handle:
        shape = None
        for sample in samples:
            pixels, mode = _pixels(checked_bytes(job.image_root, sample), palette)
            if shape is None:
                shape = pixels.shape
                np.lib.format.write_array_header_1_0(handle, {
                    "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                    "shape": (len(samples), *shape)})
            if pixels.shape != shape:
                raise ImageCacheError(f"{sample.file_path}: {pixels.shape} pixels, the others {shape}")
            handle.write(np.ascontiguousarray(pixels, dtype=np.uint8).data)


def write(folder: str, job: Job) -> None:
    palette = Palette()
    for split in job.present():
        samples = job.per_split[split]
        os.makedirs(os.path.join(folder, split))
        _write_images(os.path.join(folder, split, "images.npy"), job, samples, palette)
        write_table(os.path.join(folder, split, "labels.parquet"), record_features(job),
                    [job.record(sample) for sample in samples])
    if palette.colours:
        np.save(os.path.join(folder, "palette.npy"), palette.array())


def no_features(job: Job) -> list[Feature]:
    return []


def snippets(job: Job) -> list[tuple[str, str]]:
    first = job.present()[0]
    return [("numpy", 'import numpy as np\nimport pandas as pd\n\n'
                      f'images = np.asarray(np.load("OUT/{first}/images.npy", mmap_mode="r"))  # (N, H, W) uint8, '
                      'mapped\n'
                      f'labels = pd.read_parquet("OUT/{first}/labels.parquet").label.to_numpy()  # same order')]


FORMAT = Format(
    name="numpy", help="SPLIT/images.npy (N, H, W) uint8 + SPLIT/labels.parquet, memory-mappable", write=write,
    layout="`SPLIT/images.npy`: uint8 array (N, H, W) in sample-key order (gray levels, or palette indices "
           "into `palette.npy` (K, 3) RGB; (N, H, W, 3) for RGB presets), opens with "
           "`np.load(..., mmap_mode=\"r\")`. `SPLIT/labels.parquet`: the metadata of row k of `images.npy` "
           "in its row k.",
    data_files=None, features=no_features, snippets=snippets)
