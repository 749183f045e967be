"""image_cache: crypto candles in market.sqlite -> a deterministic, verifiable dataset of chart images.

Sub-packages, each importing only those below it:

- `image_cache.cli`: the command lines (`image-cache`, and the checkout's launchers);
- `image_cache.cache`: the image cache (render, verify, repair, status, export, the training dataset),
  `image_cache.ingest`: everything that writes market.sqlite;
- `image_cache.settings`: the renderer's settings, a plain dataclass and its validation;
- `image_cache.chart`: pure drawing, arrays in, PNG bytes out;
- `image_cache.core`: the contracts every part shares (errors, the interval grid, SQLite helpers).

Importing this package stays cheap: nothing below is imported until asked for.
"""

__version__ = "0.9.0"
