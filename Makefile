PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
COMPILED := src/image_cache/chart/_kernel.so src/image_cache/cache/_files.so
DEMO   := demo-data

.PHONY: venv test test-fast lint docs demo bench soak clean

venv: $(STAMP) $(COMPILED)

# A fresh virtualenv with exactly the pinned requirements; rebuilt when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt requirements-dask.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt -r requirements-dask.txt
	touch $@

# The compiled modules, built in place: the drawing engines' pixel loops (image_cache/chart/kernel.py) and the
# batched atomic file writes (image_cache/cache/layout.py), each built for the venv's Python from the .c file of
# its name; the source's SHA-256 is compiled in, so the module refuses a build that does not match its source
# (image_cache/core/compiled.py). `pip install .` builds the same two with the same flags (setup.py).
$(COMPILED): %.so: %.c $(STAMP)
	$(CC) -O3 -Wall -shared -fPIC -fno-strict-aliasing \
	  -I"$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" \
	  -DSOURCE_SHA256='"'"$$($(PY) -c 'import hashlib, sys; print(hashlib.sha256(open(sys.argv[1], "rb").read()).hexdigest())' $<)"'"' \
	  $< -o $@ \
	  || { echo "Error: could not build $@ from $<: it needs a C compiler (\$$CC, default cc) and the Python headers (Debian: python3-dev)" >&2; exit 1; }

# The tests' temporary folders go to RAM where there is room (/dev/shm mounted without noexec, over 4 GB free):
# nearly every test writes and syncs real files, and on an ext4 VM disk each new file costs ~0.4 ms of kernel
# CPU (half the CPU of a small render), while the file system is not what they test (the disk-full cases mount
# tmpfs folders of their own; the install test runs a venv from there, hence exec). TEST_TMPDIR=DIR picks
# another folder; TEST_TMPDIR= keeps the system's.
TEST_TMPDIR ?= $(shell awk '$$2 == "/dev/shm" && $$4 !~ /noexec/ {ok = 1} END {exit !ok}' /proc/mounts 2>/dev/null \
                 && df -Pk /dev/shm | awk 'NR == 2 && $$4 > 4194304 {print "/dev/shm"}')
TEST_ENV := $(if $(TEST_TMPDIR),TMPDIR=$(TEST_TMPDIR))

test: venv
	$(TEST_ENV) $(PY) -m pytest -q -n 2 --dist loadgroup

# Everything but the tests whose subject is the process boundary (marked slow): the loop while changing code.
test-fast: venv
	$(TEST_ENV) $(PY) -m pytest -q -n 2 -m "not slow"

# The gates alone (make test runs them too, tests/test_gates.py): ruff over the checkout, mypy over the package,
# import-linter's layers.
lint: venv
	$(PY) -m ruff check .
	$(PY) -m mypy
	cd src && ../$(VENV)/bin/lint-imports --config ../pyproject.toml

# docs/cli.md from the parsers themselves (tests/test_cli_reference.py fails when it is out of date).
docs: venv
	PYTHONPATH=src $(PY) -m image_cache.cli.reference > docs/cli.md

# Sample market -> render two presets -> verify -> show where the images are.
DEMO_FLAGS := --market-db $(DEMO)/market.sqlite --index-db $(DEMO)/image_cache.sqlite \
              --image-root $(DEMO)/image-cache --symbols BTCUSDT,ETHUSDT --intervals 1h,4h --start 2024-06-24
demo: venv
	$(PY) -m ingest sample --market-db $(DEMO)/market.sqlite --symbols BTCUSDT,ETHUSDT --days 30
	$(PY) image_cache.py render $(DEMO_FLAGS)
	$(PY) image_cache.py render $(DEMO_FLAGS) --style jkx --window 20
	$(PY) image_cache.py verify $(DEMO_FLAGS) --deep
	@echo
	@echo "Images are under $(DEMO)/image-cache/ (index: $(DEMO)/image_cache.sqlite), for example:"
	@find $(DEMO)/image-cache -name '*.png' | sort | sed -n '1p;$$p'
	@find $(DEMO)/image-cache -name '*jkx*.png' | sort | sed -n '1p'

bench: venv
	$(PY) -m bench

# 10,000 random sequences over render/verify/repair with the invariants checked after every step; then
# 10 minutes of fresh renders and repairs under CPU load, compared byte for byte (issue 23 item 16).
soak: venv
	$(PY) tests/state_walk.py --sequences 10000 --steps 20 --record
	$(PY) bench/determinism_soak.py --seconds 600 --record

clean:
	rm -rf $(VENV) $(COMPILED) $(DEMO) bench/work .pytest_cache .hypothesis .mypy_cache .ruff_cache build dist src/*.egg-info
