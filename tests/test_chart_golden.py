"""Golden pixel hashes, file hashes and spec hashes of every preset, and byte-identical PNGs across calls and processes.

A golden mismatch means the drawing changed: that requires bumping the engine's draw_version (its Engine row) in
chart/styles.py (every image it drew goes stale), then regenerating the goldens with
    PYTHONPATH=src:tests .venv/bin/python tests/test_chart_golden.py   (from the repository root)
and pasting its output over GOLDEN_PIXELS, GOLDEN_FILES and GOLDEN_SPECS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from chart_windows import BUILDERS, open_times
from image_cache import chart
from image_cache.chart.styles import MIKE_COLOURS

REPO = Path(__file__).resolve().parents[1]

# name -> (style, size, window_len, jkx_height, window builder)
CASES = {
    "mike-1280-w150-normal": ("mike", 1280, 150, 64, "normal"),
    "mike-1280-w150-flat": ("mike", 1280, 150, 64, "flat"),
    "mike-1280-w150-zero_volume": ("mike", 1280, 150, 64, "zero_volume"),
    "mike-1280-w150-tiny": ("mike", 1280, 150, 64, "tiny"),
    "mike-1280-w150-huge": ("mike", 1280, 150, 64, "huge"),
    "mike-1280-w150-huge_candle": ("mike", 1280, 150, 64, "huge_candle"),
    "mike-224-w60-normal": ("mike", 224, 60, 64, "normal"),
    "jkx-w5-normal": ("jkx", 0, 5, 64, "normal"),
    "jkx-w20-normal": ("jkx", 0, 20, 64, "normal"),
    "jkx-w60-normal": ("jkx", 0, 60, 64, "normal"),
    "jkx-w60-huge_candle": ("jkx", 0, 60, 64, "huge_candle"),
    "jkx-w30-h48-normal": ("jkx", 0, 30, 48, "normal"),
    "mplfinance:mike-256-w40-normal": ("mplfinance:mike", 256, 40, 64, "normal"),
    "mplfinance:yahoo-256-w40-normal": ("mplfinance:yahoo", 256, 40, 64, "normal"),
}

GOLDEN_PIXELS = {
    "mike-1280-w150-normal": "30e8b892bac78d07ae48440db8e7fbf778435aa6fac203cac44ab75f6df66112",
    "mike-1280-w150-flat": "4da0ee293769877e71e4f02f4d3678ef8f59cf4d24afa2877d571d6610f2497d",
    "mike-1280-w150-zero_volume": "e69a9426b6481efd0afc479edc507527ed4e2b025bc97c13bdf53075c354ade6",
    "mike-1280-w150-tiny": "30e8b892bac78d07ae48440db8e7fbf778435aa6fac203cac44ab75f6df66112",
    "mike-1280-w150-huge": "30e8b892bac78d07ae48440db8e7fbf778435aa6fac203cac44ab75f6df66112",
    "mike-1280-w150-huge_candle": "e7aff866ecfd5d24748e9464c65fe9e15730deb598f11f3bf024979e4d41b6bc",
    "mike-224-w60-normal": "da463db0749f9fdb12111a7eee8e792bd01c762b75cef4b20f45db6876cc85d2",
    "jkx-w5-normal": "24f3f019880d268244773838b2c1e76e34193505a5ee3dfe8d97730ea0d3ab5c",
    "jkx-w20-normal": "ca4b4eb7bbf43dbea933aa7f754db405f7a098a1e768e0d0c38e7540a9efec04",
    "jkx-w60-normal": "138fd7442d95d2bee0837268d1572b66ad9b371e71356d4f422ecce4c586ff1b",
    "jkx-w60-huge_candle": "52dc7c5a6226d700475ec61e08a59f907accf00a95ae4988d2c334df0abc10e6",
    "jkx-w30-h48-normal": "17d39d90f38f5f65e30cb351a11a73e48321330ff24d9c4b3f063969fcf64945",
    "mplfinance:mike-256-w40-normal": "e15d6b4ce43d834df5647bf741ed37a7eb43d7500d8a77568ba4168c36177d8b",
    "mplfinance:yahoo-256-w40-normal": "b550ce068844c252090e1e03ebfe5ee14c633a7433808e30f8daa68aa3e225c2",
}

# SHA-256 of the PNG files of the numpy engines: an encoder change (filter, packing, deflate, chunk
# layout) must not change a file unnoticed, or cached images would differ from a fresh render. Our
# deflate (chart/_kernel.c deflate_runs) depends on nothing but the data, on every platform.
GOLDEN_FILES = {
    "mike-1280-w150-normal": "cd009c20245d5cbe8158b804e7696a2ecc775f15051d4bf2158457bab060f0a2",
    "mike-1280-w150-flat": "3a2d83ca7375ba9c4d5f3519180260cb4f6bfa1a27fba6d29bf038dedb2d8eaf",
    "mike-1280-w150-zero_volume": "5b75c8d8fe23fe1d4dd11fb6f833608d97a7daca073694672165aaf350be766a",
    "mike-1280-w150-tiny": "cd009c20245d5cbe8158b804e7696a2ecc775f15051d4bf2158457bab060f0a2",
    "mike-1280-w150-huge": "cd009c20245d5cbe8158b804e7696a2ecc775f15051d4bf2158457bab060f0a2",
    "mike-1280-w150-huge_candle": "5b827f55351b302b0282ad374d4b5d5b0927e6eadcd3b43fb649f022f97e9560",
    "mike-224-w60-normal": "02684534cf053e168c69dee364afb46ba0a7dd3adbb139fb80efb09859fa6f02",
    "jkx-w5-normal": "0258ce1e7682e14e7fb7c37fc19c091b6c871cebe889c90ba933d6075fc46eff",
    "jkx-w20-normal": "587bf6d30effed56471fd31208718add99405e318e1818414890b14d4e717040",
    "jkx-w60-normal": "0010b73e2fd78a27282bed8d0db10f4e12d036d3c48bb40b979d897ebdf3f6f5",
    "jkx-w60-huge_candle": "ca518915cc55c209c6270be9aac0a04d7981b28ccabad4591a61b2b0e80eeaa0",
    "jkx-w30-h48-normal": "ea55cf2d9bbfeb91caeea64921f0a56c3c14516a25fa3a615b069a880f1df905",
}

# name -> (style, size, window_len, jkx_height)
SPEC_CASES = {
    "mike-1280-w150": ("mike", 1280, 150, 64),
    "mike-224-w60": ("mike", 224, 60, 64),
    "jkx-w20": ("jkx", 0, 20, 64),
    "jkx-w30-h48": ("jkx", 0, 30, 48),
    "mplfinance:mike-256-w40": ("mplfinance:mike", 256, 40, 64),
}

GOLDEN_SPECS = {
    "mike-1280-w150": "6865afa518f5686d2ed453a3827c44b1da5a4a9245b0ba327be91e0288f6eb2a",
    "mike-224-w60": "11b17d7417a5729b372627af4815ec8740c4a16d8dd1e12e3f54d143bc56132e",
    "jkx-w20": "e5233e0e10045aee5e3b835f8421d1c9be1b93d49094e053c0e001a0a83c89f3",
    "jkx-w30-h48": "b882353617eac5abcead713a629489666e6e9777bd5c944228f976dcb29f6316",
    "mplfinance:mike-256-w40": "9ec89de0409c64bb548fd89f521941efb43b9a3b007ce178a8e527b1f5a6f8e6",
}


def _spec(style: str, size: int, window_len: int, jkx_height: int) -> chart.Spec:
    return chart.make_spec(style, size, window_len, jkx_height=jkx_height)


def draw_case(name: str) -> chart.Drawn:
    style, size, window_len, jkx_height, builder = CASES[name]
    spec = _spec(style, size, window_len, jkx_height)
    return chart.render(spec, open_times(spec.n_candles), BUILDERS[builder](spec.n_candles))


@pytest.mark.parametrize("name", sorted(CASES))
def test_pixel_hash_is_golden(name):
    drawn = draw_case(name)
    assert drawn.pixel_hash == GOLDEN_PIXELS[name]
    # The hash recorded at drawing time is the one verify recomputes from the file.
    assert chart.pixel_hash(drawn.png) == drawn.pixel_hash


@pytest.mark.parametrize("name", sorted(GOLDEN_FILES))
def test_file_bytes_are_golden(name):
    assert hashlib.sha256(draw_case(name).png).hexdigest() == GOLDEN_FILES[name]


def test_golden_cases_are_distinct_images():
    """A golden pasted into the wrong case would still pass above; windows that look different differ."""
    assert set(GOLDEN_PIXELS) == set(CASES)
    distinct = {name: h for name, h in GOLDEN_PIXELS.items() if not name.endswith(("-tiny", "-huge"))}
    assert len(set(distinct.values())) == len(distinct)


@pytest.mark.parametrize("scale", ["tiny", "huge"])
def test_extreme_price_scales_draw_like_the_normal_window(scale):
    """Prices near 1e-8 or 1e6 lose no precision: min-max scaling gives the normal window's pixels."""
    assert draw_case(f"mike-1280-w150-{scale}").pixel_hash == draw_case("mike-1280-w150-normal").pixel_hash


