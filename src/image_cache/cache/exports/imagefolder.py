"""imagefolder: `SPLIT/CLASS/KEY.png`, the layout torchvision's ImageFolder and Hugging Face's imagefolder
both read labels from, and `samples.jsonl` with every sample's metadata.

No metadata file sits inside a split folder: the Hugging Face loader stops reading labels from the
class folders when it finds one, and `label` would load as a plain integer instead of a ClassLabel.
"""

from __future__ import annotations

import os

from image_cache.cache.exports.base import SHAPES, Feature, Format, Job, image_feature
from image_cache.cache.exports.files import copy_image, dumps
from image_cache.chart.modes import PIL_MODES

SAMPLES = "samples.jsonl"


def write(folder: str, job: Job) -> None:
    names = job.options.label.names
    lines = []
    for split in job.present():
        for sample in job.per_split[split]:
            file_name = f"{split}/{names[sample.classes[0]]}/{sample.key}.png"
            os.makedirs(os.path.join(folder, os.path.dirname(file_name)), exist_ok=True)
            copy_image(job.image_root, sample, os.path.join(folder, file_name))
            lines.append(dumps({"file_name": file_name, **job.record(sample)}) + "\n")
    with open(os.path.join(folder, SAMPLES), "w", encoding="utf-8") as handle:
        handle.writelines(lines)


def features(job: Job) -> list[Feature]:
    return [image_feature(job), ("label", job.options.label.names)]


def snippets(job: Job) -> list[tuple[str, str]]:
    first, pil = job.present()[0], PIL_MODES[job.mode]
    # torchvision's default loader converts to RGB; other modes name their own.
    loader = "" if job.mode == "rgb" else f', loader=lambda path: Image.open(path).convert("{pil}")'
    return [
        ("datasets", ('from datasets import load_dataset\n\n'
                      f'ds = load_dataset("OUT")  # the card decodes images in mode {pil}\n'
                      f'image, label = ds["{first}"][0]["image"], ds["{first}"][0]["label"]\n'
                      f'pixels = ds["{first}"].with_format("numpy")[0]["image"]  # {SHAPES[job.mode]} uint8')),
        ("torchvision", ('from PIL import Image\n' if loader else '')
                        + 'from torchvision.datasets import ImageFolder\n\n'
                        + f'train = ImageFolder("OUT/{first}"{loader})  # classes == {list(job.options.label.names)}'),
        ("pandas", 'import pandas as pd\n\n'
                   f'meta = pd.read_json("OUT/{SAMPLES}", lines=True)  # file_name, split, returns, labels'),
    ]


FORMAT = Format(
    name="imagefolder", help="SPLIT/CLASS/KEY.png for torchvision and Hugging Face, samples.jsonl", write=write,
    layout=f"`SPLIT/CLASS/KEY.png`: one folder per split, one folder per class inside it (named by the class, "
           f"nothing else between), copies of the cached images. `{SAMPLES}`: one JSON object per image with "
           "`file_name` (relative to this folder), its split, labels, returns and provenance.",
    data_files="{split}/**", features=features, snippets=snippets)
