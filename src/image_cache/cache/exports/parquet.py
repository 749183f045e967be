"""parquet: self-contained files per split, `data/SPLIT-00000-of-00001.parquet`, whose `image` column is the
Hugging Face `Image` struct (bytes, path) next to the metadata; the schema carries the Hugging Face
features, so `load_dataset` types `image` as Image and the labels as ClassLabels."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.parquet as pq

from image_cache.cache.exports.base import SHAPES, Feature, Format, Job, image_feature, record_features
from image_cache.cache.exports.files import checked_bytes
from image_cache.chart.modes import PIL_MODES

ARROW = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64()}
ROW_GROUP = 256  # rows per group: small groups let readers stream images without loading a whole split


def hf_feature(dtype: str | tuple[str, ...] | list) -> dict:
    if isinstance(dtype, tuple):
        return {"_type": "ClassLabel", "names": list(dtype)}
    if isinstance(dtype, str) and dtype.startswith("image:"):
        return {"_type": "Image", "mode": dtype[len("image:"):]}
    return {"_type": "Value", "dtype": dtype}


def _arrow(dtype: str | tuple[str, ...] | list) -> pa.DataType:
    if isinstance(dtype, tuple):
        return pa.int64()
    if isinstance(dtype, list):  # struct columns: no parquet export has them
        raise TypeError(f"no Arrow type for the struct {dtype!r}")
    if dtype.startswith("image:"):
        return pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return ARROW[dtype]


def schema(columns: list[Feature]) -> pa.Schema:
    fields = [pa.field(name, _arrow(dtype)) for name, dtype in columns]
    info = {"info": {"features": {name: hf_feature(dtype) for name, dtype in columns}}}
    return pa.schema(fields, metadata={"huggingface": json.dumps(info, sort_keys=True)})


def write_table(path: str, columns: list[Feature], rows: list[dict]) -> None:
    table = pa.Table.from_pylist(rows, schema=schema(columns))
    pq.write_table(table, path, compression="zstd", compression_level=3, version="2.6", use_dictionary=True,
                   write_statistics=True, row_group_size=ROW_GROUP)


def write(folder: str, job: Job) -> None:
    os.makedirs(os.path.join(folder, "data"))
    for split in job.present():
        rows = [{"image": {"bytes": checked_bytes(job.image_root, sample), "path": f"{sample.key}.png"},
                 **job.record(sample)} for sample in job.per_split[split]]
        write_table(os.path.join(folder, "data", f"{split}-00000-of-00001.parquet"), features(job), rows)


def features(job: Job) -> list[Feature]:
    return [image_feature(job), *record_features(job)]


def snippets(job: Job) -> list[tuple[str, str]]:
    first = job.present()[0]
    return [
        ("datasets", 'from datasets import load_dataset\n\n'
                     f'ds = load_dataset("OUT")  # splits: {", ".join(job.present())}\n'
                     f'image, label = ds["{first}"][0]["image"], ds["{first}"][0]["label"]  # PIL image '
                     f'in mode {PIL_MODES[job.mode]}\n'
                     f'pixels = ds["{first}"].with_format("numpy")[0]["image"]  # {SHAPES[job.mode]} uint8'),
        ("pandas", 'import io\nimport pandas as pd\nfrom PIL import Image\n\n'
                   f'frame = pd.read_parquet("OUT/data/{first}-00000-of-00001.parquet")\n'
                   'image = Image.open(io.BytesIO(frame.image[0]["bytes"]))'),
    ]


FORMAT = Format(
    name="parquet", help="self-contained parquet per split, images as the Hugging Face Image struct",
    write=write,
    layout="`data/SPLIT-00000-of-00001.parquet` per split: `image` is a struct of the PNG `bytes` and a `path` "
           "(`KEY.png`), followed by the metadata columns; the schema's `huggingface` metadata types `image` "
           "as Image and every label as a ClassLabel.",
    data_files="data/{split}-*.parquet", features=features, snippets=snippets)
