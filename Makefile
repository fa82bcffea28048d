# edge-face: `make run` and `make test` do all the set-up on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3.11
UV_VERSION := 0.13.9
export UV_PYTHON_DOWNLOADS := never
export UV_PYTHON := $(PYTHON)

XDG_CACHE_HOME ?= $(HOME)/.cache
MODEL_DIR ?= $(XDG_CACHE_HOME)/edge-face/models
EDGE_FACE_DATA ?= $(abspath ../shared/data)
export EDGE_FACE_DATA
export EDGE_FACE_PIPELINE__MODEL_DIR := $(MODEL_DIR)

UV := .tools/bin/uv
VENV := .venv
FACES := $(EDGE_FACE_DATA)/faces-dev
# Models are rebuilt when their recipe's content changes (not its mtime: a fresh clone is all new).
RECIPE := $(shell cat $(sort $(wildcard models/*.py models/calibration/*.json)) models/uv.lock \
	2>/dev/null | sha256sum | cut -c1-16)
MODEL_STAMP := $(MODEL_DIR)/.recipe-$(RECIPE)

.PHONY: run test test-slow bench bench-1m eval lint models setup clean

$(UV):
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

# The project's environment; extras are added without removing the others (--inexact).
$(VENV)/.synced: pyproject.toml uv.lock | $(UV)
	$(UV) sync --frozen --inexact --extra test
	touch $@

$(VENV)/.peer: $(VENV)/.synced
	$(UV) sync --frozen --inexact --extra test --extra peer
	touch $@

setup: $(VENV)/.synced

# The isolated build environment (TensorFlow) only exists while models are built.
$(MODEL_STAMP): | $(UV)
	$(UV) sync --frozen --project models
	models/.venv/bin/python models/build.py --out $(MODEL_DIR) \
		$(if $(wildcard $(FACES)/pairs.tsv),--faces $(FACES),)
	rm -f $(MODEL_DIR)/.recipe-*
	touch $@

models: $(MODEL_STAMP)

run: setup models
	$(VENV)/bin/edge-face serve

test: setup models
	$(VENV)/bin/ruff check edge models tests bench
	$(VENV)/bin/pytest -m "not slow" -q

test-slow: setup models $(VENV)/.peer
	$(VENV)/bin/pytest -m slow -q

# Results land in bench/results/*.json; 1M-face stores: `make bench-1m` (a graph build each, CPU-heavy).
bench: setup models $(VENV)/.peer
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m bench.pipeline --data $(FACES) --threads 1
	$(VENV)/bin/python -m bench.http --data $(EDGE_FACE_DATA)
	$(VENV)/bin/python -m bench.store_scale --sizes 100000 --dims 128,512 --efs auto

bench-1m: setup
	$(VENV)/bin/python -m bench.store_scale --sizes 1000000 --dims 128,512 --efs auto,64,96,192

eval: setup models $(VENV)/.peer
	$(VENV)/bin/edge-face eval --data $(FACES) --peer

lint: setup
	$(VENV)/bin/ruff check edge models tests bench

clean:
	rm -rf $(VENV) .tools models/.venv
