"""numpy: per split `SPLIT/images.npy` (N, H, W) uint8 that opens with `np.load(mmap_mode="r")`, and
`SPLIT/labels.parquet` in the same order, as the Jiang-Kelly-Xiu replication data is shared.

`--mode palette` stores palette indices, with the palette in `palette.npy` (K, 3); `gray` gray levels;
`rgb` (N, H, W, 3). `--array-file dat` writes `SPLIT/images.dat` instead: the same bytes without the
`.npy` header, as the replication code opens them (`np.memmap(path, np.uint8).reshape(-1, H, W)`), with
shape and dtype in `SPLIT/images.json`. The size is logged first, and the export refused when the disk
cannot hold it.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
from PIL import Image

from image_cache.cache.exports.base import Feature, Format, Job, record_features
from image_cache.cache.exports.files import checked_bytes
from image_cache.cache.exports.parquet import write_table
from image_cache.cache.exports.select import Sample
from image_cache.chart.modes import PIL_MODES
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
        lookup = self._lookup[raw]
        pixels = np.asarray(image)
        return pixels if lookup is None else lookup[pixels]

    def array(self) -> np.ndarray:
        return np.frombuffer(b"".join(self.colours), dtype=np.uint8).reshape(-1, 3)


def _pixels(data: bytes, mode: str, palette: Palette) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        if mode == "palette":
            return palette.indices(image)
        return np.asarray(image if image.mode == PIL_MODES[mode] else image.convert(PIL_MODES[mode]))


def _shape(sample: Sample, mode: str) -> tuple[int, ...]:
    return (sample.height, sample.width, 3) if mode == "rgb" else (sample.height, sample.width)


def _write_images(path: str, job: Job, samples: list[Sample], palette: Palette) -> None:
    """The image array written front to back with plain writes, never through a memory map: a full disk is
    then an OSError (ENOSPC) to report, where a store into a mapped page past the disk's end is SIGBUS."""
    shape = _shape(samples[0], job.mode)
    with open(path, "xb") as handle:
        if job.options.array_file == "npy":
            np.lib.format.write_array_header_1_0(handle, {
                "descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                "shape": (len(samples), *shape)})
        for sample in samples:
            pixels = _pixels(checked_bytes(job.image_root, sample), job.mode, palette)
            if pixels.shape != shape:
                raise ImageCacheError(f"{sample.file_path}: {pixels.shape} pixels, the others {shape}")
            handle.write(np.ascontiguousarray(pixels, dtype=np.uint8).data)
    if job.options.array_file == "dat":
        with open(path[:-len(".dat")] + ".json", "x", encoding="utf-8") as handle:
            json.dump({"shape": [len(samples), *shape], "dtype": "uint8", "order": "C"}, handle)
            handle.write("\n")


def check_size(folder: str, job: Job) -> int:
    """The arrays' bytes, logged before writing; refused when the disk holding `folder` has less free."""
    size = sum(int(np.prod(_shape(s, job.mode))) for split in job.present() for s in job.per_split[split])
    free = shutil.disk_usage(folder).free
    job.warn(f"numpy: {sum(len(job.per_split[s]) for s in job.present())} images, {size / 1e6:,.1f} MB of "
             f"arrays ({free / 1e6:,.1f} MB free)")
    if size > free:
        raise ImageCacheError(f"numpy: the arrays need {size / 1e6:,.1f} MB, the disk holding {folder} has "
                              f"{free / 1e6:,.1f} MB free: free space, or export png formats (parquet, "
                              "webdataset, imagefolder), which are 10-100 times smaller")
    return size


def write(folder: str, job: Job) -> None:
    check_size(folder, job)
    palette = Palette()
    name = f"images.{job.options.array_file}"
    for split in job.present():
        samples = job.per_split[split]
        os.makedirs(os.path.join(folder, split))
        _write_images(os.path.join(folder, split, name), job, samples, palette)
        write_table(os.path.join(folder, split, "labels.parquet"), record_features(job),
                    [job.record(sample) for sample in samples])
    if palette.colours:
        np.save(os.path.join(folder, "palette.npy"), palette.array())


def features(job: Job) -> list[Feature]:
    return record_features(job)


def snippets(job: Job) -> list[tuple[str, str]]:
    first, s = job.present()[0], job.per_split[job.present()[0]][0]
    shape = ", ".join(str(k) for k in _shape(s, job.mode))
    if job.options.array_file == "dat":
        images = (f'images = np.memmap("OUT/{first}/images.dat", dtype=np.uint8, mode="r").reshape(-1, {shape})'
                  f'  # shape and dtype: OUT/{first}/images.json')
    else:
        images = f'images = np.asarray(np.load("OUT/{first}/images.npy", mmap_mode="r"))  # (N, {shape}) uint8, mapped'
    return [("numpy", 'import numpy as np\nimport pandas as pd\n\n' + images + '\n'
                      f'labels = pd.read_parquet("OUT/{first}/labels.parquet").label.to_numpy()  # same order'
                      + ('\ncolours = np.load("OUT/palette.npy")[images[0]]  # (H, W, 3) RGB'
                         if job.mode == "palette" else '')),
            ("datasets", 'from datasets import load_dataset\n\n'
                         'labels = load_dataset("OUT")  # the label tables only: the images are the arrays above')]


FORMAT = Format(
    name="numpy", help="SPLIT/images.npy (N, H, W) uint8 + SPLIT/labels.parquet, memory-mappable", write=write,
    layout="`SPLIT/images.npy` (or, with `--array-file dat`, a headerless `SPLIT/images.dat` with its shape and "
           "dtype in `SPLIT/images.json`): uint8 array (N, H, W) in sample-key order (gray levels, or palette "
           "indices into `palette.npy` (K, 3) RGB; (N, H, W, 3) in mode rgb), opens with "
           "`np.load(..., mmap_mode=\"r\")`. `SPLIT/labels.parquet`: the metadata of row k of the images in its "
           "row k. The images are for numpy: `load_dataset(OUT)` loads the label tables only.",
    data_files="{split}/labels.parquet", features=features, snippets=snippets, palette_mode="palette")
