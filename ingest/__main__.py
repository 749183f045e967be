"""`python -m ingest <command>`: the checkout's launcher of the command line that writes market.sqlite.

It runs this checkout's own code (src/image_cache), never an installed copy: `src` goes first on sys.path.
This folder holds only this launcher; the code is `image_cache.ingest`. Installed elsewhere
(`pip install .`), the same command line is `image-cache ingest <command>`.
"""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")
if sys.path[:1] != [SRC]:
    sys.path.insert(0, SRC)

if __name__ == "__main__":
    from image_cache.core import signals
    signals.exit_on_signals()  # until the command's own handling takes over
    from image_cache.cli.ingest import main
    sys.exit(main())
