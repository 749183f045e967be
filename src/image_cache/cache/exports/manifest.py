"""manifest: per split, `manifest/SPLIT.parquet`, one row per image pointing into the cache (`path`
relative to the image root; `image` the Hugging Face Image struct with the absolute path and no bytes, so
that `load_dataset(OUT)` opens the cached files): no copies, for users who read the images where they are."""

from __future__ import annotations

import os

from image_cache.cache.exports.base import SHAPES, Feature, Format, Job, image_feature, record_features
from image_cache.cache.exports.files import checked_bytes
from image_cache.cache.exports.parquet import write_table
from image_cache.chart.modes import PIL_MODES


def write(folder: str, job: Job) -> None:
    os.makedirs(os.path.join(folder, "manifest"))
    for split in job.present():
        rows = []
        for sample in job.per_split[split]:
            checked_bytes(job.image_root, sample)  # vouch for every file the manifest names
            rows.append({"path": sample.file_path,
                         "image": {"bytes": None, "path": os.path.join(job.image_root, sample.file_path)},
                         **job.record(sample)})
        write_table(os.path.join(folder, "manifest", f"{split}.parquet"), features(job), rows)


def features(job: Job) -> list[Feature]:
    return [("path", "string"), image_feature(job), *record_features(job)]


def snippets(job: Job) -> list[tuple[str, str]]:
    first = job.present()[0]
    return [("datasets", ('from datasets import load_dataset\n\n'
                          f'ds = load_dataset("OUT")  # images opened from the cache, in mode {PIL_MODES[job.mode]}\n'
                          f'pixels = ds["{first}"].with_format("numpy")[0]["image"]  # {SHAPES[job.mode]} uint8')),
            ("pandas", ('import os\nimport pandas as pd\nfrom PIL import Image\n\n'
                        f'train = pd.read_parquet("OUT/manifest/{first}.parquet")\n'
                        f'image = Image.open(os.path.join("{job.image_root}", train.path.iloc[0]))'))]


FORMAT = Format(
    name="manifest", help="manifest/SPLIT.parquet of paths into the cache (no copies)", write=write,
    layout="`manifest/SPLIT.parquet`: one row per image, `path` relative to the image root (the images stay in "
           "the cache; this folder holds no copies), `image` the absolute path as a Hugging Face Image (no bytes), "
           "`split`, labels, returns and provenance.",
    data_files="manifest/{split}.parquet", features=features, snippets=snippets)
