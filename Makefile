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

.PHONY: run test test-slow test-sync test-fleet bundle bench bench-1m bench-abuse bench-sync eval lint models setup postgres clean

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

# The central's store and its tests need PostgreSQL (Debian's postgresql-15); installed where missing.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { \
		echo "installing postgresql-15 (the central's database; its tests start a throwaway server)"; \
		$(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q \
			--no-install-recommends postgresql-15; }

$(VENV)/.fleet: $(VENV)/.synced
	$(UV) sync --frozen --inexact --extra test --extra fleet
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

test: lint models postgres
	$(VENV)/bin/pytest -m "not slow" -q

test-slow: setup models $(VENV)/.peer
	$(VENV)/bin/pytest -m "slow and not fleet" -q

# A release bundle for this machine's architecture (ansible/scripts/build-bundle says how to make the others).
BUNDLE ?= dist/bundle
PLATFORM := $(shell $(PYTHON) -c 'import platform, sys; print(f"{platform.machine()}-cp{sys.version_info[0]}{sys.version_info[1]}")')
$(BUNDLE)/$(PLATFORM).json: pyproject.toml uv.lock ansible/scripts/build-bundle \
		$(shell find edge systemd -type f -not -path '*/__pycache__/*') | $(UV)
	UV=$(UV) PYTHON=$(PYTHON) ansible/scripts/build-bundle $(BUNDLE)

bundle: $(BUNDLE)/$(PLATFORM).json

# The ansible roles: ansible-lint's production profile, then the playbook against temporary roots.
test-fleet: setup models $(VENV)/.fleet bundle
	EDGE_FACE_BUNDLE=$(abspath $(BUNDLE)) $(VENV)/bin/pytest -m fleet -q

# The fleet with real processes: a central (PostgreSQL and SQLite), device daemons, killed processes.
test-sync: setup models postgres
	$(VENV)/bin/pytest -m slow -q tests/sync

# Results land in bench/results/*.json; 1M-face stores: `make bench-1m` (a graph build each, CPU-heavy).
bench: setup models $(VENV)/.peer
	OMP_NUM_THREADS=1 $(VENV)/bin/python -m bench.pipeline --data $(FACES) --threads 1
	$(VENV)/bin/python -m bench.http --data $(EDGE_FACE_DATA)
	$(VENV)/bin/python -m bench.store_scale --sizes 100000 --dims 128,512 --efs auto
	$(VENV)/bin/python -m bench.index_churn --seeds 0,1
	$(VENV)/bin/python -m bench.erasure --sizes 10000,100000
	$(VENV)/bin/python -m bench.abuse

# 2,000 idle sockets and 200 slowloris bodies against a kiosk's searches, then 10,000 fuzzed requests.
bench-abuse: setup models
	$(VENV)/bin/python -m bench.abuse

# Join time at 10k and 100k faces, changes per second, bytes per face, two centrals on one PostgreSQL.
bench-sync: setup models postgres
	$(VENV)/bin/python -m bench.sync

bench-1m: setup
	$(VENV)/bin/python -m bench.store_scale --sizes 1000000 --dims 128,512 --efs auto,64,96,192

eval: setup models $(VENV)/.peer
	$(VENV)/bin/edge-face eval --data $(FACES) --peer

# ruff, the layer contracts (pyproject's [tool.importlinter]) and the type checker. The tests are checked
# folder by folder: each has its own conftest.py, which mypy would take for one module twice.
lint: setup
	$(VENV)/bin/ruff check edge models tests bench
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --explicit-package-bases tests/conftest.py tests/test_*.py
	$(VENV)/bin/mypy --explicit-package-bases tests/store
	$(VENV)/bin/mypy --explicit-package-bases tests/server
	$(VENV)/bin/mypy --explicit-package-bases tests/sync
	$(VENV)/bin/mypy --explicit-package-bases tests/fleet

clean:
	rm -rf $(VENV) .tools models/.venv
