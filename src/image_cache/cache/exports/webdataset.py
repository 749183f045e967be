"""webdataset: `SPLIT-NNNNNN.tar` shards of `KEY.png`, `KEY.cls`, `KEY.json`.

Each split is shuffled (seeded, so the same arguments give the same bytes) before it is cut into
equal shards, at least `--min-shards` of them, so that every shard mixes symbols and times and a
loader with several workers has a shard for each.
"""

from __future__ import annotations

import math
import os
import tarfile
import zlib

import numpy as np

from image_cache.cache.exports.base import Feature, Format, Job, image_feature, record_features
from image_cache.cache.exports.files import checked_bytes, dumps, tar_member


def shard_count(n: int, shard_size: int, min_shards: int) -> int:
    """Enough shards for `shard_size`, at least `min_shards`, never an empty one."""
    return min(n, max(min_shards, math.ceil(n / shard_size)))


def write(folder: str, job: Job) -> None:
    o = job.options
    for split in job.present():
        samples = job.per_split[split]
        # The split's name in the seed: splits of equal size are not shuffled alike.
        rng = np.random.default_rng([o.seed, zlib.crc32(split.encode())])
        order = rng.permutation(len(samples))
        for shard, part in enumerate(np.array_split(order, shard_count(len(samples), o.shard_size, o.min_shards))):
            with tarfile.open(os.path.join(folder, f"{split}-{shard:06d}.tar"), "w",
                              format=tarfile.USTAR_FORMAT) as tar:
                for k in part:
                    sample = samples[int(k)]
                    tar_member(tar, f"{sample.key}.cls", str(sample.classes[0]).encode("ascii"))
                    tar_member(tar, f"{sample.key}.json", dumps(job.record(sample)).encode("utf-8"))
                    tar_member(tar, f"{sample.key}.png", checked_bytes(job.image_root, sample))


# webdataset's decoder of `png` members in each mode.
DECODE = {"rgb": "pilrgb", "gray": "pill", "palette": "pil"}


def features(job: Job) -> list[Feature]:
    """The members as the Hugging Face loader yields them: `cls` a ClassLabel, `json` the metadata."""
    return [("__key__", "string"), ("__url__", "string"), ("cls", job.options.label.names),
            ("json", record_features(job)), image_feature(job, "png")]


def snippets(job: Job) -> list[tuple[str, str]]:
    first = job.present()[0]
    return [
        ("webdataset", 'import glob\nimport webdataset as wds\n\n'
                       f'shards = sorted(glob.glob("OUT/{first}-*.tar"))\n'
                       'train = wds.WebDataset(shards, shardshuffle=len(shards)).shuffle(1000)'
                       f'.decode("{DECODE[job.mode]}").to_tuple("png", "cls", "json")\n'
                       '# torch: DataLoader(train, batch_size=None, num_workers=len(shards)) works as is'),
        ("datasets", 'from datasets import load_dataset\n\n'
                     'ds = load_dataset("OUT")  # columns __key__, __url__, cls (ClassLabel), json, png\n'
                     f'image, label = ds["{first}"][0]["png"], ds["{first}"][0]["cls"]'),
    ]


FORMAT = Format(
    name="webdataset", help="SPLIT-NNNNNN.tar shards, shuffled (--seed), at least --min-shards per split",
    write=write,
    layout="`SPLIT-NNNNNN.tar` shards: members `KEY.cls` (`label`), `KEY.json` (metadata), `KEY.png`, keys "
           "without dots. Each split is shuffled with the seed before it is cut into shards of equal size "
           "(sizes differ by at most one), at least `--min-shards` per split; fixed mtime, owner and mode.",
    data_files="{split}-*.tar", features=features, snippets=snippets, config_features=False)
