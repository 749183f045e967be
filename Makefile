PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO   := demo-data

.PHONY: venv test demo bench clean

venv: $(STAMP)

# A fresh virtualenv with exactly the pinned requirements; rebuilt when a requirements file changes.
$(STAMP): requirements.txt requirements-dev.txt requirements-dask.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt -r requirements-dev.txt -r requirements-dask.txt
	touch $@

test: venv
	$(PY) -m pytest -q -n 2

# Sample market -> render two presets -> verify -> show where the images are.
demo: venv
	$(PY) -m ingest sample --db $(DEMO)/market.sqlite --symbols BTCUSDT,ETHUSDT --days 30
	$(PY) -m ingest status --db $(DEMO)/market.sqlite

bench: venv
	$(PY) -m bench

clean:
	rm -rf $(VENV) $(DEMO) bench/work .pytest_cache .hypothesis
