# Everything installs into .venv; each step is idempotent (stamp files), so `make test` twice is cheap.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed

.PHONY: install assets demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch is pinned to the CPU build first: an unpinned torch resolves to a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Fetch and verify the built-in model and data set; a no-op (offline) once they are in the cache.
assets: $(STAMP)
	$(VENV)/bin/lora-ft fetch

demo: assets
	$(VENV)/bin/lora-ft train configs/default.yaml --out runs/demo --force

test: assets
	$(PY) -m pytest -q

# Speed, memory and scaling against the targets of issue #5: a table with PASS/MISS lines, and
# runs/bench/bench.json. A few minutes; scripts/bench.py --help for longer runs.
bench: assets
	$(PY) scripts/bench.py

lint: $(STAMP)
	$(VENV)/bin/ruff check lora_ft tests scripts examples
	$(VENV)/bin/ruff format --check lora_ft tests scripts examples

clean:
	rm -rf $(VENV) runs build dist *.egg-info
