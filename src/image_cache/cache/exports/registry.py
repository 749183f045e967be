"""The export formats by name: adding one is one module (a `FORMAT`) and one line here."""

from __future__ import annotations

from image_cache.cache.exports import imagefolder, manifest, npy, parquet, webdataset
from image_cache.cache.exports.base import Format

FORMATS: dict[str, Format] = {f.name: f for f in (
    imagefolder.FORMAT,
    parquet.FORMAT,
    webdataset.FORMAT,
    npy.FORMAT,
    manifest.FORMAT,
)}