@pytest.mark.parametrize("name", sorted(SPEC_CASES))
def test_spec_hash_is_golden(name):
    assert _spec(*SPEC_CASES[name]).spec_hash == GOLDEN_SPECS[name]


@pytest.mark.parametrize("changed", [
    dict(size=1024), dict(window_len=100), dict(style="jkx"), dict(style="mplfinance:mike"),
])
def test_spec_hash_changes_with_what_changes_pixels(changed):
    base = dict(style="mike", size=1280, window_len=150)
    assert chart.make_spec(**{**base, **changed}).spec_hash != chart.make_spec(**base).spec_hash


def test_spec_hash_changes_with_colours_and_jkx_height():
    spec = chart.make_spec("mike", 1280, 150)
    recoloured = tuple((role, "#ff0000" if role == "volume" else colour) for role, colour in MIKE_COLOURS)
    assert dataclasses.replace(spec, colours=recoloured).spec_hash != spec.spec_hash
    assert (chart.make_spec("jkx", 0, 30, jkx_height=48).spec_hash
            != chart.make_spec("jkx", 0, 30, jkx_height=50).spec_hash)
    assert (chart.make_spec("mplfinance:mike", 256, 40).spec_hash
            != chart.make_spec("mplfinance:yahoo", 256, 40).spec_hash)


