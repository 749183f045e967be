"""One render/verify/repair at a time per index: the second exits 75 and names the holder."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, render_cli, run_cli

pytestmark = pytest.mark.slow  # its subject is the process boundary (make test-fast skips it)

HOLDER = """
import sys, time
from image_cache.core.db import exclusive_lock
with exclusive_lock(sys.argv[1], "image_cache render (test holder)"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.mark.parametrize("command", ["render", "verify", "repair"])
def test_second_run_exits_75(rendered: Path, command: str):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(rendered / "image_cache.sqlite.lock")],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_cli(rendered, command, "--config", "image_cache.toml")
        assert result.returncode == 75
        assert "locked by another run" in result.stderr
        assert f"pid {holder.pid}: image_cache render (test holder)" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert run_cli(rendered, command, "--config", "image_cache.toml").returncode == 0


def test_lock_is_released_when_holder_dies(workdir: Path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(workdir / "image_cache.sqlite.lock")],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()
    holder.wait()
    time.sleep(0.1)
    assert render_cli(workdir, "--limit", "1").returncode == 0
