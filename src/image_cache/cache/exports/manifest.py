"""manifest: one parquet row per image pointing into the cache (`path` relative to the image root): no
copies, for users who read the images where they are."""

from __future__ import annotations

import os

from image_cache.cache.exports.base import Feature, Format, Job, record_features
from image_cache.cache.exports.files import checked_bytes
from image_cache.cache.exports.parquet import write_table


def write(folder: str, job: Job) -> None:
    rows = []
    for split in job.present():
        for sample in job.per_split[split]:
            checked_bytes(job.image_root, sample)  # vouch for every file the manifest names
            rows.append({"path": sample.file_path, **job.record(sample)})
    write_table(os.path.join(folder, "manifest.parquet"), [("path", "string"), *record_features(job)], rows)


def no_features(job: Job) -> list[Feature]:
    return []


def snippets(job: Job) -> list[tuple[str, str]]:
    return [("pandas", 'import os\nimport pandas as pd\nfrom PIL import Image\n\n'
                       'frame = pd.read_parquet("OUT/manifest.parquet")\n'
                       f'train = frame[frame.split == "{job.present()[0]}"]\n'
                       f'image = Image.open(os.path.join("{job.image_root}", train.path.iloc[0]))')]


FORMAT = Format(
    name="manifest", help="manifest.parquet of paths into the cache (no copies)", write=write,
    layout="`manifest.parquet`: one row per image, `path` relative to the image root (the images stay in the "
           "cache; this folder holds no copies), `split`, labels, returns and provenance.",
    data_files=None, features=no_features, snippets=snippets)
