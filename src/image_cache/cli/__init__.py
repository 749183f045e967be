"""The command lines: parse flags, call one library function, print its result, map errors to exit codes.

`main.py` is the `image-cache` console script; `cache.py`, `ingest.py` and `nightly.py` are its commands
(and the checkout's `python image_cache.py`, `python -m ingest`, `python nightly.py`). Only this package
imports argparse, tqdm or the command-line side of the settings.
"""
