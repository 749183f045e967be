"""One installable package (issue 19): the layers import downwards only, the pins are the requirements', and
`pip install` of the checkout gives one import name and one console script that draws the same bytes as
the checkout, from a folder holding its own `config.py`, `cache/` and `core/`."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from conftest import CONFIG, REPO, index_rows, run_cli, tree_digest

SRC = REPO / "src" / "image_cache"
# One install (conftest's `installed`) for this module and test_dask_cluster's (Makefile: --dist loadgroup).
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("installed")]

# The architecture, bottom up: a module may import its own part and the parts of lower rank, never a part
# of its own rank or above.
RANKS = {"core": 0, "errors": 0.5, "chart": 1, "settings": 2, "ingest": 3, "cache": 4, "cli": 5}
# The package root (`image_cache/__init__.py`) is the public API: it may import every part but the command lines
# (lazily, to keep `import image_cache` cheap); a part may import `image_cache.__version__`.
ROOT_RANK = 4.5


def _part(module: str) -> str | None:
    """The part of `image_cache.PART…`, '' for the package root, None for a module not ours."""
    names = module.split(".")
    if names[0] != "image_cache":
        return None
    return names[1] if len(names) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) for every import in the file, at any depth; `from image_cache import x` names
    image_cache.x (a part), whatever x is."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: a relative import"
            if node.module == "image_cache":
                found += [(node.lineno, f"image_cache.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def test_every_import_points_down_the_layers():
    modules = sorted(SRC.rglob("*.py"))
    assert len(modules) > 60
    wrong = []
    for path in modules:
        relative = path.relative_to(SRC)
        own = relative.parts[0].removesuffix(".py") if len(relative.parts) > 1 or relative.stem != "__init__" else ""
        for line, module in _imports(path):
            if module.split(".")[0] in ("cache", "chart", "core", "ingest", "config", "console", "nightly", "bench"):
                wrong.append(f"{relative}:{line}: imports the top-level {module} (use image_cache.…)")
                continue
            target = _part(module)
            if target is None or target == "" or module == "image_cache.__version__" or target == own:
                continue
            if RANKS[target] >= (ROOT_RANK if own == "" else RANKS[own]):
                wrong.append(f"{relative}:{line}: {own or 'image_cache'} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_every_part_is_ranked():
    parts = {p.name.removesuffix(".py") for p in SRC.iterdir() if p.name != "__init__.py" and p.name != "__pycache__"}
    assert parts == set(RANKS)


def _runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """(line, module) of the imports a module runs when it is imported: its top level, not the functions'
    bodies nor `if TYPE_CHECKING:` blocks."""
    found = []
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or ""))
        elif isinstance(node, ast.If) and not (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [n for h in node.handlers for n in h.body]
        elif isinstance(node, (ast.With, ast.ClassDef)):
            todo += node.body
    return found


def test_no_library_module_imports_the_command_line():
    """Outside cli/, nothing imports tqdm or the command lines, and argparse never when a module is imported
    (the ingest sources' flag definitions name it for type checking only; core/flags.py imports it when a
    command line refuses a value)."""
    wrong = []
    for path in sorted(SRC.rglob("*.py")):
        relative = path.relative_to(SRC)
        if relative.parts[0] == "cli":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for line, module in _imports(path):
            if module.split(".")[0] == "tqdm" or module.startswith("image_cache.cli"):
                wrong.append(f"{relative}:{line}: imports {module}")
        for line, module in _runtime_imports(tree):
            if module.split(".")[0] == "argparse":
                wrong.append(f"{relative}:{line}: imports argparse when imported")
    assert not wrong, "\n".join(wrong)


def test_the_api_needs_no_command_line():
    """A training script uses the whole API without argparse, tqdm or the command lines being imported."""
    code = ("import sys, image_cache; image_cache.Settings, image_cache.ChartDataset, image_cache.ImageCacheError;"
            "import image_cache.cache.runner, image_cache.cache.verify, image_cache.cache.export,"
            " image_cache.cache.status, image_cache.cache.preview, image_cache.errors;"
            "from image_cache.ingest.sources import sources; sources();"
            "print(sorted(m for m in ('argparse', 'tqdm', 'image_cache.cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_the_package_is_cheap():
    code = ("import sys, image_cache; print(sorted(m for m in ('numpy', 'sqlite3', 'image_cache.cache', "
            "'image_cache.chart') if m in sys.modules), image_cache.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "[]"


def test_the_settings_need_no_command_line():
    """A training script builds Settings without argparse, tqdm or the command lines."""
    code = ("import sys; from image_cache.settings import Settings, load, make_spec; make_spec(load());"
            "print(sorted(m for m in ('argparse', 'tqdm', 'image_cache.cli') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/",
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _pins(name: str, after: str | None = None) -> list[str]:
    lines = (REPO / name).read_text().splitlines()
    if after:
        lines = lines[lines.index(after) + 1:]
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_the_distribution_pins_the_requirements():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["name"] == "image-cache" and project["requires-python"] == ">=3.11"
    assert project["dependencies"] == _pins("requirements.txt")
    extras = project["optional-dependencies"]
    assert extras["dask"] == _pins("requirements-dask.txt") + ["sortedcontainers==2.4.0"]
    assert extras["datasets"] == _pins("requirements-dev.txt",
                                       "# The real dataset clients, so the export tests load what they check "
                                       "(no torch: too large).")
    ccxt = _pins("requirements-dev.txt", "# idna==3.18 exactly, which the dataset clients below take too.")
    assert extras["ccxt"] == sorted(ccxt[:ccxt.index("zlib-ng==1.0.0") + 1] + ["idna==3.18"], key=str.lower)
    assert project["scripts"] == {"image-cache": "image_cache.cli.main:main"}
    version = re.search(r'^__version__ = "(.+)"$', (SRC / "__init__.py").read_text(), re.M).group(1)
    assert version == "0.9.0"
    assert f"## {version}" in (REPO / "CHANGELOG.md").read_text()
    assert "Copyright (c) 2026 the image_cache authors" in (REPO / "LICENSE").read_text()


def _script(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run([str(venv / "bin" / "image-cache"), *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=300)


def test_the_distribution_adds_one_import_name_and_one_script(installed: Path):
    record = next(installed.glob("lib/python*/site-packages/image_cache-0.9.0.dist-info/RECORD"))
    files = [line.split(",")[0] for line in record.read_text().splitlines() if line]
    top = {name.split("/")[0] for name in files if not name.startswith("../")} - {record.parent.name}
    assert top == {"image_cache"}, top
    assert [name for name in files if name.startswith("../")] == ["../../../bin/image-cache"]
    assert (record.parent / "top_level.txt").read_text().split() == ["image_cache"]
    built = [name for name in files if name.endswith(".so")]
    assert sorted(Path(name).name.split(".")[0] for name in built) == ["_files", "_kernel"]
    assert {"image_cache/chart/_kernel.c", "image_cache/cache/_files.c"} <= set(files)


def test_the_console_script_from_a_folder_of_its_own(installed: Path, user_folder: Path):
    version = _script(installed, user_folder, "--version")
    assert (version.returncode, version.stdout) == (0, "image-cache 0.9.0\n"), version.stderr
    helps = [[], ["render"], ["verify"], ["repair"], ["status"], ["export"], ["preview"], ["nightly"], ["ingest"]]
    from image_cache.cli.ingest import build_parser
    from image_cache.cli.reference import subcommands
    commands = list(subcommands(build_parser()))
    assert {"api", "binance-vision", "download", "update", "csv", "sample", "resample", "gaps",
            "status"} <= set(commands)
    helps += [["ingest", name] for name in commands]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # The script itself for one command; every command's help in one process of the installed Python (a
    # process each cost ~10 s of CPU and tested nothing more).
    script = _script(installed, user_folder, "render", "--help")
    assert script.returncode == 0 and script.stdout.startswith("usage: image-cache render"), script.stderr
    each = ("import contextlib, io, json, sys\nfrom image_cache.cli.main import main\n"
            "for args in json.loads(sys.argv[1]):\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try:\n            code = main([*args, '--help'])\n"
            "        except SystemExit as exit:\n            code = exit.code\n"
            "    print(json.dumps([args, code, out.getvalue()]))\n")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", each, json.dumps(helps)], cwd=user_folder,
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    answers = [json.loads(line) for line in out.stdout.splitlines()]
    assert [args for args, _, _ in answers] == helps
    for args, code, text in answers:
        assert code == 0 and text.startswith(f"usage: image-cache {' '.join(args)}".rstrip()), (args, text)
    code = ("import image_cache, config; print(image_cache.__file__); print(config.WHOSE); "
            "from image_cache.cache import runner; from image_cache import chart; print(chart.__file__)")
    out = subprocess.run([str(installed / "bin" / "python"), "-c", code], cwd=user_folder, capture_output=True,
                         text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    package, whose, chart = out.stdout.splitlines()
    assert Path(package).is_relative_to(installed) and Path(chart).is_relative_to(installed)
    assert whose == "the user"


def test_the_console_script_draws_the_checkouts_bytes(installed: Path, user_folder: Path, tmp_path_factory):
    sample = ("sample", "--market-db", "market.sqlite", "--symbols", "BTCUSDT,ETHUSDT", "--days", "10", "--seed", "7")
    (user_folder / "image_cache.toml").write_text(CONFIG)
    assert _script(installed, user_folder, "ingest", *sample).returncode == 0
    drawn = _script(installed, user_folder, "render", "--config", "image_cache.toml")
    assert drawn.returncode == 0, drawn.stderr
    checkout = tmp_path_factory.mktemp("checkout-run")
    (checkout / "image_cache.toml").write_text(CONFIG)
    assert run_cli(checkout, *sample, module="ingest").returncode == 0
    assert run_cli(checkout, "render", "--config", "image_cache.toml").returncode == 0
    ours, theirs = tree_digest(user_folder / "image-cache"), tree_digest(checkout / "image-cache")
    assert len(ours) > 10 and ours == theirs
    assert index_rows(user_folder / "image_cache.sqlite") == index_rows(checkout / "image_cache.sqlite")
    verified = _script(installed, user_folder, "verify", "--config", "image_cache.toml", "--deep")
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_the_architecture_names_every_module_and_only_modules_that_exist():
    """docs/architecture.md is where a newcomer starts: each module of the package is named there (by its
    file name), and each `name.py` it names is one of ours, so that it cannot drift from the code."""
    text = (REPO / "docs" / "architecture.md").read_text()
    ours = {path.name for path in SRC.rglob("*.py")} | {path.name for path in SRC.rglob("*.c")}
    beside = {path.name for folder in ("", "ingest", "tests", "bench") for path in (REPO / folder).glob("*.py")}
    unnamed = sorted(str(path.relative_to(SRC)) for path in SRC.rglob("*.py")
                     if path.name != "__init__.py" and f"{path.name}`" not in text)
    assert not unnamed, f"modules docs/architecture.md does not name: {unnamed}"
    named = set(re.findall(r"`(?:[\w/]+/)?(\w+\.(?:py|c))`", text))
    assert not named - ours - beside, f"docs/architecture.md names files that do not exist: {named - ours - beside}"


def test_ingest_commands_that_parse_no_file_start_without_pandas():
    """pandas is a fifth of `ingest`'s start-up; only the functions that parse a file import it."""
    code = ("import sys; from image_cache.cli.ingest import build_parser; build_parser(); "
            "import image_cache.ingest.status, image_cache.ingest.sample, image_cache.ingest.rest; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pandas'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO / "src")})
    assert (out.returncode, out.stdout) == (0, "[]\n"), out.stderr


def test_render_is_a_leaf_that_only_the_command_lines_and_the_api_import():
    """cache/runner.py was a hub eight modules took helpers from; what they share lives where it belongs
    (market.py: which series; index.py: presets and the run lock; reconcile.py: reconciling a series)."""
    importers = sorted(str(path.relative_to(SRC)) for path in SRC.rglob("*.py")
                       if any(module == "image_cache.cache.runner" for _, module in _imports(path)))
    assert all(path.startswith("cli/") or path == "__init__.py" for path in importers), importers
