# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
export DEFAKE_HOME ?= $(CURDIR)/outputs

.PHONY: demo demo-robustness check test timing ui bench install install-dev clean lint

# uv (from PyPI) installs the packages: a fresh venv with the dev extra takes about 30 s here,
# against about 90 s with pip. Compiled at install, as pip does: where PYTHONDONTWRITEBYTECODE
# is set (as on this machine), every process would otherwise compile dagster's modules again, about 2 s.
$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q uv

PIP_INSTALL := $(BIN)/python -m uv pip install -q --compile-bytecode --python $(BIN)/python

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[dev]'
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

$(DAGSTER_HOME)/dagster.yaml: instance/dagster.yaml
	mkdir -p $(DAGSTER_HOME)
	cp instance/dagster.yaml $@

demo: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/mllmdf materialize --model canny --prompt simple

# The demo with four perturbations of its images (demo/robustness/datasets/demo.toml), into the
# same outputs/: the leaderboard gains the robustness table and chart.
demo-robustness: install $(DAGSTER_HOME)/dagster.yaml
	DEFAKE_PROJECT=demo/robustness $(BIN)/mllmdf materialize --model canny --prompt simple

LINTED := defake_pipeline tests benchmarks decorators deploy
# Tests spread over worker processes (pytest-xdist), a module to a worker: each live module's
# scenarios share one deployment and run in order. The live modules go first, in the order
# collected (tests/conftest.py), since they are the longest; their workers mostly wait on daemons.
PARALLEL := -n 4 --dist loadscope --no-loadscope-reorder

# The tests start about a hundred processes that import the project. Where PYTHONDONTWRITEBYTECODE
# is set, each would compile its modules anew (about 0.6 s of CPU); unset here, the first writes
# the bytecode for the rest.
PYTEST := env -u PYTHONDONTWRITEBYTECODE $(BIN)/python -m pytest
# The untimed tests' temporary folders are on a tmpfs where there is one: Dagster's SQLite
# storage commits every run event with an fsync, about 1 ms each on this disk against 0.08 ms in
# memory, and a run writes hundreds. The timing tests keep the disk they were tuned on.
IN_MEMORY := $(if $(wildcard /dev/shm/.),--basetemp=/dev/shm/mllmdf-tests-$(shell id -u))

lint: install-dev
	$(BIN)/ruff check $(LINTED)
	$(BIN)/ruff format --check $(LINTED)
	$(BIN)/mypy

# The tests that assert on request timing run apart from the other tests, so that their load
# cannot skew them, but beside lint: mypy keeps one core busy, and these mostly wait on the test
# server (about 10 s of CPU in 34 s). Both together take about 37 s here, against 28 s and 34 s
# one after the other.
timing: install-dev $(DAGSTER_HOME)/dagster.yaml
	$(PYTEST) -m "timing"

LINT_AND_TIMING := $(MAKE) --no-print-directory -j2 --output-sync=target lint timing

# The inner loop: lint and every test but the live and browser ones.
check: install-dev $(DAGSTER_HOME)/dagster.yaml
	$(LINT_AND_TIMING)
	$(PYTEST) $(IN_MEMORY) -n 3 -m "not live and not browser and not timing"

# Everything: the live scenarios on dagster dev and the UI in Chromium too.
test: install-dev $(DAGSTER_HOME)/dagster.yaml
	$(LINT_AND_TIMING)
	$(PYTEST) $(IN_MEMORY) $(PARALLEL) -m "not timing"

PORT ?= 3000
ui: install $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/mllmdf ui --port $(PORT)

clean:
	rm -rf outputs .dagster_home

bench: install
	$(BIN)/python benchmarks/engine_bench.py
	$(BIN)/python benchmarks/rescan_bench.py
	$(BIN)/python benchmarks/report_bench.py
	$(BIN)/python benchmarks/time_to_result_bench.py
	$(BIN)/python benchmarks/daemon_bench.py
