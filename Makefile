# The two commands of the README: `make demo` and `make test`. Everything else is a step of those.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo-workspace

.PHONY: setup demo test unit integration lint services slurm-stop clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,lstchain,rucio,dirac]'
	touch $@

demo: setup
	bash scripts/demo.sh $(DEMO_DIR)

services:
	bash scripts/postgres/ensure.sh
	bash scripts/browser/ensure.sh
	bash scripts/faketime/ensure.sh
	bash scripts/slurm/start.sh
	bash scripts/rucio/start.sh
	bash scripts/dirac/start.sh

# Stop the local SLURM cluster (started by `make services`); its jobs and accounting are kept.
slurm-stop:
	bash scripts/slurm/stop.sh

lint: setup
	$(BIN)/ruff check osa_grid tests catalog bench scripts
	$(BIN)/ruff format --check osa_grid tests catalog bench scripts
	$(BIN)/mypy

unit: setup
	$(BIN)/pytest -q -m "not integration"

integration: setup services
	$(BIN)/pytest -q -m integration

test: lint unit integration

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .mypy_cache .ruff_cache

# Benchmarks (issue 9): orchestration overhead against GNU parallel, xargs and Snakemake, then planner
# scale. Several minutes; `make bench BENCH_ARGS=--quick` for a smoke run. Figures: docs/benchmarks.md.
.PHONY: bench
BENCH_ARGS ?=
bench: setup
	$(BIN)/python bench/overhead.py $(BENCH_ARGS)
	$(BIN)/python bench/planner.py $(BENCH_ARGS)
