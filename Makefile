# The two set-up commands of the README. Each creates (or refreshes) its own virtual
# environment in .venv and installs everything it needs, pinned by constraints.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test bench bench-peers lint clean

PLUGINS := plugins/lightning plugins/transformers plugins/jax

# The C kernel is built at install time: a change to it needs a reinstall too. The framework
# plugins are packages of their own, installed beside gfprobe so that the suite tests them.
$(STAMP): pyproject.toml setup.py constraints.txt gfprobe/adapters/_gradstats.c $(PLUGINS:%=%/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -qq --upgrade pip
	$(BIN)/python -m pip install -qq -c constraints.txt -e '.[test]' $(PLUGINS:%=-e %)
	touch $(STAMP)

## The main job: the quick SC-SDC study on MNIST-1D (gfprobe-runs/quick), then its report.
demo: $(STAMP)
	$(BIN)/gfprobe demo --out gfprobe-runs/quick

## The whole test suite (slow end-to-end tests included), then lint and types.
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/python -m pytest --durations=25

## Overhead benchmark (not part of the suite: timings belong in benchmarks, not tests).
bench: $(STAMP)
	$(BIN)/python benchmarks/overhead.py

## gfprobe against the real peers (Lightning, wandb, TensorBoard, Cockpit): their packages are an
## extra of the benchmark, not of gfprobe, so they live in a venv of their own, .venv-peers.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed
$(PEERS_STAMP): pyproject.toml setup.py constraints.txt gfprobe/adapters/_gradstats.c benchmarks/requirements-peers.txt
	$(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install -qq --upgrade pip
	$(PEERS_VENV)/bin/python -m pip install -qq -c constraints.txt -e . -r benchmarks/requirements-peers.txt
	touch $(PEERS_STAMP)

bench-peers: $(PEERS_STAMP)
	$(PEERS_VENV)/bin/python benchmarks/peers.py $(PEERS_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

clean:
	rm -rf $(VENV) $(PEERS_VENV) gfprobe-runs .pytest_cache .mypy_cache .ruff_cache
