"""`python -m ingest <command>`: the checkout's launcher of the command line that writes market.sqlite.

It runs this checkout's own code (src/image_cache), never an installed copy: `src` goes first on sys.path.
This folder holds only this launcher; the code is `image_cache.ingest`. Installed elsewhere
(`pip install .`), the same command line is `image-cache ingest <command>`.
"""

import os
import sys

try:  # Ctrl-C before the command line's own signal handling is set up: one line, nothing is held yet
    SRC = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))), "src")
    if sys.path[:1] != [SRC]:
        sys.path.insert(0, SRC)
    if __name__ == "__main__":
        from image_cache.core import signals
        signals.exit_on_signals()  # from here on every signal ends the run in one line
except KeyboardInterrupt:
    sys.stderr.write("Error: interrupted\n")
    sys.exit(130)

if __name__ == "__main__":
    from image_cache.cli.ingest import main
    sys.exit(main())
