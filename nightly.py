"""`python nightly.py`: the checkout's launcher of the nightly recipe (update, render, verify).

It runs this checkout's own code (src/image_cache), never an installed copy: `src` goes first on sys.path.
Installed elsewhere (`pip install .`), the same command is `image-cache nightly`.
"""

import sys
from pathlib import Path

SRC = str(Path(__file__).resolve().parent / "src")
if sys.path[:1] != [SRC]:
    sys.path.insert(0, SRC)

if __name__ == "__main__":
    from image_cache.core import signals
    signals.exit_on_signals()  # until the command's own handling takes over
    from image_cache.cli.nightly import main
    sys.exit(main())
