"""docs/cli.md is generated from the parsers (issue 20): it says what every command accepts, or this fails."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="argparse lays help out differently by version; "
                    "docs/cli.md is generated with the Python the Makefile's venv uses (3.11)")
def test_the_command_line_reference_is_the_parsers_own_help():
    from image_cache.cli.reference import reference
    assert (REPO / "docs" / "cli.md").read_text() == reference(), \
        "docs/cli.md is out of date: run `make docs` (python -m image_cache.cli.reference > docs/cli.md)"


def test_every_command_has_a_section():
    from image_cache.cli.reference import reference
    text = reference()
    for command in ("render", "verify", "repair", "status", "export", "preview", "nightly", "ingest api",
                    "ingest csv", "ingest update", "ingest gaps", "ingest status", "ingest ccxt"):
        assert f"## `image-cache {command}`" in text, command