def test_spec_hash_ignores_style_version():
    for style, size in (("mike", 1280), ("jkx", 0), ("mplfinance:mike", 256)):
        one, two = chart.make_spec(style, size, 20, version=1), chart.make_spec(style, size, 20, version=7)
        assert one != two
        assert one.spec_hash == two.spec_hash


@pytest.mark.parametrize("name", ["mike-1280-w150-normal", "jkx-w20-normal", "mplfinance:mike-256-w40-normal"])
def test_same_window_twice_gives_identical_bytes(name):
    assert draw_case(name).png == draw_case(name).png


def test_fresh_process_gives_identical_bytes(tmp_path):
    names = ["mike-1280-w150-normal", "mike-224-w60-normal", "jkx-w60-normal", "mplfinance:yahoo-256-w40-normal"]
    script = ("import sys; from pathlib import Path; from test_chart_golden import draw_case\n"
              "for i, name in enumerate(sys.argv[2:]):\n"
              "    Path(sys.argv[1], str(i)).write_bytes(draw_case(name).png)\n")
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path), *names], cwd=REPO, capture_output=True,
                            text=True, timeout=120,
                            env={**os.environ,
                                 "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}{os.pathsep}{REPO / 'tests'}"})
    assert result.returncode == 0, result.stderr
    for i, name in enumerate(names):
        assert (tmp_path / str(i)).read_bytes() == draw_case(name).png, name


if __name__ == "__main__":
    print("GOLDEN_PIXELS = {")
    for case in CASES:
        print(f'    "{case}": "{draw_case(case).pixel_hash}",')
    print("}")
    print("GOLDEN_FILES = {")
    for case in GOLDEN_FILES:
        print(f'    "{case}": "{hashlib.sha256(draw_case(case).png).hexdigest()}",')
    print("}")
    print("GOLDEN_SPECS = {")
    for case, args in SPEC_CASES.items():
        print(f'    "{case}": "{_spec(*args).spec_hash}",')
    print("}")
