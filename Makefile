# promptd task runner: the one place that says how to set up, run, test and measure.
# `make run` and `make test` build their own virtual environment on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first so pip never pulls a CUDA build we did not ask for.
# Users with a GPU install their own CUDA build into the venv; an existing torch is kept.
TORCH_SPEC ?= torch==2.13.0
CONFIG ?= config.yaml

.PHONY: run test lint format bench check-config doctor clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e ".[dev,distributed]"
	touch $@

run: $(VENV)/.installed
	$(BIN)/promptd run --config $(CONFIG)

test: $(VENV)/.installed
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff format --check daemon tests bench
	$(BIN)/ruff check daemon tests bench
	$(BIN)/mypy

format: $(VENV)/.installed
	$(BIN)/ruff format daemon tests bench
	$(BIN)/ruff check --fix daemon tests bench

bench: $(VENV)/.installed
	$(BIN)/python -m bench

check-config: $(VENV)/.installed
	$(BIN)/promptd check-config --config $(CONFIG)

doctor: $(VENV)/.installed
	$(BIN)/promptd doctor --config $(CONFIG)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
