"""`python image_cache.py <command>`: the checkout's launcher of the image cache's command line.

It runs this checkout's own code (src/image_cache), never an installed copy: `src` goes first on sys.path.
Installed elsewhere (`pip install .`), the same command line is `image-cache <command>`.
"""

import os
import sys

try:  # Ctrl-C before the command line's own signal handling is set up: one line, nothing is held yet
    SRC = os.path.join(os.path.dirname(os.path.realpath(__file__)), "src")
    if sys.path[:1] != [SRC]:
        sys.path.insert(0, SRC)
    if __name__ == "__main__":
        from image_cache.core import signals
        signals.exit_on_signals()  # from here on every signal ends the run in one line
except KeyboardInterrupt:
    sys.stderr.write("Error: interrupted\n")
    sys.exit(130)

if __name__ == "image_cache":
    # Imported, not run: the checkout's root came before src on sys.path (`python -c` or `python -m bench.…`
    # from the root). Be the package this launcher runs, so that `import image_cache` means one thing.
    import importlib

    del sys.modules[__name__]
    sys.modules[__name__] = importlib.import_module(__name__)
elif __name__ == "__main__":
    from image_cache.cli.cache import main
    sys.exit(main())
